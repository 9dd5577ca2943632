"""`wordlm serve` under concurrent load on loopback: latency percentiles, requests/s, and no errors.

Run: .venv/bin/python benchmarks/load_test.py CKPT [--engine NAME] [--threads N] [--clients 32]
     [--requests 50] [--out benchmarks/load_test.md]
Starts `wordlm serve CKPT` in its own process on a free port, waits until it answers /health, then
`--clients` concurrent clients each send `--requests` requests one after another: mostly
/v1/next-words (the keyboard case), some short /v1/completions, on prompts cut from WikiText-2's test
lines. Any error (a non-200 or a failed connection) fails the run. The clients share the machine
with the server, so requests/s is a floor for what the server alone would do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from wordlm.data import BUNDLED_WIKITEXT2, read_lines


def prompts(n: int, seed: int) -> list[str]:
    """`n` prompts of 3-15 words, each the start of a WikiText-2 test line (headings skipped)."""
    lines = [ln.split() for ln in read_lines(BUNDLED_WIKITEXT2 / "test.txt.xz")]
    lines = [ws for ws in lines if len(ws) >= 15 and ws[0] != "="]
    rng = random.Random(seed)
    return [" ".join(ws[: rng.randint(3, 15)]) for ws in rng.choices(lines, k=n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_flags(args: argparse.Namespace, threads: int) -> list[str]:
    return ["--threads", str(threads)] + (["--engine", args.engine] if args.engine else [])


def start_server(checkpoint: str, port: int, flags: list[str]) -> subprocess.Popen:
    """`wordlm serve CHECKPOINT --port PORT FLAGS...` in its own process, once it answers /health."""
    cmd = [sys.executable, "-m", "wordlm.cli", "serve", checkpoint, "--port", str(port), *flags]
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the server's access log
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 600  # loading and warming a large model takes a while
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health").raise_for_status()
            return proc
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log.seek(0)
                sys.exit(f"the server did not start:\n{log.read()}")
            time.sleep(0.2)


async def client(http: httpx.AsyncClient, jobs: list[tuple[str, dict]], out: list, errors: list) -> None:
    for path, body in jobs:
        start = time.perf_counter()
        try:
            r = await http.post(path, json=body)
            ok = r.status_code == 200
            if not ok:
                errors.append(f"{path}: {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as e:
            ok = False
            errors.append(f"{path}: {type(e).__name__} {e}")
        if ok:
            out.append((path, time.perf_counter() - start))


async def load(url: str, plan: list[list[tuple[str, dict]]]) -> tuple[list, list, float]:
    latencies, errors = [], []
    limits = httpx.Limits(max_connections=len(plan), max_keepalive_connections=len(plan))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        await http.post("/v1/next-words", json={"text": "The"})  # first-request costs out of the figures
        start = time.perf_counter()
        await asyncio.gather(*(client(http, jobs, latencies, errors) for jobs in plan))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def report(args: argparse.Namespace, latencies: list, errors: list, wall: float, health: dict) -> str:
    def row(name: str, secs: list[float]) -> str:
        secs = sorted(secs)
        q = statistics.quantiles(secs, n=100, method="inclusive") if len(secs) > 1 else secs * 99
        return f"| {name} | {len(secs)} | {q[49] * 1e3:.1f} | {q[98] * 1e3:.1f} | {secs[-1] * 1e3:.1f} |"

    total = args.clients * args.requests
    command = "python benchmarks/load_test.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# `wordlm serve` load test",
        "",
        f"Command: `{command}`",
        "",
        f"Server: `wordlm serve` on 127.0.0.1, model `{health['model']}`, engine `{health['engine']}`, "
        f"{args.threads} engine thread(s). Load: {args.clients} concurrent clients x {args.requests} requests "
        f"= {total}, about {args.completion_share:.0%} completions of {args.max_tokens} words (seeded, "
        "temperature 1), the rest next-words (k 10); prompts of 3-15 words from WikiText-2's test lines.",
        f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}, load "
        f"average {args.load_before:.2f} before the run (other work on the machine); the clients run on the same "
        "cores as the server.",
        "",
        f"**{total - len(errors)} / {total} requests succeeded, {len(errors)} errors; {wall:.1f} s, "
        f"{len(latencies) / wall:.0f} requests/s.**",
        "",
        "| endpoint | requests | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for path in sorted({p for p, _ in latencies}):
        lines.append(row(f"`{path}`", [s for p, s in latencies if p == path]))
    lines.append(row("all", [s for _, s in latencies]))
    if errors:
        lines += ["", "Errors (first 10):", "", *[f"- {e}" for e in errors[:10]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--engine", help="default: as `wordlm serve` (torch for float, wordlm for quantized)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=50, help="per client")
    ap.add_argument("--completion-share", type=float, default=0.25)
    ap.add_argument("--max-tokens", type=int, default=8, help="words per completion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = ap.parse_args()
    args.load_before = os.getloadavg()[0]

    rng = random.Random(args.seed)
    texts = iter(prompts(args.clients * args.requests, args.seed))
    plan = [
        [
            ("/v1/completions", {"prompt": next(texts), "max_tokens": args.max_tokens, "seed": rng.randrange(2**31)})
            if rng.random() < args.completion_share
            else ("/v1/next-words", {"text": next(texts), "k": 10})
            for _ in range(args.requests)
        ]
        for _ in range(args.clients)
    ]
    port = free_port()
    server = start_server(args.checkpoint, port, server_flags(args, args.threads))
    try:
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{url}/health").json()
        latencies, errors, wall = asyncio.run(load(url, plan))
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = report(args, latencies, errors, wall, health)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
