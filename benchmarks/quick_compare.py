"""Eval tokens/s (one thread) and generation p50 of the int8 engines side by side on a test prefix,
interleaved passes, medians: a shorter `wordlm bench` for shared machines (no all-core pass, no RSS).

Run: .venv/bin/python benchmarks/quick_compare.py [CKPT] [--max-tokens 30000] [--reps 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from wordlm.bench.run import cpu_flags, generation_latency, load_variant, make_artifact, percentile
from wordlm.checkpoint import load_checkpoint
from wordlm.data import load_split
from wordlm.models import DEFAULT_MODEL
from wordlm.tasks import evaluate

VARIANTS = ("torch-dynamic", "onnxruntime-int8", "wordlm-int8", "wordlm-int4")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("--max-tokens", type=int, default=30000)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    ck = load_checkpoint(args.checkpoint)
    ids = load_split(ck.vocab, "test")[: args.max_tokens]
    with tempfile.TemporaryDirectory() as tmp:
        engines = {v: load_variant(v, make_artifact(v, ck, Path(tmp)), threads=1) for v in VARIANTS}
        runs = {v: [] for v in VARIANTS}
        loss = {}
        for _ in range(args.reps):
            for v, e in engines.items():
                r = evaluate(e, ids, warmup=True)
                runs[v].append(r.tokens_per_s)
                loss[v] = r.loss
        gen = {v: percentile(generation_latency(e, 200), 0.5) * 1e3 for v, e in engines.items()}
    med = {v: statistics.median(x) for v, x in runs.items()}
    print(f"CPU flags: {', '.join(cpu_flags())}; {len(ids):,} test tokens, {args.reps} interleaved passes")
    print("| variant | loss | eval tokens/s (median) | passes | vs torch-dynamic | vs ORT int8 | gen p50 ms | vs ORT |")
    print("|---|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        print(
            f"| {v} | {loss[v]:.4f} | {med[v]:,.0f} | {', '.join(f'{x:,.0f}' for x in runs[v])} "
            f"| {med[v] / med['torch-dynamic']:.2f}x | {med[v] / med['onnxruntime-int8']:.2f}x "
            f"| {gen[v]:.3f} | {gen[v] / gen['onnxruntime-int8']:.2f}x |"
        )


if __name__ == "__main__":
    main()
