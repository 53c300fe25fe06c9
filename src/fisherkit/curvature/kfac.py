"""KFAC: per Linear/Conv layer, F_layer ≈ G ⊗ A (Martens & Grosse 2015; Grosse & Martens 2016).

A = (1/N) Σₙ (1/T) Σ_t ã ãᵀ over layer inputs with a 1 appended for the bias (T shared positions,
e.g. conv patches or tokens); G = (1/N) Σₙ Σ_d Σ_t g gᵀ over output gradients of every backward
direction d. F_layer acts on the combined matrix M = [W | b] as M ↦ G M A. Solving goes through the
eigen-decompositions of A and G: (G ⊗ A + δI)⁻¹ = (Q_G ⊗ Q_A) diag(1/(λ_G λ_Aᵀ + δ)) (Q_G ⊗ Q_A)ᵀ,
so no P × P matrix is formed. Other layers are dense blocks (small) or diagonal (large).
"""

from .base import BlockCurvature


class KFAC(BlockCurvature):
    """Kronecker-factored Fisher."""

    structure = "kfac"

    def factors(self) -> dict[str, tuple]:
        """Layer weight name → (A, G) for every Kronecker block."""
        return {b.names[0]: (b.A, b.G) for b in self.blocks if b.kind == "kron"}
