"""`wordlm bench`: every way of running one model, side by side, in one run.

Each row is a variant loaded from its own on-disk artifact (the float checkpoint, an exported .onnx
file, a quantized checkpoint), measured by the same loops on the same tokens: size on disk, loss and
perplexity by the tutorial's protocol, eval tokens/s on one thread (median of repetitions) and on all
cores, per-token generation latency at batch 1 (p50 / p99, sampling included), load time, and peak
RSS of a separate process that loads the model and evaluates. Ratios are taken against the
tutorial's fp32 (`torch`) and int8 (`torch-dynamic`) rows and against ONNX Runtime's int8.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wordlm.bench.machine_load import MachineLoad
from wordlm.checkpoint import Checkpoint, load_checkpoint, read_vocab, save_checkpoint
from wordlm.data import Vocab, load_split, prefix
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.progress import progress
from wordlm.quant import SCHEMES, get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.runtime import Engine, Sampling, new_rng
from wordlm.tasks import evaluate

log = logging.getLogger(__name__)
BASELINES = ("torch", "torch-dynamic", "onnxruntime", "onnxruntime-int8")
ALL_VARIANTS = BASELINES + tuple(f"wordlm-{s}" for s in SCHEMES)  # the default
# wordlm-SCHEME-fine-WHERE: the scheme with fine activations (wordlm.quant.Scheme), asked by name
KNOWN_VARIANTS = ALL_VARIANTS + tuple(f"wordlm-{s}-fine-{w}" for s in ("int8", "int4") for w in ("inputs", "all"))
RATIO_BASES = ("torch", "torch-dynamic", "onnxruntime-int8")
PROTOCOL = "batch 1, bptt 25, hidden carried, dropout off"


@dataclass
class BenchConfig:
    variants: tuple[str, ...] = ALL_VARIANTS
    split: str = "test"
    max_tokens: int | None = None  # None: the whole split
    reps: int = 3  # timed evaluation passes per variant (after a warm-up)
    gen_tokens: int = 200  # generated tokens timed per variant
    rss_tokens: int = 20000  # tokens the separate RSS process evaluates
    all_cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    measure_rss: bool = True


@dataclass
class Row:
    variant: str
    status: str = "ok"  # or "skipped"
    reason: str | None = None
    size_bytes: int | None = None
    loss: float | None = None
    ppl: float | None = None
    tokens: int | None = None
    eval_tokens_per_s: float | None = None  # median over reps, one thread
    eval_tokens_per_s_runs: list[float] = field(default_factory=list)
    eval_tokens_per_s_all_cores: float | None = None
    gen_p50_ms: float | None = None
    gen_p99_ms: float | None = None
    load_s: float | None = None
    peak_rss_bytes: int | None = None
    ratios: dict = field(default_factory=dict)


# ---- artifacts: what each variant loads from disk ----
def make_artifact(variant: str, ckpt: Checkpoint, workdir: Path) -> Path:
    """Write (or point to) the file that `variant` loads."""
    if variant in ("torch", "torch-dynamic"):
        return ckpt.path
    if variant.startswith("onnxruntime"):
        from wordlm.export import export_onnx

        return export_onnx(ckpt, workdir / f"{variant}.onnx", quantize_dynamic=variant.endswith("int8"))
    if variant.startswith("wordlm-"):
        scheme, _, fine = variant.removeprefix("wordlm-").partition("-fine-")
        fine = fine or "none"
        if ckpt.scheme is not None:
            if (ckpt.scheme.name, ckpt.scheme.fine_activations) != (scheme, fine):
                stored = ckpt.scheme.name + ("" if ckpt.scheme.fine_activations == "none" else " with fine activations")
                raise WordLMError(f"the checkpoint is quantized as {stored}, not {variant}")
            return ckpt.path
        return save_checkpoint(quantize_checkpoint(ckpt, get_scheme(scheme, fine_activations=fine)), workdir / variant)
    raise WordLMError(f"unknown bench variant {variant!r}; choose from {', '.join(KNOWN_VARIANTS)}")


def load_variant(variant: str, artifact: Path, threads: int) -> Engine:
    if variant.startswith("onnxruntime"):
        from wordlm.engines.ort import OrtEngine

        return OrtEngine(artifact.read_bytes(), name=variant, threads=threads)
    name = "wordlm" if variant.startswith("wordlm-") else variant
    return load_engine(name, load_checkpoint(artifact), threads=threads)


# ---- measurements ----
def generation_latency(engine: Engine, n: int, seed: int = 0) -> list[float]:
    """Seconds per generated token at batch 1 (feed the last word, sample the next), after a warm-up."""
    rng = new_rng(seed)
    state, word, times = engine.init_state(1), np.zeros(1, np.int64), []
    for i in range(n + 10):
        t = time.perf_counter()
        word, state = engine.sample_next(word.reshape(1, 1), state, Sampling(), rng)
        if i >= 10:
            times.append(time.perf_counter() - t)
    return times


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def probe_rss(variant: str, artifact: Path, split: str, tokens: int, data_dir: str | None) -> int | None:
    """Peak RSS (bytes) of a fresh process that loads the variant and evaluates `tokens` tokens."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child of a
    # big process would report its parent's peak
    code = (
        "from wordlm.bench.run import _probe, peak_rss_bytes; "
        f"_probe({variant!r}, {str(artifact)!r}, {split!r}, {tokens}, {data_dir!r}); "
        "print(peak_rss_bytes())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    except subprocess.TimeoutExpired:
        log.warning("RSS probe of %s timed out; its peak RSS is left empty", variant)
        return None
    if r.returncode != 0:  # keep the run's other figures; say why this one is missing
        log.warning("RSS probe of %s failed (%s); its peak RSS is left empty", variant, r.stderr.strip()[-300:])
        return None
    return int(r.stdout.strip().splitlines()[-1])


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise WordLMError("peak RSS needs Linux's /proc/self/status")


def _probe(variant: str, artifact: str, split: str, tokens: int, data_dir: str | None) -> None:
    """What the RSS process runs: load the variant and evaluate; the vocabulary is read on its own
    (vocab.txt, or the ONNX metadata through the engine's session), never a second copy of the weights."""
    engine = load_variant(variant, Path(artifact), threads=1)
    if Path(artifact).is_dir():
        vocab = read_vocab(Path(artifact) / "vocab.txt")
    else:
        vocab = Vocab.from_text(engine.session.get_modelmeta().custom_metadata_map["vocab"])
    evaluate(engine, load_split(vocab, split, data_dir)[:tokens])


def measure_all(artifacts: dict[str, Path], ids: np.ndarray, cfg: BenchConfig, data_dir: str | None) -> list[Row]:
    """Measure every variant. Timed passes are interleaved (rep 1 of every variant, then rep 2, ...)
    so that a slow spell of a noisy machine hits all variants alike, not one of them."""
    rows, engines = {}, {}
    for variant, artifact in artifacts.items():
        t = time.perf_counter()
        try:
            engines[variant] = load_variant(variant, artifact, threads=1)
        except WordLMError as e:  # an optional runtime is missing, or this build lacks a backend
            log.warning("%s skipped: %s", variant, e)
            rows[variant] = Row(variant, "skipped", str(e))
            continue
        evaluate(engines[variant], ids[:100])  # warm-up: first-use initialisation counts as loading
        rows[variant] = Row(variant, load_s=time.perf_counter() - t, size_bytes=engines[variant].size_bytes)
    for _ in progress(range(cfg.reps), desc="eval passes", unit="pass"):
        for variant, engine in engines.items():
            res = evaluate(engine, ids)
            rows[variant].eval_tokens_per_s_runs.append(res.tokens_per_s)
            rows[variant].loss, rows[variant].ppl, rows[variant].tokens = res.loss, res.ppl, res.tokens
    for variant, engine in engines.items():
        row = rows[variant]
        row.eval_tokens_per_s = statistics.median(row.eval_tokens_per_s_runs)
        lat = generation_latency(engine, cfg.gen_tokens)
        row.gen_p50_ms, row.gen_p99_ms = percentile(lat, 0.5) * 1e3, percentile(lat, 0.99) * 1e3
    engines.clear()
    for variant, artifact in progress(artifacts.items(), desc="all cores, RSS", unit="variant"):
        row = rows[variant]
        if row.status != "ok":
            continue
        if cfg.all_cores > 1:
            multi = load_variant(variant, artifact, threads=cfg.all_cores)
            evaluate(multi, ids[:100])
            row.eval_tokens_per_s_all_cores = evaluate(multi, ids).tokens_per_s
            del multi
            _torch_threads(1)
        else:
            row.eval_tokens_per_s_all_cores = row.eval_tokens_per_s
        if cfg.measure_rss:
            row.peak_rss_bytes = probe_rss(variant, artifact, cfg.split, min(cfg.rss_tokens, len(ids)), data_dir)
    return list(rows.values())


def _torch_threads(n: int) -> None:
    """Give torch's thread pool back to n threads, where torch is loaded at all."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def cpu_flags() -> list[str]:
    """The CPU features every figure depends on: the machines differ (docs/design.md, "Machines and what was
    measured on them")."""
    try:
        flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    return sorted(flags & {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "asimddp"})


def add_ratios(rows: list[Row]) -> None:
    """Ratios of each row against the baseline rows: speed-ups (>1 is faster), size and latency (<1 is better)."""
    by_name = {r.variant: r for r in rows if r.status == "ok"}
    for r in rows:
        if r.status != "ok":
            continue
        for base in RATIO_BASES:
            b = by_name.get(base)
            if b is None:
                continue
            r.ratios[f"vs_{base}"] = {
                "size": r.size_bytes / b.size_bytes,
                "eval_speedup": r.eval_tokens_per_s / b.eval_tokens_per_s,
                "gen_p50": r.gen_p50_ms / b.gen_p50_ms,
            }


def environment(cfg: BenchConfig, ckpt: Checkpoint) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import numpy

    from wordlm import native

    versions = {"python": platform.python_version(), "numpy": numpy.__version__}
    for package in ("torch", "onnxruntime"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    cpu = platform.processor()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from wordlm import __version__

    return {
        "wordlm": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(ckpt.path),
        "checkpoint_meta": {k: ckpt.meta.get(k) for k in ("epochs", "val_loss", "command")},
        "hardware": {
            "cpu": cpu,
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "system": platform.system(),
            "flags": cpu_flags(),
            "wordlm_kernels": native.active_isa(),
        },
        "versions": versions,
        "settings": {
            **asdict(cfg),
            "variants": list(cfg.variants),
            "protocol": PROTOCOL,
        },
    }


def run_bench(ckpt_path: str | Path, cfg: BenchConfig, data_dir: str | None = None) -> dict:
    """Measure every variant of `cfg`; returns the results document (see Row and environment())."""
    ckpt = load_checkpoint(ckpt_path)
    for v in cfg.variants:
        if v not in KNOWN_VARIANTS:
            raise WordLMError(f"unknown bench variant {v!r}; choose from {', '.join(KNOWN_VARIANTS)}")
    if cfg.reps < 1 or cfg.gen_tokens < 1:
        raise WordLMError("--reps and --gen-tokens must be at least 1")
    ids = prefix(load_split(ckpt.vocab, cfg.split, data_dir), cfg.max_tokens)
    _torch_threads(1)
    skipped, artifacts = {}, {}
    with tempfile.TemporaryDirectory(prefix="wordlm-bench-") as tmp:
        for variant in progress(cfg.variants, desc="prepare", unit="variant"):
            if ckpt.scheme is not None and not variant.startswith("wordlm-"):
                skipped[variant] = "needs a float checkpoint"
                continue
            try:  # an optional runtime may be missing, or this variant cannot run this checkpoint
                artifacts[variant] = make_artifact(variant, ckpt, Path(tmp))
            except WordLMError as e:
                log.warning("%s skipped: %s", variant, e)
                skipped[variant] = str(e)
        load = MachineLoad.start(allow_busy=True)  # a user's command: the results say the load, never refuse
        measured = {r.variant: r for r in measure_all(artifacts, ids, cfg, data_dir)}
        load.stop()
        if load.busy:
            log.warning("the machine was busy while measuring (%s): the timings measure that work too", load.describe())
    rows = [measured.get(v) or Row(v, "skipped", skipped[v]) for v in cfg.variants]
    add_ratios(rows)
    return {**environment(cfg, ckpt), "machine_load": load.as_dict(), "results": [asdict(r) for r in rows]}


def write_results(doc: dict, out: str | Path) -> list[Path]:
    """results.json, results.md and the plots, each written atomically."""
    from wordlm.bench.report import markdown, plots
    from wordlm.checkpoint.fileio import atomic_write

    out = Path(out)
    paths = [atomic_write(out / "results.json", json.dumps(doc, indent=2) + "\n")]
    paths.append(atomic_write(out / "results.md", markdown(doc)))
    paths += plots(doc, out)
    return paths
