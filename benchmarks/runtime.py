"""Issue 17's figures for wordlm's runtime that `wordlm bench` does not take: accuracy of int8
next-word log-probabilities against fp32 with every kernel, thread scaling, memory, load time, and
the CLI's start-up. Speeds against torch-dynamic and ONNX Runtime come from `wordlm bench`.

Run: .venv/bin/python benchmarks/runtime.py [CKPT] [--reps 3] [--out benchmarks/runtime.md] [--allow-busy]
CKPT is a float checkpoint (default: the shipped model); its int8 copy is written to a temp folder. On a
busy machine it refuses to write anything unless --allow-busy (wordlm/bench/machine_load.py); the header says
the load either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wordlm import native
from wordlm.bench.machine_load import BusyMachine, MachineLoad, add_argument
from wordlm.bench.run import cpu_flags
from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.models import DEFAULT_MODEL
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.tasks import evaluate

CONTEXTS, CONTEXT_WORDS = 150, 50


def contexts(test: np.ndarray) -> list[np.ndarray]:
    """150 contexts spread evenly over the test split: the 50 words before each position."""
    ends = np.linspace(CONTEXT_WORDS, len(test) - 1, CONTEXTS).astype(int)
    return [test[e - CONTEXT_WORDS : e] for e in ends]


def next_word_agreement(ref, fast, ctxs: list[np.ndarray]) -> dict:
    """Mean KL(fp32 || int8) in nats over the whole vocabulary, and how often the top word agrees."""
    kls, same = [], 0
    for ids in ctxs:
        x = ids.reshape(-1, 1)
        p = ref.next_logprobs(x, ref.init_state(1))[0][0].astype(np.float64)
        q = fast.next_logprobs(x, fast.init_state(1))[0][0].astype(np.float64)
        kls.append(float(np.sum(np.exp(p) * (p - q))))
        same += int(p.argmax() == q.argmax())
    return {"mean_kl": statistics.mean(kls), "max_kl": max(kls), "top1": same / len(ctxs)}


PROBE = """
import sys, time
t = time.perf_counter()
from wordlm.checkpoint import load_checkpoint
from wordlm.runtime import Runtime
rt = Runtime(load_checkpoint(sys.argv[1]))
print(time.perf_counter() - t, rt.pack_seconds)
"""

RSS = """
import sys
from pathlib import Path
from wordlm.cli import main
main(sys.argv[1:])
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print("RSS", int(hwm.split()[1]) * 1024, file=sys.stderr)
"""


def run(ckpt_path: Path, reps: int) -> dict:
    ck = load_checkpoint(ckpt_path)
    test = load_split(ck.vocab, "test")
    out: dict = {"checkpoint": str(ckpt_path), "cpu_flags": cpu_flags(), "kernels": native.available_isas()}
    with tempfile.TemporaryDirectory() as tmp:
        q8 = save_checkpoint(quantize_checkpoint(ck, get_scheme("int8")), Path(tmp) / "int8")
        int8 = load_checkpoint(q8)
        ref = load_engine("torch", ck)
        ctxs = contexts(test)
        out["next_word"] = {}
        for isa in native.available_isas():
            native._active = isa  # what WORDLM_ISA does for a whole process
            out["next_word"][isa] = next_word_agreement(ref, load_engine("wordlm", int8), ctxs)
        native._active = None
        # eval over the whole split, 1 and 2 threads, interleaved repetitions
        engines = {n: load_engine("wordlm", int8, threads=n) for n in (1, 2)}
        runs: dict[int, list] = {1: [], 2: []}
        losses = {}
        for _ in range(reps):
            for n, e in engines.items():
                r = evaluate(e, test, warmup=True)
                runs[n].append(r.tokens_per_s)
                losses[n] = r.loss
        out["eval"] = {n: {"tokens_per_s": statistics.median(v), "runs": v, "loss": losses[n]} for n, v in runs.items()}
        out["eval"]["speedup_2_threads"] = out["eval"][2]["tokens_per_s"] / out["eval"][1]["tokens_per_s"]
        loads = [
            [
                float(x)
                for x in subprocess.run(
                    [sys.executable, "-c", PROBE, str(q8)], capture_output=True, text=True, check=True
                ).stdout.split()
            ]
            for _ in range(5)
        ]
        out["load_s"] = statistics.median(x[0] for x in loads)
        out["pack_s"] = statistics.median(x[1] for x in loads)
        r = subprocess.run(
            [sys.executable, "-c", RSS, "eval", str(q8), "--threads", "1", "--json"], capture_output=True, text=True
        )
        out["eval_peak_rss_bytes"] = int(r.stderr.split("RSS ")[-1].split()[0])
        out["eval_rss_run"] = json.loads(r.stdout)
    helps = []
    for _ in range(10):
        t = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "wordlm"), "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - t)
    out["help_s"] = statistics.median(helps)
    return out


def markdown(r: dict, command: str) -> str:
    lines = [
        "# wordlm's runtime: accuracy, threads, memory, start-up",
        "",
        f"Command: `{command}`  ",
        f"Checkpoint: `{r['checkpoint']}` quantized to int8 (per-row int8 everywhere).  ",
        f"CPU flags: {', '.join(r['cpu_flags'])}; kernels this CPU runs: {', '.join(r['kernels'])}.",
        "",
        r["machine_load_header"],
        "",
        f"## int8 next-word log-probabilities against fp32 ({CONTEXTS} test contexts of {CONTEXT_WORDS} words)",
        "",
        "| kernel | mean KL (nats) | max KL | top-1 agreement |",
        "|---|---|---|---|",
    ]
    for isa, a in r["next_word"].items():
        lines.append(f"| {isa} | {a['mean_kl']:.2e} | {a['max_kl']:.2e} | {a['top1']:.1%} |")
    e = r["eval"]
    lines += [
        "",
        "## Eval of the whole test split (bptt 25, batch 1), int8",
        "",
        "| threads | tokens/s (median) | runs | loss |",
        "|---|---|---|---|",
        *(
            f"| {n} | {e[n]['tokens_per_s']:,.0f} | {', '.join(f'{x:,.0f}' for x in e[n]['runs'])} "
            f"| {e[n]['loss']:.6f} |"
            for n in (1, 2)
        ),
        "",
        f"Two threads: {e['speedup_2_threads']:.2f}x one thread (same loss to the last digit: fixed partition).",
        "",
        "## Memory and start-up",
        "",
        f"- `wordlm eval` of the int8 model (whole test split, one thread): peak RSS "
        f"{r['eval_peak_rss_bytes'] / 1e6:.1f} MB (VmHWM of the process).",
        f"- Loading the int8 checkpoint and packing its weights, in a fresh process: {r['load_s'] * 1e3:.0f} ms "
        f"(of which packing {r['pack_s'] * 1e3:.0f} ms); median of 5.",
        f"- `wordlm --help`: {r['help_s']:.3f} s, median of 10 runs.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?", default=str(DEFAULT_MODEL))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/runtime.md")
    add_argument(ap)
    args = ap.parse_args()
    try:
        load = MachineLoad.start(args.allow_busy)
        r = run(Path(args.checkpoint), args.reps)
        load.stop()
    except BusyMachine as e:
        sys.exit(f"benchmarks/runtime.py: {e}")
    r["machine_load"], r["machine_load_header"] = load.as_dict(), load.header()
    command = "python benchmarks/runtime.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(markdown(r, command))
    Path(args.out).with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    print(markdown(r, command))


if __name__ == "__main__":
    main()
