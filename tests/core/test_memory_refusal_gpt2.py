"""GPT-2 small (124M parameters, ``transformers.GPT2Config()`` defaults, random init) asks for a dense Fisher:
refused with a ``FisherkitError`` that gives the numbers and a cheaper structure, before the data is read and
before anything of the Fisher's size is allocated (issue 14, memory)."""

from __future__ import annotations

import resource

import pytest
import torch

import fisherkit as fk
from fisherkit.errors import FisherkitError

transformers = pytest.importorskip("transformers")

GPT2_SMALL = 124_439_808  # parameters of GPT2LMHeadModel(GPT2Config()), the LM head tied to the embedding


def _data(read):
    """One batch of token ids; records whether fisher() ever read it."""
    ids = torch.zeros(1, 8, dtype=torch.long)
    read.append(True)
    yield {"input_ids": ids, "labels": ids}


def _check_refusal(model):
    P = sum(p.numel() for p in model.parameters())
    assert P == GPT2_SMALL
    read: list[bool] = []
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(FisherkitError) as info:
        fk.fisher(model, _data(read), structure="dense", output="logits")
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    msg = str(info.value)
    assert not read, "the data was read before the refusal"
    assert grew < 256 * 2**20, f"the process peak grew by {grew / 2**20:.0f} MiB before refusing"
    # the numbers: the parameter count, the memory it would take (P² float32 = 57,687,110 GiB) and the limit
    assert str(P) in msg.replace(",", "")
    need = P**2 * 4 / 2**30
    gib = [float(t) for t in msg.replace(",", "").split() if t.replace(".", "", 1).isdigit()]
    assert any(abs(g - need) / need < 1e-3 for g in gib), msg
    assert "max_memory" in msg
    # cheaper structures suggested
    assert "structure='kfac'" in msg or "'kfac'" in msg
    assert "'diag'" in msg


def test_gpt2_small_dense_refused_on_meta_device():
    """Built on the meta device: no parameter memory at all, so any allocation of the Fisher would fail."""
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    _check_refusal(model)


@pytest.mark.slow
def test_gpt2_small_dense_refused_on_cpu():
    """The same model with real (random) float32 weights on the CPU (~500 MB)."""
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    _check_refusal(model)
