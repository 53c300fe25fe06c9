"""The training tasks of ``bench_ngd.py``: data (all offline) and model builders.

* ``mlp``  — digits (sklearn's bundled 8 × 8 images), MLP 64-128-10 (tanh), categorical;
* ``cnn``  — digits as 1 × 8 × 8 images, Conv(16)-ReLU-Conv(32)-ReLU-MaxPool-Linear, categorical;
* ``ae``   — digits autoencoder 64-32-8-32-64 (tanh), Bernoulli likelihood on binarised pixels;
* ``lm``   — a character-level causal transformer (2 blocks, d = 64, 4 heads, context 32) on the
             Python standard library's own source (``inspect.getsource`` of a few modules: training
             text from some, validation text from others). Attention projections are ``nn.Linear``
             so KFAC sees them; embeddings and LayerNorms fall back to the diagonal.

``Task.batches(seed)`` yields training mini-batches for one epoch (or, for ``lm``, a fixed number
of random windows); ``Task.val_loss(model)`` is the mean negative log-likelihood on held-out data.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn


@functools.lru_cache(maxsize=1)
def _digits():
    from fisherkit import datasets

    return datasets.load("digits", seed=0, test_size=0.25, standardize="unit", dtype=torch.float32)


# ---- models ---------------------------------------------------------------------------------
def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10))

    def forward(self, x):
        return self.body(x.reshape(-1, 1, 8, 8))


def autoencoder():
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 32), nn.Tanh(),
                         nn.Linear(32, 64))


class Block(nn.Module):
    """Pre-norm causal self-attention + MLP; q, k, v, o are plain ``nn.Linear`` layers."""

    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).reshape(B, T, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, d))
        return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))


class CharTransformer(nn.Module):
    def __init__(self, vocab, d=64, heads=4, layers=2, context=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(context, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.ln(self.blocks(h)))


# ---- text -----------------------------------------------------------------------------------
TRAIN_MODULES = ("argparse", "textwrap", "dataclasses", "functools", "json.decoder", "string", "fractions")
# the larger training text of ``lm`` (``Task.corpus="large"``, ~2.4M characters): at batch 128 the 7 modules above
# (269k characters) were seen 4.6 times in 300 steps and the validation loss plateaued from over-fitting
MORE_MODULES = ("typing", "collections", "inspect", "subprocess", "configparser", "enum", "ast", "shutil", "tempfile",
                "unittest.case", "_pydecimal", "statistics", "calendar", "random", "csv", "heapq", "locale", "gettext",
                "optparse", "pickle", "copy", "tarfile", "email.message", "http.client", "threading", "pydoc", "dis",
                "tokenize", "traceback", "urllib.parse", "mailbox", "doctest", "pdb")
VAL_MODULES = ("difflib",)
CONTEXT = 32


@functools.lru_cache(maxsize=2)
def _text(corpus="small"):
    import importlib

    def source(names):
        return "\n".join(inspect.getsource(importlib.import_module(n)) for n in names)

    train, val = source(TRAIN_MODULES + (MORE_MODULES if corpus == "large" else ())), source(VAL_MODULES)
    chars = sorted(set(c for c in train + val if 32 <= ord(c) < 127) | {"\n"})
    lookup = {c: i for i, c in enumerate(chars)}
    unk = len(chars)

    def encode(s):
        return torch.tensor([lookup.get(c, unk) for c in s], dtype=torch.long)

    return encode(train), encode(val)[:20000], unk + 1


def _windows(ids, starts):
    idx = starts[:, None] + torch.arange(CONTEXT + 1)
    w = ids[idx]
    return w[:, :-1], w[:, 1:]


# ---- tasks ----------------------------------------------------------------------------------
@dataclass
class Task:
    name: str
    likelihood: str
    build: callable
    batch_size: int
    steps_per_epoch: int | None = None  # lm: random windows per "epoch"
    corpus: str = "small"  # lm: "small" (7 modules) or "large" (40 modules) of training text

    def data(self):
        if self.name == "lm":
            train, val, _ = _text(self.corpus)
            return train, val
        s = _digits()
        if self.name == "ae":
            tb, vb = (s.X_train > 0.5).float(), (s.X_test > 0.5).float()
            return (tb, tb), (vb, vb)
        return (s.X_train, s.y_train), (s.X_test, s.y_test)

    def model(self, seed):
        torch.manual_seed(seed)
        return self.build()

    def batches(self, epoch, seed):
        g = torch.Generator().manual_seed(10_000 * seed + epoch)
        train, _ = self.data()
        if self.name == "lm":
            starts = torch.randint(0, len(train) - CONTEXT - 1, (self.steps_per_epoch * self.batch_size,), generator=g)
            for s in range(self.steps_per_epoch):
                yield _windows(train, starts[s * self.batch_size:(s + 1) * self.batch_size])
            return
        X, T = train
        perm = torch.randperm(X.shape[0], generator=g)
        for s in range(0, X.shape[0] - self.batch_size + 1, self.batch_size):  # full batches only
            idx = perm[s:s + self.batch_size]
            yield X[idx], T[idx]

    def loss(self, out, target):
        if self.likelihood == "categorical":
            return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        return nn.functional.binary_cross_entropy_with_logits(out, target, reduction="none").sum(-1).mean()

    @torch.no_grad()
    def eval_loss(self, model, which="val"):
        train, val = self.data()
        if self.name == "lm":
            ids = val if which == "val" else train[:20000]
            starts = torch.arange(0, len(ids) - CONTEXT - 1, CONTEXT)
            x, y = _windows(ids, starts)
            return float(sum(self.loss(model(x[i:i + 256]), y[i:i + 256]) * len(x[i:i + 256])
                             for i in range(0, len(x), 256)) / len(x))
        X, T = val if which == "val" else train
        return float(self.loss(model(X), T))


def lm_vocab():
    return _text()[2]


TASKS = {
    "mlp": lambda: Task("mlp", "categorical", mlp, 128),
    "cnn": lambda: Task("cnn", "categorical", DigitsCNN, 64),
    "ae": lambda: Task("ae", "bernoulli", autoencoder, 64),
    "lm": lambda: Task("lm", "categorical", lambda: CharTransformer(lm_vocab()), 32, steps_per_epoch=50),
}


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":  # sizes at a glance
    for k, make in TASKS.items():
        t = make()
        m = t.model(0)
        print(k, parameter_count(m), "params; initial val loss", round(t.eval_loss(m), 3), math.log(10))
