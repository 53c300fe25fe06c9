"""How much memory a structure needs, known before any data is read, and the refusal of what cannot fit.

Each structure's accumulator states its peak in floats (``Accumulator.storage``: the running sums and
the finished matrix), from the parameter plan alone:

=========  ==============================================================
diag       2P
kfac       2 Σ_layers (I² + O²) + the other parameters' blocks
ekfac      2 Σ_layers (2(I² + O²) + I·O) + the other parameters' blocks
block      2 Σ_groups g² (a group above 8,192 parameters: g)
dense      2P²
lowrank    2P² + P·k while the Gram fits, else Lanczos: (k + 4)·P
implicit   4P (a few P-vectors; the matrix is never formed)
=========  ==============================================================

times the accumulation dtype's size (float32 for 16-bit models). The working set of one batch (layer
inputs and D output gradients) is bounded separately by ``max_memory`` chunks.
"""

from __future__ import annotations

import torch

from ..errors import FisherkitError

HEADROOM = 0.9  # refuse when the estimate exceeds this share of the memory available now
CHEAPER = ("diag", "kfac", "lowrank", "implicit", "ekfac", "block", "dense")  # suggestion order


def itemsize(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4


def storage_bytes(plan, structure: str, dtype: torch.dtype, options: dict) -> int:
    """Peak bytes of the curvature ``structure`` over ``plan``'s parameters (see the table above)."""
    from . import STRUCTURES
    from .dense import dense_fits

    p = plan.info.size
    if structure == "implicit":
        floats = 4 * p
    elif structure == "lowrank" and not dense_fits(plan.info, dtype, options.get("max_memory", 2**30)):
        floats = (min(int(options.get("rank", 20)), p) + 4) * p
    else:
        floats = STRUCTURES[structure].accumulator.storage(plan, options)
    return int(floats) * itemsize(dtype)


def available_bytes(device: torch.device) -> int | None:
    """Memory available now on ``device`` (CUDA: free device memory; CPU: the kernel's MemAvailable),
    or None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # noqa: BLE001 - no driver information: no check
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def check_fits(plan, structure: str, dtype: torch.dtype, device, options: dict, available: int | None = None) -> int:
    """The estimate for ``structure``; raises FisherkitError (with the numbers and the structures that do
    fit) when it exceeds HEADROOM of the memory available on ``device``. Nothing is allocated."""
    need = storage_bytes(plan, structure, dtype, options)
    free = available_bytes(device) if available is None else available
    if free is None or need <= HEADROOM * free:
        return need
    others = []
    for s in CHEAPER:
        if s == structure:
            continue
        b = storage_bytes(plan, s, dtype, options)
        if b <= HEADROOM * free:
            others.append(f"{s!r} ({gib(b)})")
    hint = (("use structure=" + " or ".join(others[:3]) + ", or take fewer parameters with params=") if others
            else "no structure fits: take fewer parameters with params=")
    raise FisherkitError(
        f"structure={structure!r} over {plan.info.size:,} parameters needs about {gib(need)} "
        f"({torch.finfo(dtype).bits}-bit statistics) but {gib(free)} is available on {torch.device(device)}; {hint}"
    )


def estimate(plan, dtype: torch.dtype, options: dict) -> dict[str, int]:
    """Peak bytes of every structure over ``plan``'s parameters."""
    return {s: storage_bytes(plan, s, dtype, options) for s in CHEAPER}
