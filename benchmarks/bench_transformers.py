"""The costs quoted in docs/transformers.md: EWC in a HuggingFace ``Trainer``, and the Fisher of a LoRA adapter.

One command, from the repository root (the ``[hf]`` extra: transformers and peft)::

    python benchmarks/bench_transformers.py                      # 64 sequences, 3 interleaved rounds
    python benchmarks/bench_transformers.py --quick              # 32 sequences, 2 rounds
    python benchmarks/bench_transformers.py --markdown docs/transformers.md   # also rewrite the table there

Model: HuggingFace ``GPT2LMHeadModel`` of the M5 size (4 layers, d = 256, 8 heads, context 128, tied LM head,
dropout 0) from a random ``GPT2Config``; data: windows of 128 characters of the offline text of
``ngd_tasks`` (the standard library's own source) as HF rows, ``labels = input_ids`` (the model and the
Fisher shift them: ``shift_labels=True``); batch 8; one thread. Every figure is a ratio to a baseline timed
in the same round, the rounds interleaved (the machine is shared):

* **Trainer + EWCCallback ÷ Trainer**: ``trainer.train()`` over the same rows (one epoch, AdamW), from the
  same weights, with and without ``EWCCallback(ewc)`` (``ewc`` consolidated on other text, diagonal mc);
* **EWC consolidate ÷ epoch**: ``ewc.consolidate`` (the diagonal mc Fisher of all the rows) ÷ a plain
  forward + backward epoch over them;
* **LoRA Fisher ÷ LoRA epoch**: ``fk.fisher`` of a ``peft`` LoRA model (r = 8 on ``c_attn`` and ``c_proj``:
  only the adapters are trainable) ÷ a plain forward + backward epoch of that LoRA model.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import M5_BATCH, char_windows, hf_gpt2  # noqa: E402

import fisherkit as fk  # noqa: E402

START, END = "<!-- bench-transformers:start -->", "<!-- bench-transformers:end -->"


def rows_of(X):
    return [{"input_ids": x, "labels": x} for x in X]


def loader(rows):
    return torch.utils.data.DataLoader(rows, batch_size=M5_BATCH)


def plain_epoch(model, rows):
    """Forward + backward of HF's own token-mean loss per batch; gradients discarded."""
    for b in loader(rows):
        model.zero_grad(set_to_none=True)
        model(**b).loss.backward()
    model.zero_grad(set_to_none=True)


def trainer_epoch(model, rows, callbacks, outdir):
    import transformers

    args = transformers.TrainingArguments(output_dir=outdir, num_train_epochs=1, per_device_train_batch_size=M5_BATCH,
                                          learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, logging_strategy="no", dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(n, rounds, log):
    import peft

    from fisherkit.integrations.transformers import EWCCallback

    torch.set_num_threads(1)
    X, _, vocab = char_windows(n, seed=0)
    X_old, _, _ = char_windows(n, seed=1)
    new, old = rows_of(X), rows_of(X_old)
    torch.manual_seed(0)
    model = hf_gpt2(vocab)
    start = copy.deepcopy(model.state_dict())
    P = sum(p.numel() for p in model.parameters())
    log(f"HF GPT2LMHeadModel {P:,} parameters (4 layers, d=256, 8 heads), {n} sequences of 128 characters, "
        f"batch {M5_BATCH}, vocabulary {vocab}; {rounds} interleaved rounds")

    ewc = fk.continual.EWC(model, lam=1e3, kind="mc", fisher_options={"shift_labels": True})
    ewc.consolidate(loader(old), generator=torch.Generator().manual_seed(0))
    res = {"trainer": [], "consolidate": [], "lora": {}}
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=8, target_modules=["c_attn", "c_proj"],
                                                                      fan_in_fan_out=True, lora_dropout=0.0))
    lora.eval()
    lora_params = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    lora_methods = {"diag mc": dict(kind="mc", structure="diag"), "diag empirical": dict(kind="empirical", structure="diag"),
                    "kfac mc": dict(kind="mc", structure="kfac")}
    with tempfile.TemporaryDirectory() as out:
        # warm-up: the Trainer's first run imports and builds its machinery (accelerate, the optimizer)
        trainer_epoch(model, new[:M5_BATCH], [EWCCallback(ewc)], out)
        for r in range(rounds):
            # 1. Trainer epoch with / without the EWC callback, from the same weights (order alternates)
            pair = {}
            for with_ewc in ((False, True) if r % 2 == 0 else (True, False)):
                model.load_state_dict(start)
                pair[with_ewc] = trainer_epoch(model, new, [EWCCallback(ewc)] if with_ewc else [], out)
            res["trainer"].append(dict(plain=pair[False], ewc=pair[True], ratio=pair[True] / pair[False]))
            model.load_state_dict(start)
            model.eval()
            # 2. EWC consolidate (diagonal mc Fisher of the rows) vs a plain epoch
            te, _ = timed(lambda: plain_epoch(model, new))
            probe = fk.continual.EWC(model, lam=1e3, kind="mc", fisher_options={"shift_labels": True})
            tc, _ = timed(lambda: probe.consolidate(loader(new), generator=torch.Generator().manual_seed(r)))
            res["consolidate"].append(dict(epoch=te, consolidate=tc, ratio=tc / te))
            # 3. the Fisher of the LoRA adapters vs a plain epoch of the LoRA model
            for label, kw in lora_methods.items():
                te, _ = timed(lambda: plain_epoch(lora, new))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tf, F = timed(lambda: fk.fisher(lora, loader(new), shift_labels=True,
                                                    generator=torch.Generator().manual_seed(r), **kw))
                res["lora"].setdefault(label, []).append(dict(epoch=te, fisher=tf, ratio=tf / te,
                                                              params=F.info.size))
            log(f"  round {r + 1}: trainer+EWC / trainer {res['trainer'][-1]['ratio']:.2f}, consolidate / epoch "
                f"{res['consolidate'][-1]['ratio']:.2f}, LoRA " + ", ".join(
                    f"{k} {v[-1]['ratio']:.2f}" for k, v in res["lora"].items()))
    med = lambda rows, k="ratio": statistics.median(x[k] for x in rows)  # noqa: E731
    summary = dict(
        trainer_ewc_over_plain=med(res["trainer"]), trainer_plain_seconds=med(res["trainer"], "plain"),
        consolidate_over_epoch=med(res["consolidate"]), epoch_seconds=med(res["consolidate"], "epoch"),
        lora_params=lora_params, lora={k: dict(ratio=med(v), seconds=med(v, "fisher"), epoch=med(v, "epoch"))
                                       for k, v in res["lora"].items()})
    return dict(params=P, vocab=vocab, sequences=n, rounds=rounds, raw=res, summary=summary)


def markdown(rep):
    s, m = rep["summary"], rep["machine"]
    lines = [f"Measured {m['date']} (`python benchmarks/bench_transformers.py{' --quick' if rep['quick'] else ''}`, "
             f"{m['cpu']}, 1 thread, load average {m['load']}; torch {m['torch']}, transformers {m['transformers']}, "
             f"peft {m['peft']}): HF GPT-2 of {rep['params']:,} parameters (4 layers, d = 256, context 128), "
             f"{rep['sequences']} sequences, batch 8, median of {rep['rounds']} interleaved rounds.", "",
             "| what | ÷ what | ratio |", "|---|---|---:|",
             f"| Trainer epoch with `EWCCallback` (diagonal mc EWC) | the same Trainer epoch without it "
             f"({s['trainer_plain_seconds']:.1f} s) | {s['trainer_ewc_over_plain']:.2f} |",
             f"| `ewc.consolidate` (diagonal mc Fisher of the same sequences) | a plain forward + backward epoch "
             f"({s['epoch_seconds']:.1f} s) | {s['consolidate_over_epoch']:.2f} |"]
    for k, v in s["lora"].items():
        lines.append(f"| Fisher of the LoRA adapters ({s['lora_params']:,} parameters), {k} | a plain forward + "
                     f"backward epoch of the LoRA model ({v['epoch']:.1f} s) | {v['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="32 sequences, 2 rounds")
    p.add_argument("--sequences", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "results" / "bench_transformers.json"))
    p.add_argument("--markdown", default=None, help="rewrite the block between the bench-transformers markers")
    a = p.parse_args(argv)
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    n = a.sequences or (32 if a.quick else 64)
    rounds = a.rounds or (2 if a.quick else 3)
    rep = run(n, rounds, lambda s: print(s, flush=True))
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    rep.update(quick=a.quick, machine=dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), cpu=cpu,
        load=" / ".join(f"{x:.1f}" for x in os.getloadavg()), torch=torch.__version__,
        transformers=transformers.__version__, peft=peft.__version__))
    print(markdown(rep))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))
    print(f"wrote {out}")
    if a.markdown:
        path = Path(a.markdown)
        text = path.read_text()
        block = f"{START}\n{markdown(rep)}\n{END}"
        if START in text:
            text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text += "\n" + block + "\n"
        path.write_text(text)
        print(f"wrote the table into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
