"""Models, data, timing and memory helpers shared by the Fisher benchmark.

Every number the benchmark reports is a *ratio* to a plain forward + backward epoch timed in the
same process, because the machines we run on are shared and absolute times drift by ±25 %.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time

import torch
from torch import nn

BATCH = 128
CLASSES = 10


class TransformerClassifier(nn.Module):
    """M4: token embedding + learned positions → 2-layer TransformerEncoder (d=128, 4 heads) → mean → Linear."""

    def __init__(self, vocab: int = 100, length: int = 32, d: int = 128, heads: int = 4, layers: int = 2,
                 classes: int = CLASSES):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(length, d))
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.encoder(h).mean(1))


class DecoderBlock(nn.Module):
    """GPT-2's block in plain PyTorch: pre-norm causal self-attention with ``nn.Linear`` q/k/v/out, GELU MLP (4d)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, d = x.shape
        h = self.ln_1(x)
        q, k, v = (m(h).reshape(B, T, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(B, T, d))
        return x + self.proj(nn.functional.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class Decoder(nn.Module):
    """M5: a GPT-2-style causal decoder in plain PyTorch (token + position ``nn.Embedding``, blocks, final
    LayerNorm, an untied ``nn.Linear`` LM head) returning logits [B, T, V]."""

    def __init__(self, vocab: int, d: int = 256, heads: int = 8, layers: int = 4, context: int = 128):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.h = nn.Sequential(*[DecoderBlock(d, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab)
        for m in self.modules():  # GPT-2's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(self, tokens):
        h = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        return self.lm_head(self.ln_f(self.h(h)))


M5_CONTEXT, M5_BATCH = 128, 8


def hf_gpt2(vocab: int, d: int = 256, heads: int = 8, layers: int = 4, context: int = M5_CONTEXT):
    """M5-HF: HuggingFace ``GPT2LMHeadModel`` from a random ``GPT2Config`` of M5's size (tied LM head,
    ``Conv1D`` projections, eager attention, no dropout); returns logits [B, T, V] through ``output="logits"``."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=context, n_embd=d, n_layer=layers, n_head=heads,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def char_windows(n: int, seed: int = 0, context: int = M5_CONTEXT):
    """``n`` random windows of the offline character-level text (``ngd_tasks``: the standard library's own
    source): inputs [n, context] and the next characters [n, context] as labels; and the vocabulary size."""
    from ngd_tasks import _text

    train, _, vocab = _text()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - context - 1, (n,), generator=g)
    w = train[starts[:, None] + torch.arange(context + 1)]
    return w[:, :-1].contiguous(), w[:, 1:].contiguous(), vocab


def _digits(n: int | None):
    from fisherkit.datasets import load

    s = load("digits", test_size=0.25, seed=0, standardize=True)
    X = torch.cat([s.X_train, s.X_test]).float()
    y = torch.cat([s.y_train, s.y_test]).long()
    return (X[:n], y[:n]) if n else (X, y)


def build(name: str, n: int | None = None, seed: int = 0):
    """(model, X, y) for M1–M5 (float32, eval mode). ``n`` overrides the number of samples (quick runs).

    M5 / M5hf are causal LMs on the offline character text: X the tokens [n, 128], y the next tokens."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    if name == "M1":
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES))
        X, y = _digits(n)
    elif name == "M2":
        n = n or 4096
        model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, CLASSES))
        X = torch.randn(n, 784, generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
    elif name == "M3":
        n = n or 2048
        model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(32 * 24 * 24, CLASSES))
        X = torch.randn(n, 1, 28, 28, generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
    elif name == "M4":
        n = n or 1024
        model = TransformerClassifier()
        X = torch.randint(0, 100, (n, 32), generator=g)
        y = torch.randint(0, CLASSES, (n,), generator=g)
    elif name in ("M5", "M5hf"):
        X, y, vocab = char_windows(n or 128, seed)
        torch.manual_seed(seed)
        model = Decoder(vocab) if name == "M5" else hf_gpt2(vocab)
    else:
        raise ValueError(f"unknown model {name!r}; use M1, M2, M3, M4, M5 or M5hf")
    return model.float().eval(), X, y


def big_mlp(seed: int = 0) -> nn.Module:
    """The ~10M-parameter MLP of the streaming check: 784-3000-2500-10 (9.9M parameters)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 3000), nn.ReLU(), nn.Linear(3000, 2500), nn.ReLU(), nn.Linear(2500, CLASSES))


def batch_size(name: str) -> int:
    """Batch 8 sequences of 128 tokens for the decoders (M5), 128 samples otherwise."""
    return M5_BATCH if name.startswith("M5") else BATCH


def logits_of(out):
    """The logits of a model output (HF ``ModelOutput`` → ``.logits``)."""
    return out if isinstance(out, torch.Tensor) else out["logits"]


def batches(X, y, bs: int = BATCH):
    return [(X[s : s + bs], y[s : s + bs]) for s in range(0, X.shape[0], bs)]


def plain_epoch(model, data):
    """The cost floor: one forward + backward (mean cross-entropy, over tokens for [B, T, V] logits) per
    batch, gradients discarded."""
    loss_fn = nn.CrossEntropyLoss()
    for x, y in data:
        model.zero_grad(set_to_none=True)
        f = logits_of(model(x))
        loss_fn(f.reshape(-1, f.shape[-1]), y.reshape(-1)).backward()
    model.zero_grad(set_to_none=True)


def median_time(fn, repeats: int = 3, warmup: int = 1, slow: float = 5.0) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs; also its last result.

    A method whose warm-up took longer than ``slow`` seconds is not run again: that run is its time.
    """
    out = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t0
        if took > slow:  # start-up effects are negligible next to this: the warm-up run is the measurement
            return took, out
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def paired_time(fn, epoch_fn, repeats: int = 3, slow: float = 5.0) -> tuple[float, float, object]:
    """(median time of ``fn``, median ratio to an epoch timed right before each run, last result).

    One untimed warm-up of ``fn`` first; if it took longer than ``slow`` seconds it is the measurement.
    Pairing each run with its own epoch keeps the ratio honest when the machine's load drifts.
    """
    t0 = time.perf_counter()
    out = fn()
    took = time.perf_counter() - t0
    if took > slow:
        te, _ = median_time(epoch_fn, 1, 0)
        return took, took / te, out
    times, ratios = [], []
    for _ in range(repeats):
        gc.collect()
        te, _ = median_time(epoch_fn, 1, 0)
        t, out = median_time(fn, 1, 0)
        times.append(t)
        ratios.append(t / te)
    return statistics.median(times), statistics.median(ratios), out


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """High-water mark of the resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))
