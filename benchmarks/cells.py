"""Every cell side by side (issue 13): size, test loss and one-thread eval speed of each engine on the
small models that benchmarks/cells_train.sh trains, one `wordlm bench` run per model.

Run: .venv/bin/python benchmarks/cells.py RUNS_DIR [NAME ...] [--reps 1] [--out benchmarks/cells.md] [--allow-busy]
Writes the table (markdown) and, beside it, cells.json with every bench document; the models named
(default: all trained) are measured, the others' rows are kept from an earlier cells.json. On a busy
machine it writes nothing unless --allow-busy (wordlm/bench/machine_load.py); each document keeps its load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from wordlm.bench.machine_load import BusyMachine, MachineLoad, add_argument
from wordlm.bench.run import BenchConfig, run_bench
from wordlm.checkpoint.fileio import atomic_write

NAMES = ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_tied", "lstm_proj")
VARIANTS = ("torch", "torch-dynamic", "onnxruntime-int8", "wordlm-int8", "wordlm-int4")


def table(docs: dict[str, dict]) -> str:
    head = "| model | engine | size (MB) | test loss | vs fp32 (nats) | eval tokens/s, 1 thread | vs torch fp32 |"
    lines = [head, "|" + "---|" * 7]
    for name, doc in docs.items():
        rows = {r["variant"]: r for r in doc["results"]}
        fp32 = rows["torch"]
        for variant in VARIANTS:
            r = rows[variant]
            if r["status"] != "ok":
                lines.append(f"| {name} | {variant} | - | - | - | skipped: {r['reason']} | - |")
                continue
            delta, speed = r["loss"] - fp32["loss"], r["eval_tokens_per_s"] / fp32["eval_tokens_per_s"]
            lines.append(
                f"| {name} | {variant} | {r['size_bytes'] / 1e6:.2f} | {r['loss']:.4f} | {delta:+.4f} "
                f"| {r['eval_tokens_per_s']:,.0f} | {speed:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path)
    ap.add_argument("names", nargs="*", default=NAMES)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("cells.md"))
    add_argument(ap)
    args = ap.parse_args()
    cfg = BenchConfig(variants=VARIANTS, reps=args.reps, all_cores=1, measure_rss=False, gen_tokens=100)
    store = args.out.with_suffix(".json")
    docs = json.loads(store.read_text()) if store.exists() else {}
    try:
        load = MachineLoad.start(args.allow_busy)
        measured = {name: run_bench(args.runs / name / "best", cfg) for name in args.names
                    if (args.runs / name / "best").is_dir()}  # fmt: skip
        load.stop()
    except BusyMachine as e:
        sys.exit(f"benchmarks/cells.py: {e}")
    for doc in measured.values():
        doc["machine_load"] = load.as_dict()
    docs.update(measured)
    docs = {name: docs[name] for name in NAMES if name in docs}
    env = next(iter(docs.values()))
    cpu = env["hardware"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    text = (
        "# Every cell side by side (issue 13)\n\n"
        f"Small models (emb 128, 2 layers of 128 units; `lstm_proj`: 256 units projected to 128), one epoch of\n"
        "WikiText-2 with the 10,000 most frequent words (the rest `<unk>`), trained by `benchmarks/cells_train.sh`;\n"
        f"then `.venv/bin/python benchmarks/cells.py RUNS_DIR --reps {args.reps}` (a `wordlm bench` per model:\n"
        "the whole test split, batch 1, bptt 25, one thread; the speed is the median of the passes).\n\n"
        f"CPU: {cpu['cpu']}, {cpu['cores']} cores, flags {' '.join(cpu['flags'])}, wordlm kernels "
        f"{cpu['wordlm_kernels']}; commit {commit}. This run ({', '.join(measured) or 'no model'}): "
        f"{load.header()}\n\n" + table(docs)
    )
    atomic_write(args.out, text)
    atomic_write(store, json.dumps(docs, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
