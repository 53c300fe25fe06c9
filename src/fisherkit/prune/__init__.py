"""Pruning with the Fisher: Optimal Brain Damage, WoodFisher, KFAC-OBS, and magnitude as the baseline.

    pruned = fk.prune.prune(net, (X, y), sparsity=0.9, method="kfac")
    with fk.prune.keep_masked(pruned, optimizer):   # masks stay applied while fine-tuning
        train(pruned)
"""

from ._checks import METHODS, SCOPES, PruneError
from .core import allocate, compute_fisher, prune, prune_once
from .masks import apply_masks, keep_masked, masks, sparsity
from .obs import greedy, obs_set, obs_single, replay

__all__ = ["prune", "prune_once", "compute_fisher", "allocate", "masks", "apply_masks", "keep_masked", "sparsity",
           "obs_single", "obs_set", "greedy", "replay", "METHODS", "SCOPES", "PruneError"]
