"""All-reduce of curvature statistics over ``torch.distributed`` (no home-made networking).

Every structure is built from *sums* over samples plus a sample count; summing both over ranks and
dividing afterwards gives exactly the Fisher of the union of the shards, whatever their sizes.
"""

from __future__ import annotations

import torch


def active_group(process_group=None):
    """The process group to reduce over, or None when not running distributed."""
    if process_group is not None:
        return process_group
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.group.WORLD
    return None


def world_size(process_group=None) -> int:
    group = active_group(process_group)
    return 1 if group is None else torch.distributed.get_world_size(group)


def all_reduce_sums(sums: dict[str, torch.Tensor], count: int, process_group=None) -> tuple[dict[str, torch.Tensor], int]:
    """Sum every tensor in ``sums`` and the sample ``count`` over all ranks (in place for the tensors)."""
    group = active_group(process_group)
    if group is None:
        return sums, count
    for key in sorted(sums):  # same order on every rank
        torch.distributed.all_reduce(sums[key], op=torch.distributed.ReduceOp.SUM, group=group)
    n = torch.tensor([float(count)], dtype=torch.float64, device=next(iter(sums.values())).device if sums else "cpu")
    torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.SUM, group=group)
    return sums, int(round(float(n.item())))
