"""`wordlm serve` with many users at once: streaming clients against concurrency, batched vs unbatched,
one and two engine threads (issue 25).

Run: .venv/bin/python benchmarks/serve_load.py CKPT [--concurrency 1,4,16,64] [--words 48]
     [--threads 1,2] [--max-batch 64,1] [--out benchmarks/serve_load.md]
For each (threads, max-batch), starts `wordlm serve CKPT` (load_test.py's server), then for each
concurrency c, c clients each stream seeded completions of `--words` words, one after another (enough
for ~`--words-per-client` words a client): aggregate words/s, request time and time to first word
(p50, p95), errors. Then one request with n=16 against the same sixteen choices asked in sequence.
Every seeded text is kept and compared across the configurations (rows are exact: they must match).
The clients share the cores with the server; the machine's load is recorded before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from load_test import free_port, prompts, start_server

from wordlm.bench.machine_load import MachineLoad
from wordlm.checkpoint import load_checkpoint
from wordlm.engines import default_engine, load_engine
from wordlm.runtime import Sampling, new_rng
from wordlm.serve.metrics import Metrics
from wordlm.serve.scheduler import Job, Scheduler

log = logging.getLogger("serve_load")


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def stream_one(http: httpx.AsyncClient, body: dict) -> dict:
    """One streaming completion: its status, time to first word, total time, words and text."""
    start, first, text = time.perf_counter(), None, []
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                if choice["text"]:
                    first = first or time.perf_counter() - start
                    text.append(choice["text"])
    return {"status": r.status_code, "ttfw": first, "seconds": time.perf_counter() - start, "text": "".join(text)}


async def clients(url: str, concurrency: int, bodies: list[list[dict]]) -> tuple[list[dict], float]:
    """`concurrency` clients, each sending its bodies one after another: (every result, wall seconds)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http:
        await stream_one(http, bodies[0][0])  # first-request costs out of the figures

        async def one_client(mine: list[dict]) -> list[dict]:
            return [{**await stream_one(http, b), "key": (b["prompt"], b["seed"])} for b in mine]

        start = time.perf_counter()
        done = await asyncio.gather(*(one_client(mine) for mine in bodies))
        return [r for rs in done for r in rs], time.perf_counter() - start


def plan(texts: list[str], concurrency: int, per_client: int, words: int) -> list[list[dict]]:
    body = {"max_tokens": words, "temperature": 1.0, "stream": True}
    return [
        [
            {**body, "prompt": texts[(c * per_client + i) % len(texts)], "seed": c * per_client + i}
            for i in range(per_client)
        ]
        for c in range(concurrency)
    ]


def n_choices(url: str, n: int, words: int, prompt: str) -> dict:
    """One request with `n` choices against the same n choices asked one after another (median of 3)."""
    body = {"prompt": prompt, "max_tokens": words, "seed": 5}
    with httpx.Client(base_url=url, timeout=300) as http:

        def timed(f) -> float:
            runs = []
            for _ in range(3):
                start = time.perf_counter()
                f()
                runs.append(time.perf_counter() - start)
            return statistics.median(runs)

        one = timed(lambda: http.post("/v1/completions", json={**body, "n": n}).raise_for_status())
        seq = timed(
            lambda: [http.post("/v1/completions", json={**body, "seed": 5 + i}).raise_for_status() for i in range(n)]
        )
    return {"n": n, "one_request_s": one, "sequence_s": seq, "speedup": seq / one}


def run_config(
    args: argparse.Namespace, threads: int, max_batch: int, texts: list[str], engine: tuple[str, str] | None = None
) -> dict:
    """One server (`threads`, `max_batch`; `engine`: another (checkpoint, engine) than the default's):
    every concurrency, then n=16; the load around it all."""
    load = MachineLoad.start(allow_busy=True)
    batched = not engine and max_batch > 1
    alone = engine_only(args.checkpoint, threads, args.concurrency, args.words) if batched else []
    port = free_port()
    flags = ["--threads", str(threads), "--max-batch", str(max_batch)]  # --max-concurrent 80 admits 64 clients
    checkpoint = engine[0] if engine else args.checkpoint
    server = start_server(checkpoint, port, flags + (["--engine", engine[1]] if engine else []))
    url, rows, texts_seen = f"http://127.0.0.1:{port}", [], {}
    try:
        for c in args.concurrency:
            per_client = max(2, args.requests // c)  # about the same work at every concurrency
            results, wall = asyncio.run(clients(url, c, plan(texts, c, per_client, args.words)))
            ok = [r for r in results if r["status"] == 200]
            texts_seen.update({r["key"]: r["text"] for r in ok})
            rows.append(summary(c, results, ok, wall, args.words))
            log.info("threads %d, max batch %d, %d clients: %s", threads, max_batch, c, rows[-1])
        choices = n_choices(url, 16, args.words, texts[0])
    finally:
        server.terminate()
        server.wait(timeout=30)
    load.stop()
    return {
        "engine": engine[1] if engine else "default",
        "checkpoint": checkpoint,
        "threads": threads,
        "max_batch": max_batch,
        "rows": rows,
        "n16": choices,
        "engine_alone": alone,
        "load": load.as_dict(),
        "texts": {f"{p}|{s}": t for (p, s), t in texts_seen.items()},
    }


def engine_only(checkpoint: str, threads: int, streams: list[int], words: int) -> list[dict]:
    """The scheduler with no HTTP, in this process: words/s of `s` streams of `words` words at once (best
    of 3). Against the servers' figures, what serving adds; against each other, what batching gives."""
    ckpt = load_checkpoint(checkpoint)
    scheduler = Scheduler(load_engine(default_engine(ckpt), ckpt, threads), Metrics())
    rows = []
    try:
        for n in streams:
            best = float("inf")
            for rep in range(3):
                finished, counts = threading.Event(), [0] * n

                def on_word(i: int, _: int, counts=counts) -> bool:
                    counts[i] += 1
                    return counts[i] < words

                rngs = [new_rng(rep * n + i) for i in range(n)]
                start = time.perf_counter()
                scheduler.submit(
                    Job([], threading.Event(), lambda _, f=finished: f.set(), firsts=[0] * n,
                        samplings=[Sampling()] * n, rngs=rngs, on_word=on_word)
                )  # fmt: skip
                finished.wait()
                best = min(best, time.perf_counter() - start)
            rows.append({"streams": n, "words_per_s": n * words / best, "ms_per_step": best / words * 1e3})
    finally:
        scheduler.close()
    return rows


def engine_table(threads: int, rows: list[dict]) -> list[str]:
    lines = [
        f"Engine alone ({threads} thread(s); the scheduler in process, no HTTP, best of 3):",
        "",
        "| streams at once | words/s | x 1 stream | ms a step |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['streams']} | {r['words_per_s']:.0f} | {r['words_per_s'] / rows[0]['words_per_s']:.2f} | "
        f"{r['ms_per_step']:.2f} |"
        for r in rows
    ]
    return [*lines, ""]


def summary(c: int, results: list[dict], ok: list[dict], wall: float, words: int) -> dict:
    secs, firsts = [r["seconds"] for r in ok], [r["ttfw"] for r in ok if r["ttfw"] is not None]
    return {
        "clients": c,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_statuses": sorted({r["status"] for r in results} - {200}),
        "words_per_s": len(ok) * words / wall,
        "p50_s": quantile(secs, 0.5),
        "p95_s": quantile(secs, 0.95),
        "ttfw_p50_s": quantile(firsts, 0.5),
        "ttfw_p95_s": quantile(firsts, 0.95),
    }


def table(config: dict) -> list[str]:
    solo, batch = config["rows"][0], config["max_batch"]
    how = f"batched (up to {batch} streams a call)" if batch > 1 else "unbatched (--max-batch 1)"
    if config["engine"] != "default":
        how = f"engine `{config['engine']}` on `{config['checkpoint']}`, one stream per call"
    lines = [
        f"### {config['threads']} thread(s), {how}",
        "",
        config["load"]["header"],
        "",
        "| clients | requests | errors | words/s | x 1 client | request p50 s | p95 s | p50 x solo "
        "| first word p50 s | p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in config["rows"]:
        lines.append(
            f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['words_per_s']:.0f} | "
            f"{r['words_per_s'] / solo['words_per_s']:.2f} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | "
            f"{r['p50_s'] / solo['p50_s']:.2f} | {r['ttfw_p50_s']:.3f} | {r['ttfw_p95_s']:.3f} |"
        )
    if config["engine_alone"]:
        lines += ["", *engine_table(config["threads"], config["engine_alone"])]
    n = config["n16"]
    lines += [
        "",
        f"One request with n=16: {n['one_request_s']:.3f} s; the sixteen choices in sequence: "
        f"{n['sequence_s']:.3f} s (**{n['speedup']:.1f}x**).",
        "",
    ]
    return lines


def cpu_flags() -> str:
    out = subprocess.run(
        ["grep", "-o", "-w", r"avx512_vnni\|avx512_bf16\|avx2", "/proc/cpuinfo"], capture_output=True, text=True
    )
    return " ".join(sorted(set(out.stdout.split()))) or "none of avx2, avx512_vnni, avx512_bf16"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def same_texts(configs: list[dict]) -> str:
    """Whether every seeded text that the configurations of the default engine all produced is the same."""
    configs = [c for c in configs if c["engine"] == "default"]
    keys = set.intersection(*(set(c["texts"]) for c in configs))
    differ = [k for k in keys if len({c["texts"][k] for c in configs}) > 1]
    return f"{len(keys)} seeded texts produced by every configuration; {len(differ)} differ between them."


def report(args: argparse.Namespace, configs: list[dict], before: str, after: str) -> str:
    command = "python benchmarks/serve_load.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# `wordlm serve` with many users at once",
        "",
        f"Command: `{command}`",
        "",
        f"Streaming clients on loopback, each asking seeded completions of {args.words} words (temperature 1) "
        "one after another, prompts of 3-15 words from WikiText-2's test lines; the clients (Python, httpx) "
        "run on the same cores as the server. Model: `" + args.checkpoint + "`.",
        f"CPU flags: {cpu_flags()}. /proc/loadavg before: `{before}`; after: `{after}`.",
        "",
        same_texts(configs),
        "",
    ]
    for config in configs:
        lines += table(config)
    return "\n".join(lines) + "\n"


def plot(configs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for config in configs:
        label = f"{config['threads']} thr, " + ("batched" if config["max_batch"] > 1 else "unbatched")
        label = label if config["engine"] == "default" else f"{config['threads']} thr, {config['engine']}"
        cs = [r["clients"] for r in config["rows"]]
        a.plot(cs, [r["words_per_s"] for r in config["rows"]], "o-", label=label)
        b.plot(cs, [r["p50_s"] for r in config["rows"]], "o-", label=label)
    for ax, title in ((a, "aggregate words/s"), (b, "request time p50 (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streaming clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    b.set_yscale("log")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--threads", default="1,2", help="engine threads of each server")
    ap.add_argument("--max-batch", default="64,1", help="each server's --max-batch (1: unbatched)")
    ap.add_argument("--words", type=int, default=48, help="words per completion")
    ap.add_argument("--requests", type=int, default=32, help="about this many requests at each concurrency")
    ap.add_argument(
        "--ort", metavar="FLOAT_CKPT", help="also serve this float checkpoint on onnxruntime-int8 (1 thread)"
    )
    ap.add_argument("--out", type=Path, help="write the Markdown report here, the JSON and plot beside it")
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    texts, before = prompts(1000, 0), loadavg()
    configs = [
        run_config(args, int(t), int(b), texts) for t in args.threads.split(",") for b in args.max_batch.split(",")
    ]
    if args.ort:
        configs.append(run_config(args, 1, 1, texts, (args.ort, "onnxruntime-int8")))
    text = report(args, configs, before, loadavg())
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(configs, indent=1), encoding="utf-8")
        plot(configs, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
