"""``NaturalGradient``: steepest descent in distribution space, as a ``torch.optim.Optimizer``.

The Euclidean step argmin_{‖d‖ ≤ ε} L(θ + d) ignores what the parameters mean. Measuring the step
by the change of the model's predictive distribution instead, KL[p_θ ‖ p_{θ+d}] ≈ ½ dᵀF d ≤ ε,
gives (Lagrange) d ∝ −F⁻¹∇L, the natural gradient (Amari 1998). Per step, with F̂ the curvature
estimate of the chosen structure and λ the damping:

    n = (F̂ + λI)⁻¹ (∇L + η θ)                 (η = weight_decay)
    n ← n · ‖a‖ / ‖n‖  per tensor               (graft: a = Adam's or SGD's step; optional)
    b ← μ b + n ;  Δ = −lr · b                  (μ = momentum; nesterov: Δ = −lr · (n + μ b))
    Δ ← Δ · min(1, √(κ / (½ ΔᵀF̂Δ)))            (κ = kl_clip, kl_clip_mode="quadratic")
    θ ← θ + Δ
    Δ ← ν Δ until KL_batch[p_θ ‖ p_θ+Δ] ≤ κ    (kl_clip_mode="measured": the KL actually moved)

Example::

    opt = fk.optim.NaturalGradient(model, lr=0.1, structure="kfac", likelihood="categorical")
    for x, y in loader:
        opt.zero_grad(); loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
"""

from __future__ import annotations

import math

import torch

from ..errors import FisherkitError, NonFiniteError
from ..choices import check_choice, check_every, check_fraction, check_positive
from . import transforms as T
from .damping import levenberg_marquardt
from ..engine.units import make_plan
from ..params import select_params
from .preconditioner import Preconditioner


def check_nesterov(nesterov, momentum) -> None:
    """``nesterov`` is a bool, and true only with momentum > 0 (torch.optim.SGD's rule)."""
    if not isinstance(nesterov, bool):
        raise FisherkitError(f"nesterov must be True or False; got {nesterov!r}")
    if nesterov and not momentum:
        raise FisherkitError("nesterov=True needs momentum > 0 (the look-ahead is n + μ b); pass momentum=0.9, say")


class NaturalGradient(torch.optim.Optimizer):
    """Natural-gradient descent with a KFAC / EKFAC / diagonal / dense / implicit (CG) Fisher.

    Args (beyond ``Preconditioner``'s ``structure, kind, likelihood, damping, update_every,
    inv_every, ema, pi_damping, mc_samples, loss_reduction, cg_iters, generator``):
        lr: step size (> 0); per param group.
        momentum, weight_decay: heavy-ball momentum on the natural gradient; L2 added to the
            gradient before preconditioning. Per param group.
        nesterov: step along Nesterov's look-ahead n + μ b instead of b (as ``torch.optim.SGD(nesterov=True)``;
            needs momentum > 0). Per param group.
        kl_clip: the KL trust region κ (None: none). What it bounds is ``kl_clip_mode``:
            ``"quadratic"`` (default): the model's quadratic KL ½ΔᵀF̂Δ with the curvature in use — free,
            but F̂ is a moving average of a structured approximation, so the KL the step actually moves
            on the batch can be many times κ (13–230× measured on digits for kfac/ekfac/diag);
            ``"measured"``: the KL actually moved on the current batch, mean over its samples of
            KL[p(y|x, θ) ‖ p(y|x, θ+Δ)] computed from the model's outputs before and after the step
            (two extra forwards, plus one per backtrack); a step that moves more is shrunk by
            ν = 0.99 √(κ/KL) and measured again (at most ``kl_backtracks`` times, then not taken), so
            after ``step()`` the measured KL is ≤ κ — guaranteed, on that batch, in the model's mode.
        curvature_budget: ``None`` or a fraction β > 0: re-choose ``update_every`` / ``inv_every`` after every
            inverse refresh from measured step times so that the curvature work costs ≤ β × the rest of a
            step (see ``optim.amortise``; not bit-reproducible, refused under torch.distributed).
        graft: ``None``, ``"adam"`` or ``"sgd"``: per parameter tensor, keep the natural gradient's
            direction and take the length of Adam's step g/(√v̂+ε) (``graft_beta2``, ``graft_eps``) or
            of the gradient (SGD). The learning rate then has Adam's / SGD's scale and survives changes
            of damping and of the curvature's scale.
        cg_tol: ``structure="implicit"``: conjugate gradients stop once the residual is ≤ ``cg_tol`` × ‖g‖
            (or after ``cg_iters`` iterations); a finite number > 0.
        adaptive_damping: Levenberg–Marquardt rule every ``lm_every`` steps (needs ``closure``).
        skip_nonfinite: skip (and count in ``skipped_steps``) steps whose loss or gradient is not
            finite, instead of raising ``NonFiniteError``.
        diagnostics: record per step the cosine between ∇L and the natural gradient, the KL the
            quadratic model predicts (½ΔᵀF̂Δ) and the KL actually moved on the batch
            (``fk.kl_divergence``), in ``history``.
        fallback: what the parameters KFAC/EKFAC cannot factor (embeddings, positional tables, LayerNorms,
            ...) get: ``"diag"`` (default): a diagonal Fisher, from per-sample gradients (a torch.func
            pass on every statistics step); ``"adam"``: Adam's step g/(√v̂ + ε) (``graft_beta2``,
            ``graft_eps``; before momentum and lr, like every direction here), and they are left out of
            the curvature — no per-sample pass (what Shampoo/SOAP do for such parameters). The quadratic
            KL of ``kl_clip`` and of Levenberg–Marquardt then covers the factored parameters only.
        kfac_approx: ``"expand"`` or ``"reduce"`` for layers applied at several positions (tokens,
            conv patches); see ``Preconditioner``.
        params: param groups (iterable of tensors or dicts) — default: the model's trainable ones.
        process_group, split_inverses: under torch.distributed (e.g. torchrun + DDP) curvature
            statistics are all-reduced over ``process_group`` (default: the initialised world) and
            the eigendecompositions split over ranks (``split_inverses=False``: every rank computes
            them all). See ``fisherkit.distributed.distribute_optimizer`` and docs/distributed.md.
    """

    def __init__(self, model, lr=0.1, structure="kfac", kind="mc", damping=1e-3, update_every=10, ema=0.95,
                 kl_clip=None, momentum=0.0, weight_decay=0.0, likelihood="categorical", inv_every=None,
                 adaptive_damping=False, lm_every=5, lm_omega=2 / 3, skip_nonfinite=False, diagnostics=False,
                 pi_damping=True, mc_samples=1, loss_reduction="mean", cg_iters=20, cg_tol=1e-6, generator=None,
                 params=None, process_group=None, split_inverses=True, seed=None, kl_clip_mode="quadratic",
                 kl_backtracks=10, graft=None, graft_beta2=0.999, graft_eps=1e-8, curvature_budget=None,
                 fallback="diag", kfac_approx="expand", nesterov=False):
        check_positive("lr", lr)
        check_positive("cg_tol", cg_tol)  # also checked by the Preconditioner; here before torch's state is built
        check_choice("fallback", fallback, ("diag", "adam"))
        if fallback == "adam" and structure not in ("kfac", "ekfac"):
            raise FisherkitError(f"fallback='adam' is for the parameters KFAC/EKFAC cannot factor; structure="
                                 f"{structure!r} covers every parameter itself")
        check_positive("kl_clip", kl_clip, allow_none=True)
        check_fraction("momentum", momentum)
        check_choice("kl_clip_mode", kl_clip_mode, ("quadratic", "measured"))
        if graft is not None:
            check_choice("graft", graft, ("adam", "sgd"))
        check_every("kl_backtracks", kl_backtracks)
        check_fraction("graft_beta2", graft_beta2)
        check_positive("graft_eps", graft_eps)
        check_positive("curvature_budget", curvature_budget, allow_none=True)
        if curvature_budget is not None and structure == "implicit":
            raise FisherkitError("curvature_budget chooses update_every / inv_every; structure='implicit' has neither "
                                 "(it solves on every batch)")
        if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
            raise FisherkitError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
        if not (0 < lm_omega < 1):
            raise FisherkitError(f"lm_omega must be in (0, 1); got {lm_omega!r}")
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        check_nesterov(nesterov, momentum)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        for g in self.param_groups:
            check_positive("lr", g["lr"])
            check_nesterov(g["nesterov"], g["momentum"])
        tensors = [p for g in self.param_groups for p in g["params"]]
        self.params = select_params(model, tensors)  # name -> tensor, every parameter this optimizer moves
        self.fallback = fallback
        self.adam_names = []  # fallback="adam": the parameters that take Adam's step (not in the curvature)
        if fallback == "adam":
            self.adam_names = list(make_plan(model, self.params).func_names)
            if len(self.adam_names) == len(self.params):
                raise FisherkitError("fallback='adam': KFAC factors none of these parameters (no Linear/Conv "
                                     "layer among them); use torch.optim.Adam")
        skip = set(self.adam_names)
        self.pre = Preconditioner(model, structure=structure, kind=kind, likelihood=likelihood, damping=damping,
                                  update_every=update_every, inv_every=inv_every, ema=ema, pi_damping=pi_damping,
                                  mc_samples=mc_samples, loss_reduction=loss_reduction, cg_iters=cg_iters,
                                  cg_tol=cg_tol, generator=generator, seed=seed, kfac_approx=kfac_approx,
                                  params=[p for n, p in self.params.items() if n not in skip])
        self.model, self.kl_clip, self.kl_clip_mode, self.kl_backtracks = model, kl_clip, kl_clip_mode, kl_backtracks
        self.graft, self.graft_beta2, self.graft_eps = graft, graft_beta2, graft_eps
        self.last_kl = None  # kl_clip_mode="measured": the KL the latest step moved on its batch
        self.adaptive_damping, self.lm_every, self.lm_omega = adaptive_damping, lm_every, lm_omega
        self.skip_nonfinite, self.diagnostics = skip_nonfinite, diagnostics
        self.skipped_steps = 0
        self.history: list[dict] = []
        self._name = {id(p): n for n, p in self.params.items()}
        # Inside an initialised process group (torchrun + DDP) the curvature statistics are all-reduced
        # and the inverses split over ranks; a no-op in a single process.
        from ..distributed import distribute_optimizer

        distribute_optimizer(self, process_group, split_inverses)
        self.amortiser = None
        if curvature_budget is not None:
            if self.pre.parallel is not None:
                raise FisherkitError("curvature_budget is refused under torch.distributed: each rank would time its own "
                                     "steps and choose other intervals; pass update_every / inv_every instead")
            from .amortise import Amortiser

            self.amortiser = Amortiser(curvature_budget)

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model (the optimizer cannot refresh its curvature after)."""
        self.pre.remove()

    @property
    def damping(self) -> float:
        return self.pre.damping

    def _nonfinite(self, what: str):
        if self.skip_nonfinite:
            self.skipped_steps += 1
            self.pre.recorder.batch = None
            return True
        raise NonFiniteError(f"{what} is not finite (NaN or inf); lower the learning rate, check the data, "
                             "or pass skip_nonfinite=True to skip such steps")

    def _hyper(self) -> dict:
        """Per parameter name: lr, momentum, weight decay and nesterov of its param group."""
        out = {"lr": {}, "momentum": {}, "weight_decay": {}, "nesterov": {}}
        for group in self.param_groups:
            for p in group["params"]:
                for k in out:  # a state_dict saved before ``nesterov`` existed has no such key: heavy ball
                    out[k][self._name[id(p)]] = group.get(k, False) if k == "nesterov" else group[k]
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """One natural-gradient step; ``closure`` (re-evaluates the loss, calls backward) is optional."""
        loss = None
        if closure is not None and self.pre.parallel is not None:
            closure = self.pre.parallel.mean_closure(closure)  # distributed: the mean of the ranks' losses
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.adaptive_damping and closure is None:
            raise FisherkitError("adaptive_damping=True needs step(closure): the reduction ratio re-evaluates the loss")
        if loss is not None and not torch.isfinite(torch.as_tensor(loss)).all():
            if self._nonfinite(f"the loss ({float(torch.as_tensor(loss).detach())})"):
                return loss
        params = self.params
        hp = self._hyper()
        raw = self.pre.grads()
        raw.update({n: (params[n].grad if params[n].grad is not None else torch.zeros_like(params[n]))
                    for n in self.adam_names})
        grads = T.weight_decay(raw, params, hp["weight_decay"])
        bad = T.first_nonfinite(grads)
        if bad is not None and self._nonfinite(f"the gradient of {bad!r}"):
            return loss
        work = None
        if self.amortiser is not None:
            pre = self.pre
            work = ("inverse" if pre.steps % pre.inv_every == 0 or pre.curvature is None else
                    "stats" if pre.steps % pre.update_every == 0 else "plain")
        covered = {n: grads[n] for n in self.pre.params}
        nat = self._precondition(covered)
        if self.graft is not None:
            moments = self._moments("graft_v", covered)
            nat = T.graft(nat, covered, moments, self.graft, self.pre.steps, self.graft_beta2, self.graft_eps)
            self._keep("graft_v", moments)
        if self.adam_names:
            rest = {n: grads[n] for n in self.adam_names}
            if self.pre.parallel is not None:
                rest = self.pre.parallel.average_gradients(rest)
            moments = self._moments("graft_v", rest)
            nat.update(T.adam(rest, moments, self.pre.steps, self.graft_beta2, self.graft_eps))
            self._keep("graft_v", moments)
        buffers = {n: self.state[p]["momentum_buffer"] for n, p in params.items()
                   if "momentum_buffer" in self.state.get(p, {})}
        directions = T.momentum(buffers, nat, hp["momentum"], hp["nesterov"])
        for n, b in buffers.items():
            self.state[params[n]]["momentum_buffer"] = b
        delta = T.scale(directions, hp["lr"])
        q = None
        measured = self.kl_clip is not None and self.kl_clip_mode == "measured"
        if (self.kl_clip is not None and not measured) or self.adaptive_damping or self.diagnostics:
            q = float(self.pre.quad(delta))
        if not measured:
            delta, q, _ = T.kl_clip(delta, q, self.kl_clip)
        old = {n: p.detach().clone() for n, p in params.items()} if (self.diagnostics or measured) else None
        f_old = self._batch_output() if measured else None
        T.apply(params, delta)
        if measured:
            nu = self._clip_measured(old, delta, f_old)
            if nu != 1.0:
                delta = {n: d * nu for n, d in delta.items()}
                q = None if q is None else q * nu * nu
        if self.adaptive_damping and (self.pre.steps - 1) % self.lm_every == 0:
            self._levenberg_marquardt(closure, loss, grads, delta, q)
        if self.diagnostics:
            self._record(grads, nat, q, old)
        if work is not None:
            self.amortiser.tick(work)
            if work == "inverse":
                self.amortiser.choose(self.pre)
        return loss

    def _moments(self, key: str, names) -> dict:
        """name -> the per-parameter state tensor ``key`` of those names that have one."""
        return {n: self.state[self.params[n]][key] for n in names if key in self.state.get(self.params[n], {})}

    def _keep(self, key: str, moments: dict) -> None:
        for n, v in moments.items():
            self.state[self.params[n]][key] = v

    def _precondition(self, grads: dict) -> dict:
        """n = (F̂ + λI)⁻¹ g (refreshing the curvature when due); ``KFACEigenAdam`` overrides it."""
        return self.pre.compute(grads)

    def _batch_output(self):
        """The model's output on the current batch (the input of the latest recorded forward), no recording."""
        x = self.pre.recorder.last_x
        if x is None:
            raise FisherkitError("kl_clip_mode='measured' needs the model's forward on the batch before step(); "
                                 "none was seen (run model(x) with gradients enabled, then backward, then step)")
        self.pre.recorder.busy = True
        try:
            return self.pre.adapter.forward(self.model, x).detach()
        finally:
            self.pre.recorder.busy = False

    def _measured_kl(self, f_old) -> float:
        """Mean over the batch of KL[p(y|f_old) ‖ p(y|f(θ))] (over all ranks' batches when distributed)."""
        f_new = self._batch_output()
        total = self.pre.lik.kl(f_old, f_new).sum().to(torch.float64).reshape(1)
        sums, n = self.pre._reduce({"kl": total}, int(f_old.shape[0]), "NaturalGradient measured KL")
        return float(sums["kl"][0]) / max(int(n), 1)

    def _clip_measured(self, old, delta, f_old) -> float:
        """Shrink the step just taken until the KL it moves on the batch is ≤ κ; returns the factor ν applied."""
        nu, kl = 1.0, self._measured_kl(f_old)
        for _ in range(self.kl_backtracks):
            if kl <= self.kl_clip:
                break
            nu *= 0.99 * (self.kl_clip / kl) ** 0.5
            for n, p in self.params.items():
                p.copy_(old[n]).add_(delta[n], alpha=nu)
            kl = self._measured_kl(f_old)
        if kl > self.kl_clip:  # still too far after all backtracks: do not move
            nu, kl = 0.0, 0.0
            for n, p in self.params.items():
                p.copy_(old[n])
        self.last_kl = kl
        return nu

    def _levenberg_marquardt(self, closure, loss, grads, delta, q):
        """ρ = (h(θ+Δ) − h(θ)) / (gᵀΔ + ½Δᵀ(F̂ + ηI)Δ) for the objective the step descends,
        h = L + ½η‖θ‖² (η = weight_decay; g already holds ∇L + ηθ); λ shrinks when ρ > ¾, grows when ρ < ¼."""
        eta = self._hyper()["weight_decay"]
        params = self.params
        decay_model = sum(eta.get(n, 0.0) * float((delta[n] * delta[n]).sum()) for n in delta)
        # ½η(‖θ+Δ‖² − ‖θ‖²), with θ+Δ the parameters now (the step was applied)
        decay_actual = sum(0.5 * eta.get(n, 0.0) * float((params[n].detach() ** 2).sum()
                                                          - ((params[n].detach() - delta[n]) ** 2).sum())
                           for n in delta if eta.get(n, 0.0))
        model_red = sum(float((grads[n] * delta[n]).sum()) for n in delta) + 0.5 * (q + decay_model)
        saved = {n: (p.grad.clone() if p.grad is not None else None) for n, p in self.params.items()}
        self.pre.recorder.busy = True
        try:
            with torch.enable_grad():
                new_loss = float(torch.as_tensor(closure()).detach())
        finally:
            self.pre.recorder.busy = False
        for n, p in self.params.items():
            p.grad = saved[n]
        actual = new_loss - float(torch.as_tensor(loss).detach()) + decay_actual
        rho = actual / model_red if model_red < 0 else float("nan")
        self.pre.damping = levenberg_marquardt(self.pre.damping, rho, self.lm_omega)
        self.last_rho = rho

    def _record(self, grads, nat, q, old):
        from ..api import kl_divergence

        g = torch.cat([grads[n].reshape(-1) for n in grads])
        ng = torch.cat([nat[n].reshape(-1) for n in grads])
        cos = float(g @ ng / (g.norm() * ng.norm()).clamp_min(1e-300))
        entry = {"step": self.pre.steps - 1, "cos_angle": cos, "kl_model": 0.5 * q, "damping": self.pre.damping}
        x = self.pre.recorder.last_x
        if x is not None:
            new = {n: p.detach() for n, p in self.params.items()}
            self.pre.recorder.busy = True
            try:
                entry["kl_measured"] = float(kl_divergence(self.model, old, new, [(x,)], likelihood=self.pre.lik))
            finally:
                self.pre.recorder.busy = False
        self.history.append(entry)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self):
        """torch's state (param groups, momentum buffers) plus the curvature, counters and RNG state."""
        sd = super().state_dict()
        sd["fisherkit"] = {"preconditioner": self.pre.state_dict(), "skipped_steps": self.skipped_steps}
        return sd

    def save(self, path) -> None:
        """Write the optimizer's state to a safetensors file (atomic; see ``optim.checkpoint``)."""
        from .checkpoint import save

        save(self, path)

    def load(self, path) -> None:
        """Restore from ``save(path)``; refuses a file written for other parameters."""
        from .checkpoint import load

        load(self, path)

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict``: torch's part and the preconditioner's are both checked (shapes,
        finiteness, hyper-parameters, structure, kind) before anything is assigned (all or nothing)."""
        from .checkpoint import check_torch_state

        if not isinstance(state_dict, dict):
            raise FisherkitError(f"load_state_dict needs a dict; got {type(state_dict).__name__}")
        sd = dict(state_dict)
        extra = sd.pop("fisherkit", None)
        if not isinstance(extra, dict):
            raise FisherkitError("this state_dict was not written by NaturalGradient (no 'fisherkit' entry)")
        prepared = self.pre._prepare_state(extra.get("preconditioner"))  # all checks first: nothing is loaded on a mismatch
        check_torch_state(self, sd)
        skipped = extra.get("skipped_steps")
        if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
            raise FisherkitError(f"this state_dict has skipped_steps={skipped!r}; nothing was loaded")
        super().load_state_dict(sd)
        self.pre._assign_state(prepared)
        self.skipped_steps = skipped
