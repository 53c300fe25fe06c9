"""EKFAC (George et al. 2018): the KFAC eigenbasis with a diagonal refitted to the data.

With Q_A, Q_G the eigenvectors of the KFAC factors, S = (1/N) Σₙ Σ_d (Q_Gᵀ Gₙ,d Q_A)² (elementwise,
Gₙ,d the per-sample gradient matrix [∇W | ∇b]) and F_layer ≈ (Q_G ⊗ Q_A) diag(S) (Q_G ⊗ Q_A)ᵀ.
S is the Frobenius-optimal diagonal in that basis, so EKFAC is never further from F than KFAC.
"""

from .base import BlockCurvature


class EKFAC(BlockCurvature):
    """Eigenvalue-corrected Kronecker-factored Fisher."""

    structure = "ekfac"
