"""The size-vs-loss front on the TEST split (issue 14), from the costs a `quantize --budget` search
measured on validation: the least-bytes plan (wordlm.quantize.budget.choose) at each of several budgets,
quantized by GPTQ and evaluated on the whole test split, beside the fixed schemes and the peers.

The plans are chosen from validation costs only; the test split only reports. A plan here is the
knapsack's first choice at that budget (no re-aimed rounds: those measure every plan on validation,
which is the search's job, not this figure's).

Run (after `wordlm quantize CKPT --budget B --method gptq --out Q`, which writes Q/report.json; a
report searched under a lower --min-recurrent-bits serves a higher one: its costs are the same):
  OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/budget_front.py CKPT Q/report.json \\
      --budgets 0.003,0.005,0.01,0.02,0.04,0.08 --out benchmarks/budget/front
Writes front.md, front.json and front.png to --out.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from wordlm.checkpoint import load_checkpoint
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.quant import get_scheme
from wordlm.quantize import make_rounder, quantize_checkpoint
from wordlm.quantize.budget import BudgetConfig, Candidate, choose, memoized, mixed_scheme
from wordlm.tasks import evaluate


def plot(rows: list[dict], fp32: float, path: Path) -> None:
    """Size against loss: the plans as one line (C0), every fixed scheme a point of its own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    plans = [r for r in rows if "budget" in r]
    xs, ys = [r["nbytes"] / 1e6 for r in plans], [r["loss"] - fp32 for r in plans]
    ax.plot(xs, ys, "o-", color="C0", label="--budget plans")
    others = [r for r in rows[1:] if "budget" not in r]
    for i, r in enumerate(others, start=1):
        ax.scatter(r["nbytes"] / 1e6, r["loss"] - fp32, color=f"C{i}", label=r["what"])
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("test loss over fp32 (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("report", help="report.json of a --budget search on this checkpoint")
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], required=True)
    ap.add_argument("--max-tokens", type=int, help="a test prefix (default: the whole split)")
    ap.add_argument(
        "--min-recurrent-bits", type=int, default=BudgetConfig().recurrent_min_bits, help="as quantize --budget's"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    ck = load_checkpoint(args.checkpoint)
    report = json.loads(Path(args.report).read_text())
    least = args.min_recurrent_bits  # a report searched under a lower floor holds these candidates too
    candidates = [
        Candidate(**c) for c in report["candidates"] if not (c["name"].startswith("rnn.") and (c["bits"] or 99) < least)
    ]
    ids = load_split(ck.vocab, "test")[: args.max_tokens]
    rounder = memoized(make_rounder(ck, "gptq", None, None)[0])

    def test_loss(engine) -> float:
        return evaluate(engine, ids).loss

    rows = [{"what": "fp32", "nbytes": ck.size_bytes, "loss": test_loss(load_engine("torch", ck))}]
    fp32 = rows[0]["loss"]
    for budget in args.budgets:
        plan = choose(candidates, budget)
        q = quantize_checkpoint(ck, mixed_scheme({c.name: c.spec for c in plan}), rounder)
        widths = {c.name: c.bits for c in plan}
        rows.append(
            {
                "what": f"plan at {budget:g} (validation)",
                "budget": budget,
                "predicted": sum(max(c.cost, 0.0) for c in plan),
                "plan": widths,
                "nbytes": q.size_bytes,
                "loss": test_loss(load_engine("wordlm", q)),
            }
        )
        print(rows[-1], flush=True)
    for name in ("int8", "int4"):
        q = quantize_checkpoint(ck, get_scheme(name), rounder)
        loss = test_loss(load_engine("wordlm", q))
        rows.append({"what": f"wordlm {name} (GPTQ)", "nbytes": q.size_bytes, "loss": loss})
    for peer in ("torch-dynamic", "onnxruntime-int8"):
        try:
            engine = load_engine(peer, ck)
        except WordLMError as e:
            print(f"{peer} left out: {e}")
            continue
        rows.append({"what": peer, "nbytes": engine.size_bytes, "loss": test_loss(engine)})

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "front.json").write_text(json.dumps({"fp32": fp32, "tokens": int(ids.size), "rows": rows}, indent=1))
    lines = [
        f"Test split, {ids.size:,} tokens, one stream, bptt 25; fp32 {fp32:.4f}.",
        "",
        "| what | MB | predicted (validation) | test loss | vs fp32 |",
        "|---|---|---|---|---|",
    ]
    for r in rows[1:]:
        predicted = f"+{r['predicted']:.4f}" if "predicted" in r else ""
        mb, loss = r["nbytes"] / 1e6, r["loss"]
        lines.append(f"| {r['what']} | {mb:.2f} | {predicted} | {loss:.4f} | {loss - fp32:+.4f} |")
    (args.out / "front.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    plot(rows, fp32, args.out / "front.png")


if __name__ == "__main__":
    main()
