"""Training throughput of the tutorial model on this machine's CPU: one process on 1 and on 2 threads,
and 2 DDP ranks (gloo) of 1 thread each, all at the global batch 20 (issue 15's CPU figure).

Each run is `wordlm train --preset tutorial` stopped by `--max-minutes`; the tokens/s is what the run
logs when it stops (its epoch's tokens, all ranks, over the training time, the state save excluded).
The variants are interleaved, in a rotated order each repetition, and the medians are reported.

    .venv/bin/python benchmarks/distributed.py --minutes 1.5 --reps 3 --out benchmarks/distributed_run.md

On a busy machine it writes nothing unless --allow-busy (wordlm/bench/machine_load.py: its own training runs
are not counted as the machine's other work).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from wordlm.bench.machine_load import BusyMachine, MachineLoad, add_argument, load_average

VARIANTS = {  # name -> the flags after `wordlm train --preset tutorial ...`
    "1 process x 1 thread": ["--threads", "1"],
    "1 process x 2 threads": ["--threads", "2"],
    "2 ranks x 1 thread (DDP, gloo)": ["--nproc", "2", "--threads", "1"],
}
FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    have = [f for f in FLAGS if f in flags]
    return f"{model.group(1) if model else platform.processor()}, {os.cpu_count()} cores, flags: {' '.join(have)}"


def run(flags: list[str], minutes: float, work: Path) -> tuple[float, str]:
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "wordlm", "train", "--preset", "tutorial", "--out", str(out)]
    cmd += ["--max-minutes", str(minutes), "--save-every", "1000000", *flags]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = re.search(r"time limit reached.*\(([\d,]+) tokens/s", r.stderr)
    if r.returncode or not found:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return float(found.group(1).replace(",", "")), re.search(r"batch (\d+);", r.stderr).group(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.5, help="training time of each run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/distributed_run.md"))
    add_argument(ap)
    args = ap.parse_args()
    names = list(VARIANTS)
    rows, speeds = [], {n: [] for n in names}
    try:
        guard = MachineLoad.start(args.allow_busy)
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for name in order:
                    load = load_average() or float("nan")
                    tps, batches = run(VARIANTS[name], args.minutes, Path(tmp))
                    speeds[name].append(tps)
                    after = load_average() or float("nan")
                    rows.append(f"| {rep + 1} | {name} | {tps:,.0f} | {batches} | {load:.2f} | {after:.2f} |")
                    print(rows[-1], flush=True)
        guard.stop()
    except BusyMachine as e:
        sys.exit(f"benchmarks/distributed.py: {e}")
    base = statistics.median(speeds[names[0]])
    lines = [
        "# Distributed training on the CPU: one run of benchmarks/distributed.py (write-up: distributed.md)",
        "",
        f"Machine: {cpu()}; {platform.platform()}; torch {torch.__version__}.",
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}, {args.reps} interleaved repetitions of {args.minutes} "
        "minutes each, medians. The tutorial model (`--preset tutorial`: Embedding(33278, 512), 5 x LSTM 256, "
        "Linear(256, 33278)), WikiText-2, global batch 20, bptt 35, fp32.",
        "",
        guard.header(),
        "",
        "```bash",
        *(
            f".venv/bin/wordlm train --preset tutorial --out RUN --max-minutes {args.minutes} "
            f"--save-every 1000000 {' '.join(VARIANTS[n])}"
            for n in names
        ),
        f".venv/bin/python benchmarks/distributed.py --minutes {args.minutes} --reps {args.reps}  # all of them",
        "```",
        "",
        "| variant | tokens/s (median) | vs 1 x 1 thread |",
        "|---|---|---|",
        *(f"| {n} | {statistics.median(speeds[n]):,.0f} | {statistics.median(speeds[n]) / base:.2f}x |" for n in names),
        "",
        "Every run (load: the 1-minute load average before and after it):",
        "",
        "| rep | variant | tokens/s | batches | load before | load after |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
