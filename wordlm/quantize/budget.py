"""Mixed precision under a loss budget: the smallest per-weight plan whose validation cost stays within
`budget` nats (`wordlm quantize CKPT --budget 0.01`).

Measured sensitivity, as in HAWQ's mixed-precision search (Dong et al. 2019,
https://arxiv.org/abs/1905.03696) but with the loss itself rather than a Hessian trace: every weight
(the embedding, each layer's input and recurrent weights, the decoder) is quantized alone at each
candidate width and group size, everything else float, and the increase of the validation loss is
its cost. Assuming the costs add up, the least-bytes plan whose summed cost fits the budget is a
multiple-choice knapsack, solved exactly by dynamic programming over cost units. The chosen plan is
then measured whole on the engine that will run it (native kernels, activation quantization
included); where that overshoots, the knapsack's budget shrinks by the overshoot and the search
repeats. The validation split chooses; the test split is never read here.

Candidates are what the runtime computes at int8 speed: one scale per row for every weight that goes
through a GEMM (the recurrent weights, the decoder, a tied matrix), any group size for an untied
embedding (a row lookup).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wordlm.checkpoint import Checkpoint
from wordlm.config import expected_shapes
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.progress import progress
from wordlm.quant import QSpec, Rounder, Scheme, get_scheme, round_to_nearest
from wordlm.quant.primitives import WIDTHS, dequantize, packed_width, row_unit
from wordlm.tasks import evaluate

log = logging.getLogger(__name__)
COST_UNITS = 2000  # the knapsack's resolution: the budget in this many steps


@dataclass(frozen=True)
class BudgetConfig:
    budget: float = 0.01  # nats of validation loss over the float model
    val_tokens: int = 20_000  # the first tokens of the validation split that measure every cost
    # one stream, state carried (bptt 25): the protocol the test loss is reported by. Measured on the
    # shipped model, a plan with 2-bit recurrent weights cost +0.0066 nats on 10,000 tokens as 10
    # streams but +0.0163 as one: short streams from a zero state hide how quantized recurrent
    # weights drift over a long context
    streams: int = 1
    widths: tuple[int, ...] = WIDTHS
    # the recurrent weights' narrowest width. Each one's cost on the validation slice is within its noise
    # (+-0.0002 nats) at 2 to 8 bits, yet together they drift over a long context: on the shipped
    # model's WHOLE validation split, a plan's ten recurrent weights at 4 bits cost +0.005 nats over
    # the same plan at 8, at 5 bits +0.002, at 6 bits nothing (-0.0003); the 20k-token slice had shown
    # none of it (benchmarks/budget.md, run 3). At 6 bits they are 5% of a 10 MB plan
    recurrent_min_bits: int = 6
    fine_activations: str = "none"  # the plan's scheme runs with them (wordlm.quant.Scheme), measured so
    embedding_groups: tuple[int | None, ...] = (None, 64)  # None: one scale per row
    max_rounds: int = 4  # plan, measure, shrink the budget by the overshoot: at most this often
    threads: int = 1

    def check(self) -> None:
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise WordLMError(f"--budget must be a positive number of nats, got {self.budget}")
        if self.recurrent_min_bits not in WIDTHS:
            widths = ", ".join(map(str, WIDTHS))
            raise WordLMError(f"--min-recurrent-bits must be one of {widths}, got {self.recurrent_min_bits}")
        if self.val_tokens < 2 * self.streams * 25:
            raise WordLMError(f"--val-tokens must be at least {2 * self.streams * 25}, got {self.val_tokens}")


@dataclass
class Candidate:
    name: str
    bits: int | None
    group_size: int | None
    nbytes: int
    cost: float  # validation loss with only this weight quantized, minus the float model's

    @property
    def spec(self) -> QSpec:
        return QSpec(self.bits, self.group_size)


@dataclass
class Round:
    knapsack_budget: float
    predicted: float  # summed candidate costs of the plan
    measured: float  # the whole plan on the engine
    nbytes: int


@dataclass
class BudgetReport:
    budget: float
    val_tokens: int
    float_loss: float
    candidates: list[Candidate]
    rounds: list[Round] = field(default_factory=list)
    plan: dict[str, dict] = field(default_factory=dict)
    loss: float | None = None
    nbytes: int | None = None
    points: dict[str, dict] = field(default_factory=dict)  # fixed schemes and peers on the same slice

    def to_dict(self) -> dict:
        return asdict(self)


def stored_bytes(shape: tuple[int, int], spec: QSpec) -> int:
    """Bytes a weight takes in model.safetensors under `spec`: packed codes and fp16 scales (float32 kept float)."""
    n, k = shape
    if spec.bits is None:
        return n * k * 4
    return n * packed_width(k, spec.bits) + n * (k // spec.group(k)) * 2


def candidate_specs(name: str, shape: tuple[int, int], tied: bool, cfg: BudgetConfig) -> list[QSpec]:
    """Every spec the search tries for one weight (see the module's doc for why these)."""
    k = shape[1]
    groups = cfg.embedding_groups if name == "encoder.weight" and not tied else (None,)
    least = cfg.recurrent_min_bits if name.startswith("rnn.") else 0
    return [
        QSpec(bits, g)
        for bits in cfg.widths
        for g in groups
        if bits >= least and k % row_unit(bits) == 0 and (g is None or (g < k and k % g == 0))
    ]


def choose(candidates: list[Candidate], budget: float) -> list[Candidate]:
    """The least-bytes choice of one candidate per weight whose summed cost is within `budget`: a
    multiple-choice knapsack by dynamic programming over COST_UNITS steps of the budget. Costs below
    zero (quantization noise that happened to help) count as zero: the plan never spends them."""
    unit = budget / COST_UNITS
    by_weight: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_weight.setdefault(c.name, []).append(c)
    inf = float("inf")
    best = np.zeros(COST_UNITS + 1)  # least bytes at summed cost units <= b, over the weights so far
    picks: list[np.ndarray] = []
    for options in by_weight.values():
        units = [math.ceil(max(c.cost, 0.0) / unit - 1e-9) for c in options]
        nxt, pick = np.full(COST_UNITS + 1, inf), np.full(COST_UNITS + 1, -1)
        for i, (c, u) in enumerate(zip(options, units, strict=True)):
            if u > COST_UNITS:
                continue
            total = np.full(COST_UNITS + 1, inf)
            total[u:] = best[: COST_UNITS + 1 - u] + c.nbytes
            better = total < nxt
            nxt[better], pick[better] = total[better], i
        best = nxt
        picks.append(pick)
    if not math.isfinite(best[COST_UNITS]):
        raise WordLMError(f"no plan fits a budget of {budget:g} nats (every weight needs a float option)")
    chosen, b = [], COST_UNITS
    for options, pick in zip(reversed(list(by_weight.values())), reversed(picks), strict=True):
        c = options[int(pick[b])]
        chosen.append(c)
        b -= math.ceil(max(c.cost, 0.0) / unit - 1e-9)
    return chosen[::-1]


def memoized(rounder: Rounder) -> Rounder:
    """The same rounder, remembering its answers: every plan reuses the codes the costs were measured on."""
    seen: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def rounded(name: str, w: np.ndarray, spec: QSpec) -> tuple[np.ndarray, np.ndarray]:
        key = (name, spec.bits, spec.group(w.shape[1]))
        if key not in seen:
            seen[key] = rounder(name, w, spec)
        return seen[key]

    return rounded


def mixed_scheme(plan: dict[str, QSpec], fine_activations: str = "none") -> Scheme:
    """The registered "mixed" scheme carrying `plan` (one QSpec per weight)."""
    return get_scheme("mixed", plan={name: spec for name, spec in plan.items()}, fine_activations=fine_activations)


def search(ckpt: Checkpoint, cfg: BudgetConfig, rounder: Rounder = round_to_nearest, data_dir: str | None = None):
    """(the smallest plan within the budget as a Scheme, its report). `rounder` quantizes each weight
    (wordlm.quantize.calibrate's GPTQ or round to nearest)."""
    from wordlm.quantize import quantize_checkpoint

    cfg.check()
    if ckpt.scheme is not None:
        raise WordLMError(f"checkpoint is already quantized ({ckpt.scheme.name}); search from a float one")
    ids = load_split(ckpt.vocab, "valid", data_dir)[: cfg.val_tokens]
    rounder = memoized(rounder)
    floats = {k: np.asarray(v, np.float32) for k, v in ckpt.tensors.items()}

    def loss(ck: Checkpoint) -> float:
        return evaluate(load_engine("wordlm", ck, threads=cfg.threads), ids, bptt=25, batch_size=cfg.streams).loss

    base = loss(ckpt)
    shapes = {n: s for n, s in expected_shapes(ckpt.config).items() if len(s) == 2}  # the weights, not biases
    tied = ckpt.config.tied
    jobs = [(n, spec) for n, shape in shapes.items() for spec in candidate_specs(n, shape, tied, cfg)]
    candidates = [Candidate(n, None, None, stored_bytes(shape, QSpec(None)), 0.0) for n, shape in shapes.items()]
    for name, spec in progress(jobs, desc="costs", unit="candidate"):
        q, s = rounder(name, floats[name], spec)
        one = Checkpoint(ckpt.config, ckpt.vocab, {**floats, name: dequantize(q, s)})
        candidates.append(
            Candidate(name, spec.bits, spec.group_size, stored_bytes(shapes[name], spec), loss(one) - base)
        )
    report = BudgetReport(cfg.budget, len(ids), base, candidates)

    best: tuple[int, Scheme, float] | None = None
    knapsack, tried = cfg.budget, set()
    for _ in range(cfg.max_rounds):
        plan = choose(candidates, knapsack)
        key = tuple((c.name, c.bits, c.group_size) for c in plan)
        if key in tried:  # the budget moved less than a plan changes
            break
        tried.add(key)
        scheme = mixed_scheme({c.name: c.spec for c in plan}, cfg.fine_activations)
        quantized = quantize_checkpoint(ckpt, scheme, rounder)
        measured, nbytes = loss(quantized) - base, quantized.size_bytes
        predicted = sum(max(c.cost, 0.0) for c in plan)
        report.rounds.append(Round(knapsack, predicted, measured, nbytes))
        log.info(
            "knapsack budget %.4g: %.2f MB, %+.4f nats (predicted %+.4f)", knapsack, nbytes / 1e6, measured, predicted
        )
        if measured <= cfg.budget and (best is None or nbytes < best[0]):
            best = (nbytes, scheme, measured)
        # aim the next round at the budget: shrink by an overshoot, grow by what was left unspent
        knapsack *= 0.95 * cfg.budget / measured if measured > 0 else 2.0
    if best is None:
        raise WordLMError(
            f"no plan within {cfg.budget:g} nats in {len(report.rounds)} rounds (last: "
            f"{report.rounds[-1].measured:+.4f}); raise --budget"
        )
    nbytes, scheme, measured = best
    report.plan = {n: asdict(s) for n, s in sorted(scheme.plan.items())}
    report.loss, report.nbytes = base + measured, nbytes
    for name in ("int8", "int4"):  # the fixed schemes, same rounder, same slice: points of the plot
        ck = quantize_checkpoint(ckpt, get_scheme(name), rounder)
        report.points[f"wordlm {name}"] = {"nbytes": ck.size_bytes, "loss": loss(ck)}
    for peer in ("torch-dynamic", "onnxruntime-int8"):
        try:
            engine = load_engine(peer, ckpt, threads=cfg.threads)
        except WordLMError as e:  # its runtime is not installed, or it does not take this cell
            log.info("%s left out of the report: %s", peer, e)
            continue
        res = evaluate(engine, ids, bptt=25, batch_size=cfg.streams)
        report.points[peer] = {"nbytes": engine.size_bytes, "loss": res.loss}
    return scheme, report


def markdown(report: BudgetReport) -> str:
    """The report for people: the plan, how the rounds went, and every candidate's measured cost."""
    mb = report.nbytes / 1e6
    lines = [
        f"# Quantization plan: {mb:.2f} MB within {report.budget:g} nats",
        "",
        f"Validation slice: the first {report.val_tokens:,} tokens of the validation split (the test split is never "
        f"used to choose). Float model: {report.float_loss:.4f}; this plan: {report.loss:.4f} "
        f"({report.loss - report.float_loss:+.4f}).",
        "",
        "| weight | bits | group | bytes |",
        "|---|---|---|---|",
    ]
    sizes = {(c.name, c.bits, c.group_size): c.nbytes for c in report.candidates}
    for name, spec in report.plan.items():
        g = spec["group_size"] or "row"
        lines.append(
            f"| {name} | {spec['bits'] or 'float'} | {g} | {sizes[(name, spec['bits'], spec['group_size'])]:,} |"
        )
    lines += ["", "| round | knapsack budget | predicted | measured | MB |", "|---|---|---|---|---|"]
    for i, r in enumerate(report.rounds, 1):
        lines.append(
            f"| {i} | {r.knapsack_budget:.5f} | {r.predicted:+.5f} | {r.measured:+.5f} | {r.nbytes / 1e6:.2f} |"
        )
    lines += ["", "| point | MB | validation loss | vs float |", "|---|---|---|---|"]
    for name, p in report.points.items():
        lines.append(f"| {name} | {p['nbytes'] / 1e6:.2f} | {p['loss']:.4f} | {p['loss'] - report.float_loss:+.4f} |")
    lines += ["", "Every candidate, quantized alone (everything else float):", ""]
    lines += ["| weight | bits | group | bytes | cost (nats) |", "|---|---|---|---|---|"]
    for c in report.candidates:
        lines.append(f"| {c.name} | {c.bits or 'float'} | {c.group_size or 'row'} | {c.nbytes:,} | {c.cost:+.5f} |")
    return "\n".join(lines) + "\n"


def write_report(report: BudgetReport, out: Path) -> list[Path]:
    """report.json, report.md and (with matplotlib) size_vs_loss.png in `out`, each written atomically."""
    import io
    import json

    from wordlm.checkpoint.fileio import atomic_write

    paths = [
        atomic_write(out / "report.json", json.dumps(report.to_dict(), indent=1) + "\n"),
        atomic_write(out / "report.md", markdown(report)),
    ]
    try:
        import matplotlib
    except ImportError:
        log.info("matplotlib is not installed: no size_vs_loss.png (pip install 'wordlm[torch]')")
        return paths
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, p in report.points.items():
        ax.scatter(p["nbytes"] / 1e6, p["loss"] - report.float_loss, label=name)
    tried = [(r.nbytes / 1e6, r.measured) for r in report.rounds]
    ax.scatter(*zip(*tried, strict=True), marker="x", color="grey", label="plans tried (the search's rounds)")
    ax.scatter(report.nbytes / 1e6, report.loss - report.float_loss, marker="*", s=160, label="this plan")
    ax.axhline(report.budget, linestyle=":", color="grey", label=f"budget {report.budget:g}")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("validation loss over float (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return [*paths, atomic_write(out / "size_vs_loss.png", buf.getvalue())]
