"""The one small training loop the studies share: Adam on cross-entropy over seeded shuffles."""

from __future__ import annotations

import torch
from torch import nn


def train_classifier(model, X, y, epochs, lr=1e-3, batch=64, seed=0, weight_decay=0.0, guard=None, on_epoch=None):
    """``epochs`` passes of Adam (``lr``, ``weight_decay``) over shuffles drawn from ``seed``'s own
    generator (the global RNG is untouched); ``guard(model, opt)`` may return a handle removed at the
    end (e.g. ``prune.keep_masked``, which keeps masks applied); ``on_epoch(model, opt, epoch)`` runs
    after each epoch (a validation, a change of ``opt``'s hyper-parameters), and the model's training
    mode is put back after it. Returns the model."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    handle = guard(model, opt) if guard else None
    mode = model.training
    for ep in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for s in range(0, len(X), batch):
            idx = perm[s : s + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(model, opt, ep)
            model.train(mode)
    if handle:
        handle.remove()
    return model
