"""Curvature statistics over ``torch.distributed``: all-reduce of sums, broadcast of eigenbases.

Every structure is built from *sums* over samples plus a sample count. With R ranks holding shards
of N_r samples each, summing both over the ranks before dividing,

    F = (Σ_r S_r) / (Σ_r N_r),      S_r = Σ_{n ∈ shard r} Σ_d g_{n,d} g_{n,d}ᵀ  (in its structure),

gives exactly the Fisher of the union of the shards, whatever their sizes (an empty shard included).
Each reduction is one small ``all_gather_object`` (sample counts and a signature of the tensors,
so that ranks that gathered different statistics fail with a clear error instead of adding
unrelated numbers) and one coalesced ``all_reduce`` per dtype. Eigendecompositions are split over
the ranks (largest first, to the least-loaded rank, as KAISA does) and broadcast, so every rank
holds bit-identical bases. A collective that times out or loses a peer raises ``DistributedError``
naming the rank, the collective and what was being computed.

``distribute_optimizer`` (``fisherkit.distributed.optim``) does the same for ``NaturalGradient`` /
``Preconditioner`` under DistributedDataParallel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import torch

from ..curvature.implicit import Implicit
from ..curvature.linalg import safe_eigh
from ..errors import FisherkitError

traffic = {"bytes": 0, "collectives": 0}  # payload sent into collectives by this process (benchmarks)


class DistributedError(FisherkitError, RuntimeError):
    """A collective failed: a peer crashed, exited, timed out, or computed something different."""


def _dist():
    return torch.distributed


def active_group(process_group=None):
    """The process group to reduce over, or None when not running distributed."""
    if process_group is not None:
        return process_group
    if _dist().is_available() and _dist().is_initialized():
        return _dist().group.WORLD
    return None


def world_size(process_group=None) -> int:
    group = active_group(process_group)
    return 1 if group is None else _dist().get_world_size(group)


def rank(process_group=None) -> int:
    """This process's rank within the group (0 when not distributed)."""
    group = active_group(process_group)
    return 0 if group is None else _dist().get_rank(group)


def reset_traffic() -> None:
    traffic.update(bytes=0, collectives=0)


def _count(nbytes: int) -> None:
    traffic["bytes"] += int(nbytes)
    traffic["collectives"] += 1


def _call(group, what: str, collective: str, fn):
    """Run one collective; turn a timeout / lost peer into a ``DistributedError`` that says where."""
    try:
        return fn()
    except DistributedError:
        raise
    except RuntimeError as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        cause = lines[0][:300] if lines else type(e).__name__
        raise DistributedError(
            f"rank {_dist().get_rank(group)} of {_dist().get_world_size(group)}: the {collective} for {what} "
            f"failed or timed out ({cause}). Another rank has probably crashed, exited, or not reached the same "
            "call (every rank must make the same fisherkit calls, in the same order); check the other ranks' "
            "output. The wait is bounded by the group's timeout (init_process_group / new_group timeout=...)."
        ) from e


def _exchange(payload: dict, group, what: str) -> list[dict]:
    """all_gather_object of a small dict; raises if any rank reported a failure instead."""
    out: list = [None] * _dist().get_world_size(group)
    _call(group, what, "all_gather_object", lambda: _dist().all_gather_object(out, payload, group=group))
    _count(256)
    for i, p in enumerate(out):
        if p.get("error"):
            raise DistributedError(f"rank {i} failed during {p.get('what', what)}: {p['error']}")
    return out


def announce_failure(exc: BaseException, process_group=None, what: str = "fisher") -> None:
    """Tell the peers, waiting in their next reduction, that this rank failed (best effort).

    They raise ``DistributedError("rank r failed during …: <message>")`` at once instead of
    waiting for the timeout.
    """
    group = active_group(process_group)
    if group is None or _dist().get_world_size(group) == 1:
        return
    out: list = [None] * _dist().get_world_size(group)
    try:
        _dist().all_gather_object(out, {"error": f"{type(exc).__name__}: {exc}", "what": what}, group=group)
    except Exception:  # the peers may be gone already; the original error is what matters
        pass


def local_batches(iterable: Iterable, process_group=None, what: str = "fisher") -> Iterator:
    """Iterate this rank's shard. Distributed, an empty shard is allowed (the others hold the data),
    and a failure while reading it is announced to the peers before it propagates."""
    if world_size(process_group) == 1:
        yield from iterable
        return
    seen = 0
    try:
        for item in iterable:
            seen += 1
            yield item
            item = None  # not kept alive while the next batch is computed
    except FisherkitError as e:
        if seen == 0 and str(e).startswith("data is empty"):
            return
        announce_failure(e, process_group, what)
        raise
    except Exception as e:
        announce_failure(e, process_group, what)
        raise


def tensor_digest(t: torch.Tensor) -> str:
    """A short hash of a tensor's bytes: equal on two ranks iff the tensors are bit-identical."""
    return hashlib.blake2b(t.detach().cpu().contiguous().numpy().tobytes(), digest_size=12).hexdigest()


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int, process_group=None, what: str = "statistics",
                    device=None, check=None) -> tuple[dict[str, torch.Tensor], int]:
    """Sum every tensor in ``sums`` and the sample ``count`` over the ranks: (Σ_r S_r, Σ_r N_r).

    A rank with ``count == 0`` (an empty shard) may pass fewer tensors: it contributes zeros of the
    shapes the other ranks report. Ranks with data must report the same names, shapes and dtypes,
    and the same ``what`` and ``check`` (e.g. a digest of the vector of a Fisher-vector product),
    else every rank raises ``DistributedError``. Returns new tensors (same on every rank).
    """
    group = active_group(process_group)
    if group is None or _dist().get_world_size(group) == 1:
        return sums, count
    sig = [(k, tuple(sums[k].shape), str(sums[k].dtype)) for k in sorted(sums)]
    peers = _exchange({"count": int(count), "sig": sig, "what": what, "check": check}, group, what)
    whats = [p["what"] for p in peers]
    if len(set(whats)) > 1:
        desc = ", ".join(f"rank {i}: {w}" for i, w in enumerate(whats))
        raise DistributedError(f"the ranks are not making the same call ({desc}); every rank must call "
                               "fisherkit with the same structure, kind and arguments")
    counts = [p["count"] for p in peers]
    total = sum(counts)
    if total == 0:
        raise FisherkitError(f"data is empty on all {len(peers)} ranks: no batch with at least one sample was found")
    ref_rank = next(i for i, c in enumerate(counts) if c > 0)
    ref = peers[ref_rank]
    for i, p in enumerate(peers):
        if counts[i] > 0 and p["sig"] != ref["sig"]:
            mine, theirs = dict((k, s) for k, *s in p["sig"]), dict((k, s) for k, *s in ref["sig"])
            diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k] != theirs[k]]
            raise DistributedError(
                f"{what}: rank {i} gathered different statistics from rank {ref_rank} (first differences: "
                f"{diff[:4]}); the ranks must hold the same model and parameters (same params=, and the same "
                "layers handled by hooks on every rank)"
            )
        if counts[i] > 0 and p["check"] != ref["check"]:
            raise DistributedError(
                f"{what}: rank {i} was given a different vector from rank {ref_rank}; pass the same vector on "
                "every rank (e.g. torch.distributed.broadcast it from rank 0 first)"
            )
    if count == 0:  # empty shard: zeros in the others' layout
        device = device if device is not None else (next(iter(sums.values())).device if sums else "cpu")
        sums = {k: torch.zeros(s, dtype=getattr(torch, d.split(".")[-1]), device=device) for k, s, d in ref["sig"]}
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k in sorted(sums):
        by_dtype.setdefault(sums[k].dtype, []).append(k)
    out = {}
    for dtype, keys in by_dtype.items():
        if len(keys) == 1:
            flat = sums[keys[0]].contiguous().clone()
        else:
            flat = torch.cat([sums[k].reshape(-1) for k in keys])
        _call(group, what, f"all_reduce of {len(keys)} tensor(s)", lambda: _dist().all_reduce(flat, group=group))
        _count(flat.numel() * flat.element_size())
        if len(keys) == 1:
            out[keys[0]] = flat
        else:
            for k, part in zip(keys, torch.split(flat, [sums[k].numel() for k in keys])):
                out[k] = part.view(sums[k].shape)
    return out, total


def _global_rank(group, group_rank: int) -> int:
    return _dist().get_global_rank(group, group_rank) if group is not _dist().group.WORLD else group_rank


def broadcast_tensors(tensors: list[torch.Tensor], process_group=None, src: int = 0,
                      what: str = "eigenbasis") -> list[torch.Tensor]:
    """The tensors of rank ``src`` (group rank) on every rank; shapes must agree. One broadcast per dtype."""
    group = active_group(process_group)
    if group is None or _dist().get_world_size(group) == 1 or not tensors:
        return tensors
    out = list(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for idx in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in idx]).contiguous()
        gsrc = _global_rank(group, src)
        _call(group, what, f"broadcast from rank {src}", lambda: _dist().broadcast(flat, src=gsrc, group=group))
        if _dist().get_rank(group) == src:
            _count(flat.numel() * flat.element_size())
        for i, part in zip(idx, torch.split(flat, [tensors[i].numel() for i in idx])):
            out[i] = part.view(tensors[i].shape).clone()
    return out


def assign_owners(sizes: list[int], world: int) -> list[int]:
    """Owner rank of each n×n eigendecomposition: largest first, to the rank with the least n³ work."""
    load = [0.0] * world
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += float(sizes[i]) ** 3
    return owner


def eigh_split(mats: list[torch.Tensor], process_group=None, split: bool = True,
               what: str = "eigendecompositions") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``safe_eigh`` of each symmetric matrix, the same on every rank.

    ``split=True``: each matrix is decomposed by one owner rank (``assign_owners``) and the results
    broadcast (one broadcast per owner), so R ranks share the O(n³) work. ``split=False``: every rank
    decomposes every matrix itself (no communication; identical when the ranks run the same
    hardware and libraries, as the inputs are identical).
    """
    group = active_group(process_group)
    world = 1 if group is None else _dist().get_world_size(group)
    if world == 1 or not split:
        return [safe_eigh(m) for m in mats]
    me = _dist().get_rank(group)
    owner = assign_owners([m.shape[0] for m in mats], world)
    result: list = [None] * len(mats)
    for i, m in enumerate(mats):
        if owner[i] == me:
            result[i] = safe_eigh(m)
    for r in range(world):
        mine = [i for i in range(len(mats)) if owner[i] == r]
        if not mine:
            continue
        parts = []
        for i in mine:
            if result[i] is None:
                n = mats[i].shape[0]
                result[i] = (mats[i].new_empty(n), mats[i].new_empty(n, n))
            parts += list(result[i])
        got = broadcast_tensors(parts, group, src=r, what=what)
        for j, i in enumerate(mine):
            result[i] = (got[2 * j], got[2 * j + 1])
    return result


def top_eigenpairs(m: torch.Tensor, k: int, process_group=None) -> list[torch.Tensor]:
    """The k largest eigenpairs (descending) of a symmetric PSD matrix: [values (k), vectors (n×k)].

    Distributed, rank 0 decomposes and broadcasts them (n·k + k numbers); the other ranks wait
    instead of repeating the O(n³) work.
    """
    group = active_group(process_group)
    if group is None or _dist().get_world_size(group) == 1 or _dist().get_rank(group) == 0:
        vals, vecs = safe_eigh(m)
        top = [vals.flip(0)[:k].contiguous(), vecs.flip(1)[:, :k].contiguous()]
    else:
        top = [m.new_empty(k), m.new_empty(m.shape[0], k)]
    return broadcast_tensors(top, group, 0, "lowrank eigendecomposition")


def rank_seed(seed: int, process_group=None) -> int:
    """A seed for this rank derived from a shared one (distinct ranks draw independent labels)."""
    if world_size(process_group) == 1:
        return seed
    digest = hashlib.blake2b(f"{int(seed)}:{rank(process_group)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def rank_generator(generator: torch.Generator | None, process_group=None) -> torch.Generator | None:
    """Distributed ``kind="mc"``: a generator for this rank, seeded from ``generator`` and the rank.

    Without it, ranks given the same seed would sample the labels of their different points from
    the same random stream. Single-process, ``generator`` is returned unchanged.
    """
    if generator is None or world_size(process_group) == 1:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    g = torch.Generator(device=generator.device)
    g.manual_seed(rank_seed(seed, process_group))
    return g


def linalg_ops(process_group=None):
    """The decompositions a curvature accumulator's ``finish`` needs, shared over the group:
    eigendecompositions split over the ranks and broadcast, top eigenpairs by rank 0 (local when
    not distributed)."""
    from ..curvature.accumulator import LOCAL, LinalgOps

    if world_size(process_group) == 1:
        return LOCAL
    return LinalgOps(eigh=lambda mats: eigh_split(mats, process_group),
                     top=lambda m, k: top_eigenpairs(m, k, process_group))


class DistributedImplicit(Implicit):
    """An ``Implicit`` Fisher whose products all-reduce over a process group.

    ``mv`` and ``solve`` (conjugate gradients) stay in lockstep by themselves: every product is a
    collective and returns the same vector on every rank. ``eig`` (Lanczos) is driven by rank 0:
    each product it needs is broadcast to the other ranks, which compute their share of it; the
    eigenpairs are then broadcast, so no rank depends on ARPACK behaving identically elsewhere.
    """

    group = None

    @classmethod
    def wrap(cls, imp: Implicit, process_group=None) -> Implicit:
        group = active_group(process_group)
        if group is None or _dist().get_world_size(group) == 1:
            return imp
        obj = cls(imp.info, imp.num_samples, imp.kind, imp.likelihood, None, imp.dtype, imp.device, imp._terms)
        obj.group = group
        return obj

    def __add__(self, other):
        return DistributedImplicit.wrap(super().__add__(other), self.group)

    def __mul__(self, a):
        return DistributedImplicit.wrap(super().__mul__(a), self.group)

    __rmul__ = __mul__

    def eig(self, k=None):
        k = self._k(k)
        group, p = self.group, self.info.size
        me = _dist().get_rank(group)
        what = "Lanczos eigendecomposition"
        if me == 0:
            leader = _Leader(self)
            try:
                vals, vecs = Implicit.eig(leader, k)
            except BaseException:
                leader.signal(-1.0)
                raise
            leader.signal(0.0)
        else:
            buf = torch.empty(p + 1, dtype=self.dtype, device=self.device)
            while True:
                (buf,) = broadcast_tensors([buf], group, 0, what)
                flag = float(buf[0])
                if flag == 0.0:
                    break
                if flag < 0:
                    raise DistributedError(f"rank 0 failed during the {what}; see its output")
                self.mv(buf[1:].clone())
            vals, vecs = torch.empty(k, dtype=self.dtype, device=self.device), torch.empty(
                p, k, dtype=self.dtype, device=self.device)
        vals, vecs = broadcast_tensors([vals.contiguous(), vecs.contiguous()], group, 0, what)
        return vals, vecs


class _Leader(Implicit):
    """Rank 0's view during ``DistributedImplicit.eig``: announces each product to the followers."""

    def __init__(self, op: DistributedImplicit):
        super().__init__(op.info, op.num_samples, op.kind, op.likelihood, None, op.dtype, op.device, op._terms)
        self.op = op

    def signal(self, flag: float, v: torch.Tensor | None = None) -> None:
        buf = torch.zeros(self.info.size + 1, dtype=self.dtype, device=self.device)
        buf[0] = flag
        if v is not None:
            buf[1:] = v
        broadcast_tensors([buf], self.op.group, 0, "Lanczos eigendecomposition")

    def mv(self, v):
        self.signal(1.0, v)
        return super().mv(v)


__all__ = ["DistributedError", "DistributedImplicit", "active_group", "all_reduce_sums", "announce_failure",
           "assign_owners", "broadcast_tensors", "linalg_ops", "distribute_optimizer", "eigh_split", "local_batches", "rank", "rank_generator",
           "rank_seed", "reset_traffic", "tensor_digest", "top_eigenpairs", "traffic", "world_size"]

from .optim import distribute_optimizer  # noqa: E402  (uses the collectives above)
