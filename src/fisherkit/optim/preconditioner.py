"""``Preconditioner``: replace each gradient g by the natural gradient (F̂ + λI)⁻¹ g in place.

It sits in front of any optimizer::

    pre = fk.optim.Preconditioner(model, structure="kfac", likelihood="categorical")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward()
    pre.step()      # p.grad ← (F̂ + λI)⁻¹ ∇L
    opt.step()

It is a client of the one curvature stack: the engine's recorder (``engine.record``) turns the
user's own forward/backward into the same per-layer ``BatchStats`` that ``fk.fisher`` gathers, the
structure's own accumulator (``curvature/<structure>.py``) sums them, and F̂ is the moving average

    F̂ ← ema · F̂ + (1 − ema) · F_batch,     F_batch = (1/B) Σₙ Σ_d gₙ,d gₙ,dᵀ  (in its structure),

refreshed every ``update_every`` steps. Every ``inv_every`` steps the accumulator is finished into a
``Curvature`` (its eigendecompositions computed then), and ``Curvature.solve`` applies the damped
inverse (π-damping for Kronecker blocks as a solve option). EKFAC keeps the KFAC eigenbasis between
refreshes and a moving average of the scalings S = (Q_Gᵀ ∇ₙ Q_A)² in it, restarted from the KFAC
eigenvalues at each new basis. With ``structure="implicit"`` nothing is stored: (F_batch + λI) x = g
is solved by conjugate gradients with Fisher-vector products on the current batch (Hessian-free).

Distributed training sets ``parallel`` (``fisherkit.distributed.distribute_optimizer``): an object
whose ``reduce`` all-reduces the accumulator sums and whose ``ops`` split the eigendecompositions;
nothing of this class is patched.
"""

from __future__ import annotations

import warnings

import torch

from ..choices import KINDS, as_generator, check_choice, check_every, check_fraction, check_positive, check_structure
from ..curvature import STRUCTURES as STRUCTURE_CLASSES
from ..curvature.accumulator import LOCAL, Meta
from ..curvature.ekfac import EKFAC, EKFACAccumulator
from ..curvature.implicit import Implicit
from ..curvature.io import from_tensors, to_tensors
from ..curvature.blocks import EKronBlock
from ..engine.functional import persample_grads
from ..engine.adapters import make_adapter
from ..engine.record import Recorder
from ..engine.units import make_plan, settle
from ..errors import FisherkitError, NonFiniteError
from ..likelihoods import get_likelihood
from ..params import select_params
from .inverse import DampedInverse
from .transforms import first_nonfinite

DENSE_OPTIM_LIMIT = 5000
OPTIM_STRUCTURES = ("kfac", "ekfac", "diag", "dense", "implicit")
OPTIM_REFUSED = {
    "block": "a per-layer dense block is refreshed from one mini-batch of B ≪ P samples, so it is rank-deficient "
             "and its damped inverse is dominated by the damping; use 'kfac' or 'ekfac' (per-layer, full rank), "
             "or 'dense' for a small model",
    "lowrank": "a rank-k eigendecomposition of a moving-average Fisher costs a P×P eigh per refresh; use "
               "'implicit' (conjugate gradients on the batch Fisher) or 'kfac'",
}
STATE_VERSION = 2


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
        generator: the Monte-Carlo labels' randomness — an int seed (default 0) or a ``torch.Generator``
            on the model's device (used as handed over); its state is saved in ``state_dict``.
            ``seed=`` is the older name.
        cg_iters, cg_tol: ``structure="implicit"``: conjugate gradients stop after ``cg_iters`` iterations or
            once the residual ‖g − (F_batch + λI)x‖ ≤ ``cg_tol`` · ‖g‖ (relative; a finite number > 0).
        output, shift_labels, ignore_index: as for ``fk.fisher`` — models with dict / HF outputs and
            causal LMs; labels passed as ``model(..., labels=...)`` leave out positions labelled
            ``ignore_index``.
        kfac_approx: for layers applied at T positions (tokens, conv patches), as for ``fk.fisher``:
            ``"expand"`` (each position a sample) or ``"reduce"`` (positions summed first: A from the
            mean input over t, G from the sum of output gradients over t — T× fewer rows in the
            factor products; Eschenhagen et al. 2023). Both are exact for a layer seen at one position.
    """

    def __init__(self, model, structure="kfac", kind="mc", likelihood="categorical", damping=1e-3,
                 update_every=1, inv_every=None, ema=0.95, pi_damping=True, mc_samples=1,
                 loss_reduction="mean", cg_iters=20, cg_tol=1e-6, generator=None, params=None, seed=None,
                 output=None, shift_labels=False, ignore_index=-100, kfac_approx="expand"):
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
        check_positive("cg_tol", cg_tol)
        check_fraction("ema", ema)
        check_choice("kfac_approx", kfac_approx, ("expand", "reduce"))
        self.kfac_approx = kfac_approx
        self.lik = get_likelihood(likelihood)
        self.adapter = make_adapter(output, shift_labels, ignore_index)  # HF models: logits, causal shift, −100
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
        p0 = next(iter(self.params.values()))
        self.device, self.dtype = p0.device, p0.dtype
        self.generator, _ = as_generator(generator, seed, self.device, owner="Preconditioner")
        self.steps = 0  # preconditioning steps taken
        self.updates = 0  # curvature refreshes taken
        self.parallel = None  # set by fisherkit.distributed.distribute_optimizer
        self._start(plan)
        self.last_batch = None
        self._operator = None
        self._inverse = None  # DampedInverse of the curvature in use (rebuilt when it or the damping changes)

    # ---- construction --------------------------------------------------------------------
    def _start(self, plan):
        """(Re)start on a plan: a fresh moving average, no curvature yet, hooks on the plan's layers."""
        self.plan = plan
        self.fallback_names = list(plan.func_names) if self.structure in ("kfac", "ekfac") else []
        self.running = self._accumulator() if self.structure != "implicit" else None
        if self.running is not None:
            self.running.consume = False
        self.curvature = None  # the Curvature that preconditions (finished at the last inverse refresh)
        self.kfac = None  # EKFAC: the KFAC curvature whose eigenbasis is in use
        self._basis_new, self._last_stats = False, None
        if hasattr(self, "recorder"):
            self.recorder.remove()
        self.recorder = Recorder(self.model, plan.hook_units, self.lik, self.kind, self.mc_samples, self.generator,
                                 self.loss_reduction, need_layers=self.structure != "implicit", wanted=self._wanted,
                                 adapter=self.adapter)
        if self.fallback_names:
            warnings.warn(f"structure={self.structure!r} has no Kronecker factorisation for "
                          f"{', '.join(self.fallback_names)}; these parameters use a diagonal Fisher instead",
                          stacklevel=4)

    def _accumulator(self, cls=None):
        name = "kfac" if self.structure == "ekfac" else self.structure  # EKFAC: KFAC factors + scalings below
        cls = cls or STRUCTURE_CLASSES[name].accumulator
        meta = Meta(self.kind, self.lik.to_config(), self.dtype, self.device,
                    {"fallback": "diag", "warn": False, "kfac_approx": self.kfac_approx})
        return cls(self.plan, meta)

    def _wanted(self) -> bool:
        return self.structure == "implicit" or self.steps % self.update_every == 0

    def remove(self) -> None:
        """Remove the hooks from the model."""
        self.recorder.remove()

    @property
    def ops(self):
        return self.parallel.ops if self.parallel is not None else LOCAL

    def _reduce(self, sums, n, what):
        if self.parallel is None:
            return sums, n
        return self.parallel.reduce(sums, n, what)

    # ---- gathering -----------------------------------------------------------------------
    def _func_grads(self, batch, names):
        if not names:
            return {}
        self.recorder.busy = True
        try:
            return persample_grads(self.model, names, batch.x, batch.V.to(batch.f.dtype), adapter=self.adapter)
        finally:
            self.recorder.busy = False

    def _ingest(self):
        rec = self.recorder
        bad = rec.misfired() if self.updates == 0 else []
        if self.updates == 0 and rec.batch is not None and self.plan.hook_units:
            # the engine's own check (two probe forwards, no gradients, RNG and buffers kept): a layer that
            # sees the samples in another dimension than the first (sequence-first) cannot be hooked
            kept = {id(u) for u in settle(self.model, self.plan, rec.batch.x).hook_units}
            bad += [i for i, u in enumerate(self.plan.hook_units) if id(u) not in kept and i not in bad]
        b = rec.finish()
        if bad:  # e.g. a layer reused twice, or bypassed: its parameters go to the torch.func path
            gone = [self.plan.hook_units[i] for i in bad]
            warnings.warn("layers " + ", ".join(repr(u.module_name) for u in gone) + " were not called exactly "
                          "once per forward with the samples in their first dimension; their parameters use a "
                          "torch.func Fisher (diagonal for kfac/ekfac)", stacklevel=4)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._start(self.plan.without(gone))
            b.hook = [t for t in b.hook if all(t[0] is not u for u in gone)]
        self.last_batch = b
        if self.structure == "implicit":
            return b
        # an empty local batch (uneven data under DDP) contributes zero statistics with count 0
        stats = b.stats(self._func_grads(b, self.plan.func_names)) if b.n > 0 else None
        batch = self._accumulator()
        if stats is not None:
            batch.add(stats)
        batch.load_sums(*self._reduce(batch.sums(), batch.n, "NaturalGradient curvature statistics"))
        if batch.n == 0:  # the global batch is empty: nothing to average in
            if self.updates == 0:
                raise FisherkitError("step(): the batch has no samples and there is no curvature estimate yet; "
                                     "skip empty batches (e.g. DataLoader(drop_last=True))")
            return b
        self._empty_rank = stats is None
        self.running.ema(self.ema, batch.scale_(1.0 / batch.n))
        self._last_stats = stats
        self.updates += 1
        return b

    def _refresh(self):
        """Finish the moving average into a Curvature and eigendecompose it (split over ranks if distributed).

        KFAC with π-damping in one process needs no eigendecomposition: ``DampedInverse`` inverts the
        damped factors by Cholesky (4× cheaper than eigh at 256 × 256); whoever asks for the eigenbases
        later (``eig_factors``) gets them computed then, the same ``safe_eigh`` as here."""
        F = self.running.finish(self.ops)
        if not (self.structure == "kfac" and self.pi_damping and self.parallel is None):
            F = F.decompose(self.ops.eigh)
        if self.structure == "ekfac":
            self.kfac, self._basis_new = F, True
        else:
            self.curvature = F

    def _fit_scalings(self):
        """EKFAC: S ← ema·S + (1 − ema)·S_batch in the current basis (S restarts from λ_G λ_Aᵀ at a new basis)."""
        kron = [b for b in self.kfac.blocks if b.kind == "kron"]
        bases = {b.names[0]: (b.eig_factors()[0][1], b.eig_factors()[1][1]) for b in kron}
        old = {b.names[0]: b.S for b in self.curvature.blocks if b.kind == "ekron"} if self.curvature else {}
        s_batch = {}
        if (self._last_stats is not None or getattr(self, "_empty_rank", False)) and kron:
            acc = self._accumulator(EKFACAccumulator)
            acc.set_bases(bases)
            if self._last_stats is not None:  # an empty rank still takes part in the reduction
                acc.add(self._last_stats)
            acc.load_sums(*self._reduce(acc.sums(), acc.n, "NaturalGradient EKFAC scalings"))
            s_batch = acc.scalings()
            decay = self.ema if old else 0.0
        blocks = []
        for b in self.kfac.blocks:
            if b.kind != "kron":
                blocks.append(b)
                continue
            w = b.names[0]
            (la, qa), (lg, qg) = b.eig_factors()
            prior = lg[:, None] * la[None, :]
            if w not in s_batch:
                S = prior if (self._basis_new or w not in old) else old[w]
            elif self._basis_new or w not in old:
                S = decay * prior + (1 - decay) * s_batch[w]
            else:
                S = self.ema * old[w] + (1 - self.ema) * s_batch[w]
            blocks.append(EKronBlock(b.names, b.numels, b.out_features, b.has_bias, qa, qg, S, b.transposed))
        self.curvature = EKFAC(self.info, 1, self.kind, self.lik.to_config(), blocks)
        self._basis_new, self._last_stats, self._empty_rank = False, None, False

    # ---- the natural gradient ------------------------------------------------------------
    def grads(self) -> dict[str, torch.Tensor]:
        """The current gradients, name → tensor (zeros where a parameter got none)."""
        if all(p.grad is None for p in self.params.values()):
            raise FisherkitError("step() was called before any backward: no parameter has a gradient; "
                                 "call loss.backward() first")
        return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in self.params.items()}

    def compute(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Refresh the curvature if due and return (F̂ + λI)⁻¹ g (a dict name → tensor)."""
        bad = first_nonfinite(grads)
        if bad is not None:
            raise NonFiniteError(f"the gradient of {bad!r} is not finite (NaN or inf); check the loss and the "
                                 "learning rate, or pass skip_nonfinite=True to skip such steps")
        if self.parallel is not None:
            grads = self.parallel.average_gradients(grads)
        if self.structure == "implicit":
            return self._implicit(grads)
        updated = False
        if self.steps % self.update_every == 0:
            self._ingest()
            updated = True
        refresh = self.steps % self.inv_every == 0 or self.curvature is None
        if refresh:
            self._refresh()
        if self.structure == "ekfac" and (updated or refresh):
            self._fit_scalings()
        out = self.inverse().solve(grads)
        self.steps += 1
        return out

    def inverse(self) -> DampedInverse:
        """The damped inverse of the curvature in use, rebuilt only when the curvature or the damping changed."""
        inv = self._inverse
        if inv is None or not inv.matches(self.curvature, self.damping, self.pi_damping):
            inv = self._inverse = DampedInverse(self.curvature, self.damping, self.pi_damping)
        return inv

    def _fvp_operator(self, b):
        """F_batch as an ``Implicit`` operator: v ↦ (1/B) Jᵀ [Σ_d V_d V_dᵀ] J v.

        One forward per step builds the graph; J v comes from the double-backward trick
        (J v = ∂/∂u ⟨Jᵀu, v⟩, the R-operator of Pearlmutter 1994) and Jᵀw from a backward, so each
        conjugate-gradient iteration costs two backward passes and no new forward.
        """
        if b.n == 0:  # an empty local batch: a zero product (its weight in the global mean is 0)
            op = Implicit(self.info, 0, self.kind, self.lik.to_config(), torch.zeros_like, b.f.dtype, b.f.device)
            return self.parallel.implicit(op, 0) if self.parallel is not None else op
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
                out = self.adapter.functional(self.model, ({**fixed, **train}, buffers), b.x)
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

        op = Implicit(self.info, b.n, self.kind, self.lik.to_config(), product, V.dtype, V.device)
        return self.parallel.implicit(op, b.n) if self.parallel is not None else op

    def _implicit(self, grads):
        b = self._ingest()
        self._operator = self._fvp_operator(b)
        g = self.info.join(grads)
        x = self._operator.solve(g.detach(), self.damping, tol=self.cg_tol, max_iter=self.cg_iters)
        self.steps += 1
        return {k: t.reshape(s) for k, t, s in zip(self.info.names, torch.split(x, self.info.numels), self.info.shapes)}

    def quad(self, delta: dict[str, torch.Tensor]) -> torch.Tensor:
        """ΔᵀF̂Δ for a displacement (dict name → tensor), with the undamped curvature in use."""
        op = self._operator if self.structure == "implicit" else self.curvature
        if op is None:
            raise FisherkitError("no Fisher has been formed yet; call step() first")
        d = self.info.join(delta)
        return d @ op.mv(d)

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
        """Everything needed to resume exactly: counters, damping, RNG state, the moving average's sums
        and the curvatures in use (safetensors-ready tensors plus a JSON-able ``layout``)."""
        tensors, layout = {}, {"version": STATE_VERSION, "plan_func_names": list(self.plan.func_names)}
        if self.running is not None:
            tensors.update({f"running.{k}": v.detach().clone() for k, v in self.running.sums().items()})
        for key in ("curvature", "kfac"):
            F = getattr(self, key)
            if F is not None:
                ts, meta = to_tensors(F, f"{key}.")
                tensors.update({k: v.detach().clone() for k, v in ts.items()})
                layout[key] = meta
        layout["basis_new"] = self._basis_new
        return {"structure": self.structure, "kind": self.kind, "names": list(self.info.names),
                "shapes": [list(s) for s in self.info.shapes], "steps": self.steps, "updates": self.updates,
                "damping": self.damping, "generator": self.generator.get_state(), "tensors": tensors,
                "layout": layout}

    def check_state(self, state: dict) -> None:
        """Raise (changing nothing) unless ``state`` is a ``state_dict`` of a preconditioner like this one."""
        if not isinstance(state, dict) or "tensors" not in state:
            raise FisherkitError("this is not a Preconditioner state_dict (no 'tensors' entry)")
        if state.get("structure") != self.structure or state.get("names") != list(self.info.names):
            raise FisherkitError(
                f"this state is for structure={state.get('structure')!r} over parameters "
                f"{state.get('names', [])[:4]}...; the preconditioner has structure={self.structure!r} over "
                f"{self.info.names[:4]}..."
            )
        if state.get("kind") != self.kind:
            raise FisherkitError(f"this state is for kind={state.get('kind')!r}; the preconditioner has "
                                 f"kind={self.kind!r} (its curvature would mean something else)")
        shapes = state.get("shapes")
        if shapes is not None and [list(s) for s in shapes] != [list(s) for s in self.info.shapes]:
            raise FisherkitError(f"this state is for parameter shapes {shapes[:4]}...; the model has "
                                 f"{[list(s) for s in self.info.shapes][:4]}...")
        layout = state.get("layout")
        if not isinstance(layout, dict) or layout.get("version") != STATE_VERSION:
            raise FisherkitError("this state was written by an older fisherkit optimizer (state version "
                                 f"{(layout or {}).get('version', 1)}; this one reads {STATE_VERSION}); "
                                 "restart the optimizer from the saved model weights")

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict``: everything is checked and rebuilt first, then assigned (all or nothing)."""
        self._assign_state(self._prepare_state(state))

    def _prepare_state(self, state: dict) -> dict:
        """Check ``state`` and build everything ``load_state_dict`` assigns, changing nothing of ``self``:
        counters and damping in range, a generator state this device accepts, every tensor finite,
        the curvatures and the moving average rebuilt with the shapes of this model's parameters."""
        from ..curvature.io import check_shapes

        self.check_state(state)
        layout, tensors = state["layout"], state["tensors"]
        where = "this optimizer state"
        for key in ("steps", "updates"):
            v = state.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise FisherkitError(f"{where} has {key}={v!r} (a non-negative integer expected); nothing was loaded")
        damping = state.get("damping")
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping > 0 \
                or damping == float("inf"):
            raise FisherkitError(f"{where} has damping={damping!r} (a finite number > 0 expected); nothing was loaded")
        gen = state.get("generator")
        try:
            torch.Generator(device=self.device).set_state(gen.clone())
        except (AttributeError, TypeError, RuntimeError, ValueError):
            raise FisherkitError(f"{where} has an unusable random-generator state; nothing was loaded") from None
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise FisherkitError(f"{where} has an entry in 'tensors' that is not a tensor; nothing was loaded")
        for k, v in tensors.items():
            if not torch.is_floating_point(v) or not bool(torch.isfinite(v).all()):
                raise NonFiniteError(f"{where} is corrupt: its tensor {k!r} is not finite floating point "
                                     "(NaN or inf); nothing was loaded")
        try:
            built = {}
            for key in ("curvature", "kfac"):
                if key in layout:
                    F = from_tensors(layout[key], {k: v.clone() for k, v in tensors.items()}, f"{key}.", where)
                    built[key] = F.decompose(self.ops.eigh)  # as at the refresh: the same layout, bit-exact steps
            plan = self.plan
            if list(layout.get("plan_func_names", plan.func_names)) != list(plan.func_names):
                moved = set(layout["plan_func_names"])
                plan = plan.without([u for u in plan.hook_units if any(n in moved for n in u.names)])
            running = {k[len("running."):]: v.clone() for k, v in tensors.items() if k.startswith("running.")}
            if running and self.running is not None:  # a trial finish: sums of other shapes are refused here
                name = "kfac" if self.structure == "ekfac" else self.structure
                trial = STRUCTURE_CLASSES[name].accumulator(plan, Meta(self.kind, self.lik.to_config(), self.dtype,
                                                                       self.device, {"fallback": "diag", "warn": False}))
                trial.consume = False
                trial.load_sums(running, 1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    check_shapes(trial.finish(LOCAL), f"{where} (its moving average)")
        except FisherkitError as e:
            raise FisherkitError(f"{e}; nothing was loaded") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise FisherkitError(f"{where} is incomplete or corrupt ({type(e).__name__}: {e}); nothing was loaded") \
                from None
        return {"state": state, "plan": plan, "running": running, "built": built}

    def _assign_state(self, prepared: dict) -> None:
        """The assignments of ``load_state_dict`` (nothing here can fail on a prepared state)."""
        state, plan, running, built = prepared["state"], prepared["plan"], prepared["running"], prepared["built"]
        if plan is not self.plan:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._start(plan)
        self.steps, self.updates, self.damping = int(state["steps"]), int(state["updates"]), float(state["damping"])
        self.generator.set_state(state["generator"].clone())
        if self.running is not None:
            self.running.load_sums(running, 1 if running else 0)
        self.curvature, self.kfac = built.get("curvature"), built.get("kfac")
        self._basis_new, self._last_stats = bool(state["layout"].get("basis_new", False)), None
