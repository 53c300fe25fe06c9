"""``Preconditioner``: replace each gradient g by the natural gradient (F̂ + λI)⁻¹ g in place.

It sits in front of any optimizer::

    pre = fk.optim.Preconditioner(model, structure="kfac", likelihood="categorical")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward()
    pre.step()      # p.grad ← (F̂ + λI)⁻¹ ∇L
    opt.step()

F̂ is an exponential moving average of the batch Fisher (see ``curvature_state``), refreshed every
``update_every`` steps from the statistics of the user's own forward/backward (see ``capture``);
its inverse / eigenbasis is refreshed every ``inv_every`` steps. With ``structure="implicit"``
nothing is stored: (F_batch + λI) x = g is solved by conjugate gradients with Fisher-vector
products on the current batch (Hessian-free style).
"""

from __future__ import annotations

import warnings

import torch

from ..curvature.implicit import Implicit
from ..engine.functional import persample_grads
from ..engine.units import make_plan
from ..params import select_params
from ..errors import FisherkitError, NonFiniteError
from ..likelihoods import get_likelihood
from .capture import Recorder
from .curvature_state import DenseState, DiagState, EKronState, KronState, diag_from_batch, persample_matrix
from ..choices import KINDS, check_choice, check_every, check_fraction, check_positive, check_structure

DENSE_OPTIM_LIMIT = 5000
OPTIM_STRUCTURES = ("kfac", "ekfac", "diag", "dense", "implicit")
OPTIM_REFUSED = {
    "block": "a per-layer dense block is refreshed from one mini-batch of B ≪ P samples, so it is rank-deficient "
             "and its damped inverse is dominated by the damping; use 'kfac' or 'ekfac' (per-layer, full rank), "
             "or 'dense' for a small model",
    "lowrank": "a rank-k eigendecomposition of a moving-average Fisher costs a P×P eigh per refresh; use "
               "'implicit' (conjugate gradients on the batch Fisher) or 'kfac'",
}


class Preconditioner:
    """Natural-gradient preconditioning of ``p.grad`` for the trainable parameters of ``model``.

    Args:
        structure: ``"kfac" | "ekfac" | "diag" | "dense" | "implicit"``.
        kind: ``"mc"`` (labels sampled from the model, ``mc_samples`` per point), ``"exact"`` (all
            output directions) or ``"empirical"`` (the loss's own output gradients; biased).
        damping: Tikhonov λ > 0 (factored π-damping for Kronecker blocks when ``pi_damping``).
        update_every / inv_every: steps between curvature refreshes / inverse refreshes.
        ema: weight of the old estimate in the moving average, in [0, 1).
        loss_reduction: ``"mean"`` or ``"sum"``: how the loss reduces over the batch (only matters
            for ``kind="empirical"``, whose output gradients are rescaled by B for a mean).
        seed: seeds the generator of the Monte-Carlo labels (saved in ``state_dict``).
    """

    def __init__(self, model, structure="kfac", kind="mc", likelihood="categorical", damping=1e-3,
                 update_every=1, inv_every=None, ema=0.95, pi_damping=True, mc_samples=1,
                 loss_reduction="mean", cg_iters=20, cg_tol=1e-6, seed=0, params=None):
        if not isinstance(model, torch.nn.Module):
            raise FisherkitError(f"Preconditioner needs the torch.nn.Module being trained; got {type(model).__name__}")
        check_structure(structure, OPTIM_STRUCTURES, OPTIM_REFUSED)
        check_choice("kind", kind, KINDS)
        check_choice("loss_reduction", loss_reduction, ("mean", "sum"))
        check_positive("damping", damping)
        check_every("update_every", update_every)
        inv_every = update_every if inv_every is None else inv_every
        check_every("inv_every", inv_every)
        check_every("mc_samples", mc_samples)
        check_every("cg_iters", cg_iters)
        check_fraction("ema", ema)
        self.lik = get_likelihood(likelihood)
        self.model, self.structure, self.kind = model, structure, kind
        self.damping, self.update_every, self.inv_every, self.ema = float(damping), update_every, inv_every, ema
        self.pi_damping, self.mc_samples, self.loss_reduction = bool(pi_damping), mc_samples, loss_reduction
        self.cg_iters, self.cg_tol = cg_iters, cg_tol
        self.params = select_params(model, params)
        plan = make_plan(model, self.params, use_hooks=structure != "implicit")
        self.info = plan.info
        if structure == "dense" and self.info.size > DENSE_OPTIM_LIMIT:
            raise FisherkitError(f"structure='dense' keeps a {self.info.size}² matrix (limit {DENSE_OPTIM_LIMIT} "
                                 "parameters); use 'kfac', 'ekfac', 'diag' or 'implicit'")
        device = next(iter(self.params.values())).device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(seed))
        self.steps = 0  # preconditioning steps taken
        self.updates = 0  # curvature refreshes taken
        self.fallback_names: list[str] = []
        self._build(plan.hook_units, plan.func_names)
        self.last_batch = None
        self._operator = None

    # ---- construction --------------------------------------------------------------------
    def _build(self, units, func_names):
        self.units, self.func_names = list(units), list(func_names)
        s = self.structure
        self.states = []
        if s in ("kfac", "ekfac"):
            cls = KronState if s == "kfac" else EKronState
            self.states = [cls(u) for u in self.units]
            if self.func_names:
                self.states.append(DiagState(self.func_names))
                self.fallback_names = list(self.func_names)
        elif s == "diag":
            self.states = [DiagState(self.info.names)]
        elif s == "dense":
            self.states = [DenseState(self.info.names, self.info.shapes)]
        if hasattr(self, "recorder"):
            self.recorder.remove()
        self.recorder = Recorder(self.model, self.units, self.lik, self.kind, self.mc_samples, self.generator,
                                 self.loss_reduction, need_layers=s != "implicit", wanted=self._wanted)
        if self.fallback_names:
            warnings.warn(f"structure={s!r} has no Kronecker factorisation for {', '.join(self.fallback_names)}; "
                          "these parameters use a diagonal Fisher instead", stacklevel=3)

    def _wanted(self) -> bool:
        return self.structure == "implicit" or self.steps % self.update_every == 0

    def remove(self) -> None:
        """Remove the hooks from the model."""
        self.recorder.remove()

    # ---- gathering -----------------------------------------------------------------------
    def _func_grads(self, batch, names):
        if not names:
            return {}
        self.recorder.busy = True
        try:
            return persample_grads(self.model, names, batch.x, batch.V.to(batch.f.dtype))
        finally:
            self.recorder.busy = False

    def _ingest(self):
        rec = self.recorder
        bad = rec.misfired() if self.updates == 0 else []
        b = rec.finish()
        if bad:  # e.g. a layer reused twice, or bypassed: its parameters go to the torch.func path
            gone = [self.units[i] for i in bad]
            keep = [u for i, u in enumerate(self.units) if i not in bad]
            moved = {n for u in gone for n in u.names}
            self._build(keep, [n for n in self.info.names if n in moved or n in self.func_names])
            warnings.warn("layers " + ", ".join(repr(u.module_name) for u in gone) + " were not called exactly "
                          "once per forward; their parameters use a torch.func Fisher (diagonal for kfac/ekfac)",
                          stacklevel=3)
        self.last_batch = b
        if self.structure == "implicit":
            return b
        func = self._func_grads(b, self.func_names)
        for st in self.states:
            if isinstance(st, KronState):
                hit = [(a, g) for u, a, g in b.hook if u is st.unit]
                if hit:
                    st.update(hit[0][0], hit[0][1], b.n, self.ema)
            elif isinstance(st, DiagState):
                sums = diag_from_batch([h for h in b.hook if h[0].weight in st.names], func)
                st.update_sums(sums, b.n, self.ema)
            elif isinstance(st, DenseState):
                st.update_gram(persample_matrix(b.hook, func, st.names), b.n, self.ema)
        self.updates += 1
        return b

    # ---- the natural gradient ------------------------------------------------------------
    def grads(self) -> dict[str, torch.Tensor]:
        """The current gradients, name → tensor (zeros where a parameter got none)."""
        if all(p.grad is None for p in self.params.values()):
            raise FisherkitError("step() was called before any backward: no parameter has a gradient; "
                                 "call loss.backward() first")
        return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in self.params.items()}

    def compute(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Refresh the curvature if due and return (F̂ + λI)⁻¹ g (a dict name → tensor)."""
        for n, g in grads.items():
            if not torch.isfinite(g).all():
                raise NonFiniteError(f"the gradient of {n!r} is not finite (NaN or inf); check the loss and the "
                                     "learning rate, or pass skip_nonfinite=True to skip such steps")
        if self.structure == "implicit":
            return self._implicit(grads)
        updated = False
        if self.steps % self.update_every == 0:
            self._ingest()
            updated = True
        refresh = self.steps % self.inv_every == 0 or not all(st.ready for st in self.states)
        for st in self.states:
            if refresh:
                st.refresh()
            if isinstance(st, EKronState) and (updated or refresh):
                st.fit_scaling(self.ema if st.t["S"] is not None else 0.0)
        out = {}
        for st in self.states:
            out.update(st.precondition({k: grads[k] for k in st.names}, self.damping, self.pi_damping))
        self.steps += 1
        return {n: out[n].reshape(grads[n].shape) for n in grads}

    def _fvp_operator(self, b):
        """F_batch as an ``Implicit`` operator: v ↦ (1/B) Jᵀ [Σ_d V_d V_dᵀ] J v.

        One forward per step builds the graph; J v comes from the double-backward trick
        (J v = ∂/∂u ⟨Jᵀu, v⟩, the R-operator of Pearlmutter 1994) and Jᵀw from a backward, so each
        conjugate-gradient iteration costs two backward passes and no new forward.
        """
        from torch.func import functional_call

        names = self.info.names
        V = b.V.to(b.f.dtype)
        dims = tuple(range(2, V.dim()))
        params = {n: p.detach() for n, p in self.model.named_parameters()}
        buffers = {n: t.detach() for n, t in self.model.named_buffers()}
        train = {n: params[n].clone().requires_grad_(True) for n in names}
        fixed = {n: p for n, p in params.items() if n not in train}
        self.recorder.busy = True
        try:
            with torch.enable_grad():
                out = functional_call(self.model, ({**fixed, **train}, buffers), (b.x,))
                dummy = torch.zeros_like(out, requires_grad=True)
                jtu = torch.autograd.grad(out, list(train.values()), dummy, create_graph=True, allow_unused=True)
        finally:
            self.recorder.busy = False
        pairs = [(t, v) for t, v in zip(jtu, names) if t is not None]

        def product(v_flat):
            v = dict(zip(names, torch.split(v_flat, self.info.numels)))
            with torch.enable_grad():
                (u,) = torch.autograd.grad([t for t, _ in pairs], dummy,
                                           [v[k].reshape(t.shape) for t, k in pairs], retain_graph=True)
                w = (V * (V * u.unsqueeze(0)).sum(dim=dims, keepdim=True)).sum(0)
                g = torch.autograd.grad(out, list(train.values()), w, retain_graph=True, allow_unused=True)
            return torch.cat([(gi if gi is not None else torch.zeros_like(t)).reshape(-1)
                              for gi, t in zip(g, train.values())]) / b.n

        return Implicit(self.info, b.n, self.kind, self.lik.to_config(), product, V.dtype, V.device)

    def _implicit(self, grads):
        b = self._ingest()
        self._operator = self._fvp_operator(b)
        g = torch.cat([grads[k].reshape(-1) for k in self.info.names])
        x = self._operator.solve(g.detach(), self.damping, tol=self.cg_tol, max_iter=self.cg_iters)
        self.steps += 1
        return {k: t.reshape(s) for k, t, s in zip(self.info.names, torch.split(x, self.info.numels), self.info.shapes)}

    def quad(self, delta: dict[str, torch.Tensor]) -> torch.Tensor:
        """ΔᵀF̂Δ for a displacement (dict name → tensor), with the undamped curvature in use."""
        if self.structure == "implicit":
            if self._operator is None:
                raise FisherkitError("no Fisher has been formed yet; call step() first")
            d = torch.cat([delta[k].reshape(-1) for k in self.info.names])
            return d @ self._operator.mv(d)
        return sum(st.quad({k: delta[k] for k in st.names}) for st in self.states)

    @torch.no_grad()
    def step(self) -> None:
        """Replace every ``p.grad`` by the natural gradient (F̂ + λI)⁻¹ ∇L."""
        nat = self.compute(self.grads())
        for n, p in self.params.items():
            if p.grad is None:
                p.grad = nat[n].clone()
            else:
                p.grad.copy_(nat[n])

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume exactly: counters, damping, RNG state and the curvature tensors."""
        tensors = {}
        for i, st in enumerate(self.states):
            for k, v in st.t.items():
                if v is not None:
                    tensors[f"{i}.{st.kind}.{k}"] = v.detach().clone()
        return {"structure": self.structure, "kind": self.kind, "names": list(self.info.names),
                "steps": self.steps, "updates": self.updates, "damping": self.damping,
                "generator": self.generator.get_state(), "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        if state.get("structure") != self.structure or state.get("names") != list(self.info.names):
            raise FisherkitError(
                f"this state is for structure={state.get('structure')!r} over parameters "
                f"{state.get('names', [])[:4]}...; the preconditioner has structure={self.structure!r} over "
                f"{self.info.names[:4]}..."
            )
        self.steps, self.updates, self.damping = int(state["steps"]), int(state["updates"]), float(state["damping"])
        self.generator.set_state(state["generator"].clone())
        for i, st in enumerate(self.states):
            for k in st.t:
                key = f"{i}.{st.kind}.{k}"
                st.t[k] = state["tensors"][key].clone() if key in state["tensors"] else None
