"""The small float64 models every core test uses (one place that builds them)."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """A custom module with a skip connection: x + W2 tanh(W1 x)."""

    def __init__(self, d):
        super().__init__()
        self.inner = nn.Linear(d, d)
        self.outer = nn.Linear(d, d)

    def forward(self, x):
        return x + self.outer(torch.tanh(self.inner(x)))


class TokenClassifier(nn.Module):
    """Embedding → LayerNorm → (attention) → per-sequence or per-token logits."""

    def __init__(self, vocab=7, d=4, classes=3, attention=False, per_token=False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.attn = (
            nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=6, dropout=0.0, batch_first=True)
            if attention
            else None
        )
        self.head = nn.Linear(d, classes)
        self.per_token = per_token

    def forward(self, tokens):
        h = self.norm(self.emb(tokens))
        if self.attn is not None:
            h = self.attn(h)
        if not self.per_token:
            h = h.mean(1)
        return self.head(h)


def make(name: str, seed: int = 0, out: int = 3):
    """Model and inputs (float64) for a named case: mlp, cnn, conv1d, residual, ln_emb, attention, tokens."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name == "mlp":
        m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out))
        X = torch.randn(9, 4, generator=g)
    elif name == "cnn":
        m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(2, 2, 2), nn.Flatten(),
                          nn.Linear(2 * 2 * 2, out))
        X = torch.randn(5, 1, 6, 6, generator=g)
    elif name == "conv1d":
        m = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4, out))
        X = torch.randn(6, 2, 6, generator=g)
    elif name == "residual":
        m = nn.Sequential(nn.Linear(3, 4), Residual(4), nn.GELU(), nn.Linear(4, out))
        X = torch.randn(7, 3, generator=g)
    elif name == "ln_emb":
        m = TokenClassifier(classes=out)
        X = torch.randint(0, 7, (6, 5), generator=g)
    elif name == "attention":
        m = TokenClassifier(classes=out, attention=True)
        X = torch.randint(0, 7, (5, 4), generator=g)
    elif name == "tokens":
        m = TokenClassifier(classes=out, per_token=True)
        X = torch.randint(0, 7, (5, 3), generator=g)
    else:
        raise ValueError(name)
    m = m.double().eval()
    return m, (X.double() if X.dtype.is_floating_point else X)


def labels(model, X, likelihood, seed=0):
    """Labels of the right type for a likelihood, drawn with a seed."""
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        f = model(X)
    if likelihood == "categorical":
        return torch.randint(0, f.shape[-1], f.shape[:-1], generator=g)
    if likelihood == "gaussian":
        return torch.randn(f.shape, generator=g, dtype=f.dtype)
    return (torch.rand(f.shape, generator=g, dtype=f.dtype) < 0.5).to(f.dtype)
