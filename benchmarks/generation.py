"""Generation at batch 1 against the memory limit (issue 26): per word, the bytes of weights every word
reads, the floor that this core's read bandwidth puts under them, and the time a word takes through
libwordlm (C: wl_eval + wl_sample_next, `generation/loop.c`), the Python runtime (Runtime.sample_next)
and ONNX Runtime int8's loop; passes interleaved, medians.

A word reads every GEMM weight once (the decoder's 33,278 rows and every recurrent matrix) plus their
per-row scales, code sums and biases; none of it stays in a 2 MB L2 between words, because the decoder
alone streams 4-9 MB through it. The floor is those bytes at the bandwidth of one core reading a 64 MB
array (wordlm's own vectorized max over it, best of 20).

Run: .venv/bin/python benchmarks/generation.py [--words 3000] [--reps 3] [--allow-busy]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wordlm import native
from wordlm.bench.machine_load import BusyMachine, MachineLoad, add_argument
from wordlm.bench.run import cpu_flags, generation_latency, load_variant, make_artifact, percentile
from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.models import DEFAULT_MODEL, SHIPPED_MODEL
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


def read_bandwidth(mb: int = 64) -> float:
    """GB/s of one core reading `mb` MB (best of 20 passes of wl_max over float32: the first few are slower)."""
    a = np.ones(mb * 2**18, np.float32)
    best = min(_timed(lambda: native.max_value(a)) for _ in range(20))
    return a.nbytes / best / 1e9


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def bytes_per_word(rt: Runtime) -> int:
    """The packed weights a word reads: every recurrent matrix and the decoder, with their per-row arrays."""
    rec, dec = rt.weights.recurrent.packed, rt.weights.decoder.packed
    mats = [p for pair in rec.layers for p in pair] + (rec.proj or []) + [dec]
    return sum(p.panels.nbytes + p.scales.nbytes + p.sums.nbytes + p.bias.nbytes for p in mats)


def build_loop(out: Path) -> Path:
    """libwordlm.so (examples/c's Makefile) and generation/loop.c linked to it, in `out`."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "c"), f"OUT={out}", f"{out}/libwordlm.so"], check=True)
    exe = out / "loop"
    cmd = ["cc", "-O2", f"-I{ROOT / 'wordlm' / 'native'}", str(ROOT / "benchmarks" / "generation" / "loop.c")]
    subprocess.run([*cmd, f"-L{out}", "-lwordlm", f"-Wl,-rpath,{out}", "-o", str(exe)], check=True)
    return exe


def c_loop(exe: Path, ckpt: Path, words: int) -> float:
    """libwordlm's median microseconds per word (a fresh process: the app's view)."""
    done = subprocess.run([str(exe), str(ckpt), str(words)], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=3000, help="words timed per variant and pass")
    ap.add_argument("--reps", type=int, default=3)
    add_argument(ap)
    args = ap.parse_args()
    fp32 = load_checkpoint(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {f"{DEFAULT_MODEL.name} {s}": tmp / s for s in ("int8", "int4")}
        for s in ("int8", "int4"):
            save_checkpoint(quantize_checkpoint(fp32, get_scheme(s)), tmp / s)
        models[f"{SHIPPED_MODEL.name} (shipped)"] = SHIPPED_MODEL
        runtimes = {m: Runtime(load_checkpoint(p)) for m, p in models.items()}
        ort = load_variant("onnxruntime-int8", make_artifact("onnxruntime-int8", fp32, tmp), threads=1)
        exe = build_loop(tmp)
        c_us, py_us, ort_us = {m: [] for m in models}, {m: [] for m in models}, []
        try:
            load = MachineLoad.start(args.allow_busy, settle=90)  # the set-up above lifts the load average
            bandwidth = read_bandwidth()
            for _ in range(args.reps):
                ort_us.append(percentile(generation_latency(ort, args.words // 3), 0.5) * 1e6)
                for m, path in models.items():
                    c_us[m].append(c_loop(exe, path, args.words))
                    py_us[m].append(percentile(generation_latency(runtimes[m], args.words), 0.5) * 1e6)
            load.stop()
        except BusyMachine as e:
            sys.exit(f"benchmarks/generation.py: {e}")
    ort_med = statistics.median(ort_us)
    print(f"CPU flags: {', '.join(cpu_flags())}; {load.header()}\n")
    print(f"One core reads {bandwidth:.1f} GB/s (64 MB, best of 20). ONNX Runtime int8's loop: {ort_med:.0f} us a word")
    print(f"(passes: {', '.join(f'{x:.0f}' for x in ort_us)}).\n")
    head = "| model | weights read a word | floor | libwordlm (C) | vs floor | vs ORT | Python runtime | vs ORT |"
    print(head + " kernels |\n" + "|---" * 9 + "|")
    for m, rt in runtimes.items():
        nbytes = bytes_per_word(rt)
        floor, c, py = nbytes / bandwidth / 1e3, statistics.median(c_us[m]), statistics.median(py_us[m])
        print(
            f"| {m} | {nbytes / 1e6:.2f} MB | {floor:.0f} us | {c:.0f} us | {c / floor:.2f}x | {c / ort_med:.2f}x "
            f"| {py:.0f} us | {py / ort_med:.2f}x | {rt.kernels} |"
        )
    print("\nPer pass (us a word), libwordlm / Python runtime:")
    for m in models:
        print(f"- {m}: {', '.join(f'{c:.0f}' for c in c_us[m])} / {', '.join(f'{p:.0f}' for p in py_us[m])}")


if __name__ == "__main__":
    main()
