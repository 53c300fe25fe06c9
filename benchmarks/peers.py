"""The peers (BackPACK, NNGeometry, curvlinops) computing the same quantities as fisherkit, in its convention.

fisherkit's Fisher is the *mean* over N samples. Conventions lined up here:

* BackPACK with ``CrossEntropyLoss(reduction="sum")``: DiagGGN*/SumGradSquared are batch sums → Σ / N.
  KFLR / KFAC give ``[G, A]`` per weight with A a batch *mean* and G a batch sum; we accumulate
  Σ_b B·A_b and Σ_b G_b, both / N.
* NNGeometry ``FIM`` / ``FIM_MonteCarlo`` are already means; its PMatKFAC folds the bias into A and
  splits the scale differently (A·√(C−1), G/√(C−1)).
* curvlinops with ``CrossEntropyLoss(reduction="mean")`` gives the GGN of the mean loss = our exact Fisher.

Kronecker factors are compared scale-free: A / tr(A) and G · tr(A) (the product G ⊗ A is what is
defined; its split between the factors is a convention). Monte-Carlo estimates cannot agree entry by
entry with ours (other random labels), so both are compared with fisherkit's *exact* result: a peer
"agrees" when its error to the exact quantity is no worse than 2× ours + 0.05.

Every callable deep-copies the model: BackPACK's ``extend`` adds hooks that would slow other runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from common import BATCH, batches, rel_err

TOL = 2e-4  # float32, sums of ~10^3 terms


def _flat(model, attr):
    return torch.cat([getattr(p, attr).reshape(-1) for p in model.parameters()])


# ---------------------------------------------------------------- agreement checks
def check_mc(kind_key, exact_key):
    def check(peer, ours):
        e_peer = _err_struct(peer, ours[exact_key], kind_key)
        e_ours = _err_struct(ours[kind_key.replace("exact", "mc")], ours[exact_key], kind_key)
        ok = e_peer <= 2 * e_ours + 0.05
        return dict(ok=ok, rel_err_peer_vs_exact=e_peer, rel_err_ours_vs_exact=e_ours,
                    note=f"MC: peer {e_peer:.2f} vs ours {e_ours:.2f} from exact")
    return check


def _norm_factors(A, G):
    t = torch.trace(A.double())
    return A.double() / t, G.double() * t


def _kfac_err(peer: dict, ours: dict) -> float:
    """Largest scale-free error over layers; peer: weight name → (A, G), A with or without the bias row."""
    worst = 0.0
    for w, (A, G) in peer.items():
        Ao, Go = ours[w]
        if A.shape[0] == Ao.shape[0] - 1:  # peer's A is the weight part only
            Ao = Ao[:-1, :-1]
        a, g = _norm_factors(A, G)
        ao, go = _norm_factors(Ao, Go)
        worst = max(worst, rel_err(a, ao), rel_err(g, go))
    return worst


def _err_struct(peer, exact, key):
    return _kfac_err(peer, exact) if key.startswith("kfac") else rel_err(peer, exact)


def check_kfac(tol=1e-3):
    def check(peer, ours):
        e = _kfac_err(peer, ours["kfac_exact"])
        return dict(ok=e < tol, rel_err=e, note=f"scale-free factor err {e:.1e}")
    return check


def check_key(key, tol=TOL):
    def check(peer, ours):
        mine = ours[key]
        if key == "lowrank":  # eigenvalues, largest first
            peer, mine = peer.double().sort(descending=True)[0], mine.double().sort(descending=True)[0]
        e = rel_err(peer, mine)
        return dict(ok=e < tol, rel_err=e, note=f"rel. err {e:.1e}")
    return check


# ---------------------------------------------------------------- BackPACK
def backpack_methods(model, X, y):
    from backpack import backpack, extend
    from backpack.extensions import KFAC, KFLR, DiagGGNExact, DiagGGNMC, SumGradSquared

    data = batches(X, y)
    n = X.shape[0]

    def run(ext, attr):
        m = extend(copy.deepcopy(model))
        lossf = extend(nn.CrossEntropyLoss(reduction="sum"))
        total = None
        for x, t in data:
            m.zero_grad()
            loss = lossf(m(x), t)
            with backpack(ext()):
                loss.backward()
            f = _flat(m, attr)
            total = f if total is None else total + f
        return total / n

    def run_kron(ext, attr):
        m = extend(copy.deepcopy(model))
        lossf = extend(nn.CrossEntropyLoss(reduction="sum"))
        sums = {}
        names = {id(p): k for k, p in m.named_parameters()}
        for x, t in data:
            m.zero_grad()
            loss = lossf(m(x), t)
            with backpack(ext()):
                loss.backward()
            for mod in m.modules():
                if isinstance(mod, (nn.Linear, nn.Conv2d)):
                    G, A = getattr(mod.weight, attr)
                    w = names[id(mod.weight)]
                    a0, g0 = sums.get(w, (0, 0))
                    sums[w] = (a0 + A * x.shape[0], g0 + G)
        return {w: (A / n, G / n) for w, (A, G) in sums.items()}

    return [
        ("BackPACK", "DiagGGNExact", "diag_exact", lambda: run(DiagGGNExact, "diag_ggn_exact"), check_key("diag_exact")),
        ("BackPACK", "DiagGGNMC", "diag_mc", lambda: run(DiagGGNMC, "diag_ggn_mc"), check_mc("diag_mc", "diag_exact")),
        ("BackPACK", "SumGradSquared", "diag_emp", lambda: run(SumGradSquared, "sum_grad_squared"), check_key("diag_emp")),
        ("BackPACK", "KFLR", "kfac_exact", lambda: run_kron(KFLR, "kflr"), check_kfac()),
        ("BackPACK", "KFAC", "kfac_mc", lambda: run_kron(KFAC, "kfac"), check_mc("kfac_exact", "kfac_exact")),
    ]


# ---------------------------------------------------------------- NNGeometry
def nngeometry_methods(model, X, y, dense_params):
    from nngeometry.layercollection import LayerCollection
    from nngeometry.metrics import FIM, FIM_MonteCarlo
    from nngeometry.object import PMatDense, PMatDiag, PMatKFAC

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=BATCH)

    def kfac_dict(m, F):
        mods = {mod: name for name, mod in m.named_modules()}
        lc = F.generator.layer_collection
        out = {}
        for lid, (a, g) in F.data.items():
            mod = lc.get_layerid_module_maps(m)[0][lid] if hasattr(lc, "get_layerid_module_maps") else None
            name = mods[mod] if mod is not None else lid
            out[f"{name}.weight"] = (a, g)
        return out

    def fim(rep, mc=False, lc=None):
        m = copy.deepcopy(model)
        if mc:
            return m, FIM_MonteCarlo(m, loader, rep, variant="classif_logits", trials=1, layer_collection=lc)
        return m, FIM(m, loader, rep, variant="classif_logits", layer_collection=lc)

    def diag(mc):
        return lambda: fim(PMatDiag, mc)[1].get_diag()

    def kfac(mc):
        def run():
            m, F = fim(PMatKFAC, mc)
            return kfac_dict(m, F)
        return run

    def dense():
        m = copy.deepcopy(model)
        lc = LayerCollection()
        mod_name = dense_params[0].rsplit(".", 1)[0]
        lc.add_layer_from_model(m, dict(m.named_modules())[mod_name])
        return FIM(m, loader, PMatDense, variant="classif_logits", layer_collection=lc).to_torch()

    return [
        ("NNGeom", "PMatDiag (FIM)", "diag_exact", diag(False), check_key("diag_exact")),
        ("NNGeom", "PMatDiag (FIM_MonteCarlo)", "diag_mc", diag(True), check_mc("diag_mc", "diag_exact")),
        ("NNGeom", "PMatKFAC (FIM)", "kfac_exact", kfac(False), check_kfac()),
        ("NNGeom", "PMatKFAC (FIM_MonteCarlo)", "kfac_mc", kfac(True), check_mc("kfac_exact", "kfac_exact")),
        ("NNGeom", "PMatDense (FIM)", "dense", dense, check_key("dense")),
    ]


# ---------------------------------------------------------------- curvlinops
def curvlinops_methods(model, X, y, v):
    from curvlinops import GGNLinearOperator, KFACLinearOperator

    data = batches(X, y)
    n = X.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]

    def kfac(fisher_type):
        def run():
            m = copy.deepcopy(model)
            ps = [p for p in m.parameters()]
            op = KFACLinearOperator(m, nn.CrossEntropyLoss(), ps, data, fisher_type=fisher_type,
                                    separate_weight_and_bias=False, check_deterministic=False, num_data=n)
            op.compute_kronecker_factors()
            names = {id(mod): name for name, mod in m.named_modules()}
            out = {}
            for mod_name in op._mapping:
                out[f"{mod_name}.weight"] = (op._input_covariances[mod_name], op._gradient_covariances[mod_name])
            return out
        return run

    def mv():
        op = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data, check_deterministic=False, num_data=n)
        return op @ v

    def lowrank():
        import scipy.sparse.linalg as sla

        op = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, data, check_deterministic=False, num_data=n)
        vals = sla.eigsh(op.to_scipy(), k=20, which="LA", return_eigenvectors=False)
        return torch.as_tensor(sorted(vals, reverse=True), dtype=torch.float64)

    return [
        ("curvlin", "KFACLinearOperator type-2", "kfac_exact", kfac("type-2"), check_kfac()),
        ("curvlin", "KFACLinearOperator mc", "kfac_mc", kfac("mc"), check_mc("kfac_exact", "kfac_exact")),
        ("curvlin", "GGNLinearOperator @ v", "mv", mv, check_key("mv", 1e-3)),
        ("curvlin", "GGN + scipy eigsh k=20", "lowrank", lowrank, check_key("lowrank", 1e-3)),
    ]


def peer_methods(name, model, X, y, dense_params, v=None, quick=False):
    """(library, label, key, callable, check) for every installed peer; check(peer_result, fisherkit_results)."""
    P = sum(p.numel() for p in model.parameters())
    v = torch.randn(P, generator=torch.Generator().manual_seed(3)) if v is None else v
    out = []
    for maker, args in ((backpack_methods, (model, X, y)), (nngeometry_methods, (model, X, y, dense_params)),
                        (curvlinops_methods, (model, X, y, v))):
        try:
            out += maker(*args)
        except ImportError:
            continue
    if name != "M1":
        out = [o for o in out if o[2] not in ("dense", "lowrank")]
    if quick:
        out = [o for o in out if o[2] != "lowrank"]
    return out
