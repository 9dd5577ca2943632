"""The tutorial's flow on one checkpoint: print the model, generate text, then compare the fp32 model
with the tutorial's dynamic int8 model on size, loss and single-thread evaluation time.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from wordlm.checkpoint import build_model, load_checkpoint
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.evaluate import evaluate
from wordlm.generate import generate_text


def run_demo(path: Path, max_tokens: int | None = 20000, words: int = 60, seed: int = 0) -> list[dict]:
    console = Console()
    ckpt = load_checkpoint(path)
    console.rule(f"[bold]wordlm demo: {path}")
    console.print(build_model(ckpt))
    if ckpt.meta.get("val_loss") is None and ckpt.meta.get("imported_from") is None:
        console.print("[yellow]note: this checkpoint records no training; its text and loss are those of an untrained model")

    engines = [load_engine(name, ckpt, threads=1) for name in ("torch", "torch-dynamic")]
    console.rule(f"{words} words sampled by the fp32 model (temperature 1.0, seed {seed})")
    console.print("".join(generate_text(engines[0], ckpt.vocab, words, seed=seed)), highlight=False)

    ids = load_split(ckpt.vocab, "test")
    if max_tokens is not None:
        ids = ids[:max_tokens]
    console.rule(f"test split, {ids.numel():,} tokens, bptt 25, batch 1, 1 thread")
    rows = []
    for engine in engines:
        res = evaluate(engine, ids, bptt=25, batch_size=1, progress=True)
        rows.append({"engine": engine.name, "size_bytes": engine.size_bytes, **res.to_dict()})
    base = rows[0]
    table = Table("engine", "state_dict size (MB)", "loss", "ppl", "seconds", "tokens/s", "size ratio", "speed-up")
    for r in rows:
        table.add_row(
            r["engine"], f"{r['size_bytes'] / 1e6:.1f}", f"{r['loss']:.4f}", f"{r['ppl']:.1f}",
            f"{r['seconds']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['size_bytes'] / base['size_bytes']:.2f}x",
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x",
        )
    console.print(table)
    console.print("tutorial (MacBook Pro): fp32 113.9 MB, loss 5.167, 188.6 s; int8 79.7 MB, loss 5.168, 106.2 s")
    return rows
