"""``fisher(...)``, ``fvp(...)`` and ``kl_divergence(...)``: the public entry points of the core.

F = (1/N) Σₙ E_{y~p(y|xₙ,θ)}[∇θ log p(y|xₙ,θ) ∇θ log p(y|xₙ,θ)ᵀ] = (1/N) Σₙ Jₙᵀ Λₙ Jₙ, with Jₙ the
Jacobian of the model output and Λₙ the Fisher of the likelihood in output space.
"""

from __future__ import annotations

import os

import torch

from .curvature import STRUCTURES as STRUCTURE_CLASSES
from .curvature.accumulator import Meta
from .curvature.dense import dense_fits
from .curvature.implicit import Implicit
from .curvature.lowrank import LowRank
from .curvature.memory import check_fits, estimate
from . import distributed as _dist
from .distributed import all_reduce_sums
from .engine.adapters import DEFAULT, batch_len, input_tensors, make_adapter, sample_count
from .engine.collect import batch_source, buffers_kept, check_batchnorm, gather, settled_plan
from .engine.data import accumulation_dtype, iterate_batches, model_device_dtype
from .choices import as_generator, check_choice, check_every, check_kind, check_positive, check_structure
from .engine.directions import directions
from .engine.functional import jvp_vjp, output_with_params
from .engine.units import make_plan
from .params import select_params
from .errors import FisherkitError, NonFiniteError, ShapeError, model_call_error
from .likelihoods import Likelihood, get_likelihood


def _seeded_generator(generator, device):
    """The generator the user handed over (an int seed becomes one); None: a fresh one whose seed is a
    hash of the global RNG's *state* — reproducible under ``torch.manual_seed``, and the global stream
    is read, never advanced (computing a Fisher does not change the RNG the user did not hand over)."""
    if generator is not None:
        return as_generator(generator, device=device, owner="fisher")[0]
    import hashlib

    digest = hashlib.blake2b(torch.random.get_rng_state().numpy().tobytes(), digest_size=8).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest, "little") >> 2)
    return g


def fisher(
    model: torch.nn.Module,
    data,
    likelihood: str | Likelihood = "categorical",
    kind: str = "exact",
    structure: str = "diag",
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    params=None,
    batch_size: int | None = None,
    progress: bool = False,
    rank: int = 20,
    max_memory: float = 2**30,
    allow_batchnorm_train: bool = False,
    process_group=None,
    output=None,
    shift_labels: bool = False,
    ignore_index: int | None = -100,
    per_token: bool = False,
    kfac_approx: str = "expand",
):
    """Fisher information matrix of ``model`` over ``data``, in the requested structure.

    F = (1/N) Σₙ Σ_d gₙ,d gₙ,dᵀ with gₙ,d = Jₙᵀ vₙ,d for output directions v: the columns of
    the output-Fisher square root (``kind="exact"``), scaled residuals at ``mc_samples`` sampled
    labels (``"mc"``), or the residual at the observed label (``"empirical"``, biased: it is the
    uncentred gradient covariance, not the curvature — Kunstner et al. 2019).

    Args:
        data: a DataLoader, an ``(X, y)`` pair (split into ``batch_size`` rows) or an iterable
            of ``(X, y)`` batches; inputs may be tensors, tuples or dicts (HF ``BatchEncoding``, labels
            under ``"labels"``). Labels are needed for ``kind="empirical"`` and to leave out positions
            labelled ``ignore_index``.
        structure: ``"dense" | "diag" | "block" | "kfac" | "ekfac" | "lowrank" | "implicit"``.
        rank: number of eigenpairs kept by ``"lowrank"``.
        max_memory: bytes a single allocation may take (per-sample gradients are chunked to it).
        output: where the logits are in the model's output (default: the tensor itself, ``"logits"``
            of a mapping / HF ``ModelOutput``, or the first element of a tuple); a key, an index or a
            callable.
        shift_labels: the causal-LM convention (logits at position t predict label t + 1).
        ignore_index: label value of positions left out of every kind (−100 as in PyTorch / HF).
        per_token: normalise by the number of counted output positions instead of the number of
            samples. The default (per sample, e.g. per sequence) keeps N·F the Fisher of the whole
            data set, which EWC, Laplace and merging need; per token gives the average Fisher of
            one token, comparable across sequence lengths.
        kfac_approx: for layers applied at T positions (tokens, conv patches): ``"expand"`` (each
            position a sample; exact for position-wise losses without mixing) or ``"reduce"`` (inputs
            averaged and output gradients summed over positions first; exact when a sample's inputs are
            the same at every position) — Eschenhagen et al. 2023, see ``engine.accumulate.kfac_add``.

    Returns a ``Curvature``; e.g. ``fk.fisher(net, (X, y), structure="kfac").solve(g, 1e-3)``.
    """
    check_structure(structure)
    lik = get_likelihood(likelihood)
    check_kind(kind, mc_samples)
    if structure == "lowrank":
        check_every("rank", rank)
    check_positive("max_memory", max_memory)
    adapter = make_adapter(output, shift_labels, ignore_index)
    check_choice("kfac_approx", kfac_approx, ("expand", "reduce"))
    check_batchnorm(model, allow_batchnorm_train)
    chosen = select_params(model, params)
    # FISHERKIT_FORCE_FUNC=1: a benchmark knob (benchmarks/bench_fisher.py) that sends every parameter
    # through the torch.func path, to compare it with the hooks; not part of the API.
    force_func = os.environ.get("FISHERKIT_FORCE_FUNC", "") == "1"
    plan = make_plan(model, chosen, use_hooks=structure != "implicit" and not force_func, elementwise=True)
    info = plan.info
    device, dtype = model_device_dtype(model)
    cls = STRUCTURE_CLASSES[structure]
    if structure == "dense":
        cls.accumulator.check(info, dtype, max_memory)
    options = {"rank": rank, "kfac_approx": kfac_approx, "max_memory": max_memory}
    check_fits(plan, structure, accumulation_dtype(dtype), device, options)  # before reading any data
    # exact and empirical draw nothing: a generator handed over is left as it is
    gen = _dist.rank_generator(_seeded_generator(generator, device), process_group) if kind == "mc" else None

    if structure == "implicit" or (structure == "lowrank" and not dense_fits(info, dtype, max_memory)):
        imp = _implicit(model, data, lik, kind, mc_samples, gen, info, batch_size, dtype, device, process_group,
                        adapter, per_token)
        if structure == "implicit":
            return imp
        vals, vecs = imp.eig(min(rank, info.size))  # too large for a dense Gram: Lanczos
        return LowRank(info, imp.num_samples, kind, lik.to_config(), vals, vecs)

    what = f"fisher(structure={structure!r}, kind={kind!r})"
    ops = _dist.linalg_ops(process_group)
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, list)) else None
    state = gen.get_state() if gen is not None else None
    with buffers_kept(model):  # BatchNorm in training mode (allowed) must not move its running statistics
        batches, first = _read(model, data, batch_size, process_group, what)
        plan = settled_plan(model, plan, first)  # explicit: Linear/Conv layers not called once -> torch.func
        acc = cls.accumulator(plan, Meta(kind, lik.to_config(), accumulation_dtype(dtype), device, options))
        for p in range(acc.passes):
            if p > 0:
                acc.next_pass(ops)
                if gen is not None:  # the refit pass sees the same sampled labels
                    gen.set_state(state)
                batches, _ = _read(model, data, batch_size, process_group, what)
            stats = gather(model, batches, lik, kind, plan, mc_samples=mc_samples, generator=gen,
                           max_memory=max_memory, progress=progress,
                           description=f"Fisher ({structure}{', refit' if p else ''})",
                           need_func=acc.needs_func[p], total=total, adapter=adapter, per_token=per_token)
            for bs in _dist.local_batches(stats, process_group, what):
                acc.add(bs)
                bs = None  # this batch's statistics are freed before the next forward runs
            acc.load_sums(*all_reduce_sums(acc.sums(), acc.n, process_group, what, device))
    return acc.finish(ops)


def _read(model, data, batch_size, process_group, what):
    """``engine.collect.batch_source`` with the first batch already read; distributed, an empty shard
    is allowed and a failure while reading it is announced to the peers."""
    def shard(it):
        if _dist.world_size(process_group) == 1:
            yield from it
            return
        try:
            yield from it
        except FisherkitError as e:
            if not str(e).startswith("data is empty"):
                raise

    try:
        return batch_source(model, data, batch_size, shard)
    except Exception as e:
        _dist.announce_failure(e, process_group, what)
        raise


def _weight_fn(lik, kind, y, mc_samples, gen, mask=None):
    def weight(f, u):
        if kind == "exact":
            s = lik.sqrt_fisher(f)
            w = (s @ (s.transpose(-1, -2) @ u.unsqueeze(-1))).squeeze(-1)
            return w if mask is None else w * mask.unsqueeze(-1).to(w.dtype)
        v = directions(lik, f, y, kind, mc_samples, gen, mask=mask)
        dims = tuple(range(2, v.dim()))
        return (v * (v * u.unsqueeze(0)).sum(dim=dims, keepdim=True)).sum(0)

    return weight


def _fvp_flat(model, data, v_flat, lik, kind, mc_samples, seed, info, batch_size, process_group=None,
              adapter=DEFAULT, per_token=False):
    device, dtype = model_device_dtype(model)
    gen = None
    if kind == "mc":
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    v = dict(zip(info.names, (t.reshape(s) for t, s in zip(torch.split(v_flat, info.numels), info.shapes))))
    total, n = None, 0
    what = f"Fisher-vector product (kind={kind!r})"
    for i, x, y in _dist.local_batches(iterate_batches(data, batch_size, device, dtype), process_group, what):
        if kind == "empirical" and y is None:
            raise FisherkitError(f"kind='empirical' needs labels, but batch {i} has none")
        y, mask = adapter.prepare_labels(y, lik.name)
        try:
            f, g = jvp_vjp(model, info.names, x, v, _weight_fn(lik, kind, y, mc_samples, gen, mask), adapter)
            flat = torch.cat([g[k].reshape(-1) for k in info.names])
            if not bool(torch.isfinite(flat).all()):
                raise _nonfinite_batch(i, x, f, what)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, FisherkitError) as e:
            err = e if isinstance(e, FisherkitError) else model_call_error(model, x, e, f"batch {i}")
            if _dist.world_size(process_group) > 1:
                _dist.announce_failure(err, process_group, what)
            raise err from (None if err is e else e)
        total = flat if total is None else total + flat
        n += sample_count(x, f, mask, per_token)
    if _dist.world_size(process_group) == 1:
        return total / n, n
    sums = {"fv": total} if total is not None else {}
    sums, n = all_reduce_sums(sums, n, process_group, what, device, check=_dist.tensor_digest(v_flat))
    return sums["fv"] / n, n


def _nonfinite_batch(i, x, f, what) -> NonFiniteError:
    """Name the batch and say where the NaN/inf came from: the inputs, the outputs, or the backward."""
    bad_in = [t for t in input_tensors(x) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad_in:
        rows = torch.nonzero(~torch.isfinite(bad_in[0]).reshape(bad_in[0].shape[0], -1).all(1)).flatten()[:5].tolist()
        where = f"its inputs hold NaN or inf (rows {rows})"
    elif not bool(torch.isfinite(f).all()):
        where = "the model's outputs are NaN or inf (overflow in the model?)"
    else:
        where = ("the product is NaN or inf although the model's outputs are finite (e.g. huge inputs behind a "
                 "saturating activation)")
    return NonFiniteError(f"batch {i} of the {what}: {where}; fix or drop those values "
                          "(e.g. torch.nan_to_num, or scale the inputs) and try again")


def _implicit(model, data, lik, kind, mc_samples, gen, info, batch_size, dtype, device, process_group=None,
              adapter=DEFAULT, per_token=False):
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item()) if gen is not None else 0
    n = 0
    for i, x, y in _dist.local_batches(iterate_batches(data, batch_size, device, dtype), process_group,
                                       "implicit Fisher"):
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in input_tensors(x)):
            raise _nonfinite_batch(i, x, None, "implicit Fisher")
        if per_token:  # counted positions need the output's shape: one forward without gradients
            with torch.no_grad():
                n += sample_count(x, adapter.forward(model, x), adapter.prepare_labels(y, lik.name)[1], True)
        else:
            n += batch_len(x)

    def product(v):
        return _fvp_flat(model, data, v, lik, kind, mc_samples, seed, info, batch_size, process_group,
                         adapter, per_token)[0]

    if process_group is not None or torch.distributed.is_available() and torch.distributed.is_initialized():
        n = all_reduce_sums({}, n, process_group, "implicit Fisher")[1]
    return _dist.DistributedImplicit.wrap(Implicit(info, n, kind, lik.to_config(), product, dtype, device), process_group)


def memory_estimate(model: torch.nn.Module, params=None, rank: int = 20, max_memory: float = 2**30) -> dict[str, int]:
    """Peak bytes each structure would hold for ``model``'s Fisher, known before any data is read.

    From the parameter plan alone (which layers are Kronecker-factored, which are dense or diagonal
    blocks): diag 2P, dense 2P², kfac 2Σ(I² + O²) plus the other parameters' blocks, ekfac about twice
    kfac plus I·O per layer, block 2Σg², lowrank 2P² + Pk (Lanczos (k + 4)P when the Gram does not fit),
    implicit 4P floats — in the accumulation dtype (float32 for bf16/fp16 models). ``fisher`` refuses a
    structure whose estimate exceeds 90 % of the memory available on the model's device, with these
    numbers. The working set of a batch is bounded separately by ``max_memory`` chunks.

    Example: for GPT-2 small (124M parameters, float32) diag needs 0.93 GiB and dense about 110 PiB.
    """
    if not isinstance(model, torch.nn.Module):
        raise FisherkitError(f"memory_estimate needs a torch.nn.Module; got {type(model).__name__}")
    check_every("rank", rank)
    check_positive("max_memory", max_memory)
    plan = make_plan(model, select_params(model, params), elementwise=True)
    _, dtype = model_device_dtype(model)
    return estimate(plan, accumulation_dtype(dtype), {"rank": rank, "max_memory": max_memory})


def fvp(model, data, v, likelihood="categorical", kind="exact", mc_samples=1, generator=None, params=None,
        batch_size=None, process_group=None, output=None, shift_labels=False, ignore_index=-100,
        per_token=False) -> torch.Tensor:
    """Matrix-free Fisher-vector product F v = (1/N) Σₙ Jₙᵀ Λₙ (Jₙ v) (a JVP, then a VJP, per batch).

    ``v`` is a flat vector over the chosen parameters (or a dict name → tensor).
    """
    lik = get_likelihood(likelihood)
    check_kind(kind, mc_samples)
    info = make_plan(model, select_params(model, params), use_hooks=False).info
    device, _ = model_device_dtype(model)
    if isinstance(v, dict):
        v = torch.cat([v[n].reshape(-1) for n in info.names])
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != info.size:
        raise ShapeError(f"v must be a flat vector of {info.size} entries; got "
                         f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    if v.dtype != model_device_dtype(model)[1]:
        raise ShapeError(f"v is {v.dtype} but the model's parameters are {model_device_dtype(model)[1]}; pass "
                         f"v.to({model_device_dtype(model)[1]})")
    if not bool(torch.isfinite(v).all()):
        raise NonFiniteError("v holds NaN or inf; a Fisher-vector product needs a finite vector")
    seed = 0
    if kind == "mc":
        g = _seeded_generator(generator, device)
        seed = _dist.rank_seed(int(torch.randint(0, 2**62, (1,), generator=g, device=g.device).item()), process_group)
    adapter = make_adapter(output, shift_labels, ignore_index)
    return _fvp_flat(model, data, v, lik, kind, mc_samples, seed, info, batch_size, process_group, adapter,
                     per_token)[0]


def kl_divergence(model, theta_a, theta_b, data, likelihood="categorical", params=None, batch_size=None,
                  output=None) -> torch.Tensor:
    """Mean over the data of KL[p(y|x, θa) ‖ p(y|x, θb)]; for θb = θa + d it is ≈ ½ dᵀ F d.

    ``theta_a`` / ``theta_b`` are flat vectors over the chosen parameters, or dicts name → tensor.
    """
    lik = get_likelihood(likelihood)
    adapter = make_adapter(output)
    info = make_plan(model, select_params(model, params), use_hooks=False).info
    device, dtype = model_device_dtype(model)

    def as_dict(theta):
        if isinstance(theta, dict):
            return theta
        if theta.dim() != 1 or theta.shape[0] != info.size:
            raise FisherkitError(f"theta must be a flat vector of {info.size} entries; got shape {tuple(theta.shape)}")
        return {k: t.reshape(s) for k, t, s in zip(info.names, torch.split(theta, info.numels), info.shapes)}

    ta, tb = as_dict(theta_a), as_dict(theta_b)
    total, n = 0.0, 0
    with torch.no_grad():
        for _, x, _ in iterate_batches(data, batch_size, device, dtype):
            fa, fb = output_with_params(model, ta, x, adapter), output_with_params(model, tb, x, adapter)
            total = total + lik.kl(fa, fb).sum()
            n += batch_len(x)
    return total / n


def load(path, model=None, map_location=None):
    """Load a Fisher written by ``F.save(path)`` (see ``fisherkit.curvature.io.load``)."""
    from .curvature.io import load as _load

    return _load(path, model=model, map_location=map_location)


__all__ = ["fisher", "fvp", "kl_divergence", "load"]
