"""The tutorial's flow on one checkpoint: print the model, generate text, then compare the fp32 model
with the tutorial's dynamic int8 model on size, loss and single-thread evaluation time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wordlm.checkpoint import Checkpoint, load_checkpoint
from wordlm.config import preset
from wordlm.data import load_corpus, load_split, prefix
from wordlm.engines import load_engine
from wordlm.errors import WordLMError, require
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.tasks import evaluate
from wordlm.tasks.generate import generate_text

torch = require("torch", "torch")  # the demo compares with the tutorial's torch paths

from wordlm.train.model import RecurrentLM, build_model, checkpoint_tensors  # noqa: E402


def untrained_tutorial_checkpoint(seed: int = 0) -> Checkpoint:
    """The tutorial's architecture with fresh weights, over the bundled WikiText-2 vocabulary."""
    vocab = load_corpus().vocab
    torch.manual_seed(seed)
    model = RecurrentLM(preset("tutorial", len(vocab)))
    return Checkpoint(model.cfg, vocab, checkpoint_tensors(model), meta={"note": "untrained"})


def run_demo(path: Path | None, max_tokens: int | None = 20000, words: int = 60, seed: int = 0) -> list[dict]:
    """`path=None`: no trained model is available, so run on an untrained tutorial-architecture model
    (sizes and speeds are real; text and loss are an untrained model's) and say so."""
    console = Console(width=None if sys.stdout.isatty() else 120)  # pipes and CI logs: no squeezed table
    ckpt = load_checkpoint(path) if path is not None else untrained_tutorial_checkpoint(seed)
    console.rule(f"[bold]wordlm demo: {path or 'untrained tutorial-architecture model'}")
    console.print(build_model(ckpt))
    if ckpt.meta.get("val_loss") is None and ckpt.meta.get("imported_from") is None:
        console.print(
            "[yellow]note: no trained model here (see README: the default model); "
            "expect an untrained model's text and loss"
        )

    engines = [load_engine(name, ckpt, threads=1) for name in ("torch", "torch-dynamic")]
    try:  # and what wordlm makes of it; needs onnxruntime (the `onnx` extra)
        engines.append(load_engine("wordlm", quantize_checkpoint(ckpt, get_scheme("int8")), threads=1))
    except WordLMError as e:
        console.print(f"[yellow]wordlm-int8 row skipped: {e}")
    console.rule(f"{words} words sampled by the fp32 model (temperature 1.0, seed {seed})")
    console.print("".join(generate_text(engines[0], ckpt.vocab, words, seed=seed)), highlight=False)

    ids = load_split(ckpt.vocab, "test")
    ids = prefix(ids, max_tokens)
    console.rule(f"test split, {len(ids):,} tokens, bptt 25, batch 1, 1 thread")
    rows = []
    for engine in engines:
        res = evaluate(engine, ids, bptt=25, batch_size=1, progress=True, warmup=True)
        rows.append({"engine": engine.name, "size_bytes": engine.size_bytes, **res.to_dict()})
    base = rows[0]
    table = Table("engine", "size (MB)", "loss", "ppl", "seconds", "tokens/s", "size ratio", "speed-up")
    for r in rows:
        table.add_row(
            r["engine"],
            f"{r['size_bytes'] / 1e6:.1f}",
            f"{r['loss']:.4f}",
            f"{r['ppl']:.1f}",
            f"{r['seconds']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['size_bytes'] / base['size_bytes']:.2f}x",
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
        )
    console.print(table)
    console.print(
        "size: the tutorial's measure, torch.save(state_dict), for torch and torch-dynamic; the quantized "
        "checkpoint's model.safetensors for wordlm-int8. `wordlm bench` compares every engine."
    )
    console.print("tutorial (MacBook Pro): fp32 113.9 MB, loss 5.167, 188.6 s; int8 79.7 MB, loss 5.168, 106.2 s")
    return rows
