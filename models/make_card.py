"""Ship a trained run as models/wikitext2-lstm: fp16 weights, evaluated in fp32, and its model card.

Run: .venv/bin/python models/make_card.py RUN_DIR --out models/wikitext2-lstm [--threads 2]

RUN_DIR is a `wordlm train --out` directory; its best/ checkpoint is stored with float16 weights
(half the bytes; every command upcasts to fp32 on load), then evaluated from those fp16 weights:
valid and test by the tutorial's protocol (bptt 25, batch 1), train in the training layout (bptt 35,
batch 20) with dropout off. Writes the checkpoint (figures in config.json's meta), README.md (the
card) and training-curve.png.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from wordlm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from wordlm.checkpoint.fileio import atomic_write  # noqa: E402
from wordlm.data import load_corpus  # noqa: E402
from wordlm.engines.torch_fp32 import TorchEngine  # noqa: E402
from wordlm.tasks import evaluate  # noqa: E402
from wordlm.train.model import build_model  # noqa: E402

TUTORIAL = {"loss": 5.167, "ppl": 175.4}  # the tutorial's pretrained model, test split


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown CPU")
    return f"{name}, {os.cpu_count()} cores"


def plot(history: list[dict], test_ppl: float, path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(epochs, [h["val_ppl"] for h in history], "o-", label="validation (bptt 35, batch 10, each epoch)")
    ax.axhline(TUTORIAL["ppl"], color="gray", ls="--", label=f"tutorial's model, test ({TUTORIAL['ppl']:.0f})")
    ax.plot(epochs[-1], test_ppl, "r*", ms=12, label=f"shipped model, test ({test_ppl:.0f})")
    for h, prev in zip(history[1:], history, strict=False):
        if h["lr"] != prev["lr"]:
            ax.annotate(f"lr {h['lr']:g}", (h["epoch"], h["val_ppl"]), textcoords="offset points", xytext=(4, 8))
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log", title="wikitext2-lstm: training curve")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, png.getvalue())


def commands(meta: dict) -> str:
    """The command lines of the run, each with where it took over."""
    logged = meta.get("commands") or [{"epoch": 1, "batch": 0, "command": meta["command"]}]
    lines = [f"from epoch {c['epoch']} batch {c['batch']}: `{c['command']}`" for c in logged]
    first = logged[0]
    if (first["epoch"], first["batch"]) != (1, 0):
        tc = meta["train_config"]
        lines.insert(
            0,
            f"from epoch 1 (not logged: the run began before wordlm logged its commands): `wordlm train --out RUN "
            f"--epochs {tc['epochs']} --save-every {tc['save_every']}`, continued with `--resume`",
        )
    return "<br>".join(lines + ["then `python models/make_card.py RUN --out models/wikitext2-lstm`"])


def card(meta: dict, res: dict, size_mb: float, note: str | None = None) -> str:
    tc, hist = meta["train_config"], meta["history"]
    hours = hist[-1]["elapsed_s"] / 3600
    rows = [
        f"| {split} | {proto} | {res[split]['loss']:.4f} | {res[split]['ppl']:.1f} | {res[split]['tokens']:,} |"
        for split, proto in (
            ("train", "bptt 35, batch 20 (the training layout), dropout off"),
            ("valid", "bptt 25, batch 1, hidden state carried (the tutorial's)"),
            ("test", "bptt 25, batch 1, hidden state carried (the tutorial's)"),
        )
    ]
    lrs = ", ".join(f"epoch {h['epoch']}: {h['lr']:g}" for h in hist)
    facts = [
        (
            "architecture",
            "the tutorial's, unchanged (wordlm preset `tutorial`): `Embedding(33278, 512)`, 5-layer LSTM "
            "512 -> 256, dropout 0.5, `Linear(256, 33278)`; 28.5 M parameters",
        ),
        (
            "weights",
            f"float16 in `model.safetensors` ({size_mb:.1f} MB); every command upcasts them to float32 on load, "
            "and every figure here is float32 arithmetic on these float16 weights",
        ),
        (
            "training",
            f"{meta['epochs']} epochs of SGD (the epoch with the best validation loss; lr by epoch: {lrs}), "
            f"clip {tc['clip']}, batch {tc['batch_size']}, bptt {tc['bptt']}, seed {tc['seed']}, init `{tc['init']}`",
        ),
        ("commands", commands(meta)),
        (
            "wall time",
            f"{hours:.1f} h of training on {meta['cpu']} ({' '.join(meta['hardware'].split())}), "
            f"torch {meta['torch']}, 1-2 CPU threads (the machine was shared with other work)",
        ),
        (
            "data",
            "WikiText-2 (Merity et al. 2016, https://arxiv.org/abs/1609.07843), bundled with wordlm; text from "
            "Wikipedia under CC BY-SA 3.0",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in facts)
    return f"""# wikitext2-lstm

The PyTorch tutorial's word-level LSTM language model, trained from scratch by `wordlm train` on
WikiText-2. It is wordlm's default model: every command uses it when no checkpoint is named.

| | |
|---|---|
{table}

## Loss and perplexity

| split | protocol | loss (nats) | perplexity | tokens |
|---|---|---|---|---|
{chr(10).join(rows)}

The tutorial's pretrained model: test loss {TUTORIAL["loss"]} (perplexity {TUTORIAL["ppl"]:.0f}) by the same
protocol. Reproduce the test figure with `wordlm eval --threads 1` (the default model, the whole test
split).

![validation perplexity per epoch](training-curve.png)
{f"{chr(10)}## Notes{chr(10)}{chr(10)}{note}{chr(10)}" if note else ""}
## License

The weights are derived from WikiText-2 (CC BY-SA 3.0); they are distributed under the same terms,
with this attribution. The code that trained them is wordlm's (BSD-3-Clause).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", help="the corpus the run was trained on (default: the bundled WikiText-2)")
    ap.add_argument("--note", help="a Notes section for the card: what the run's own records do not say")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    best = load_checkpoint(args.run / "best")
    half = replace(best, tensors={k: v.astype("float16") for k, v in best.tensors.items()})
    engine = TorchEngine(build_model(half))  # float32, from the float16 weights
    corpus = load_corpus(args.data)
    res = {
        "valid": evaluate(engine, corpus.valid, bptt=25, batch_size=1, progress=True),
        "test": evaluate(engine, corpus.test, bptt=25, batch_size=1, progress=True),
        "train": evaluate(engine, corpus.train, bptt=35, batch_size=20, progress=True),
    }
    res = {k: {"loss": r.loss, "ppl": math.exp(r.loss), "tokens": r.tokens} for k, r in res.items()}
    meta = {**best.meta, "stored_dtype": "float16", "eval": res, "platform": platform.platform(), "cpu": cpu_name()}
    save_checkpoint(replace(half, meta=meta), args.out)
    size_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    plot(meta["history"], res["test"]["ppl"], args.out / "training-curve.png")
    atomic_write(args.out / "README.md", card(meta, res, size_mb, args.note))
    print({k: round(v["loss"], 4) for k, v in res.items()}, f"{size_mb:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
