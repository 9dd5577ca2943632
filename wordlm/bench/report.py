"""Benchmark results for people: a rich table, a Markdown table and plots (size vs ppl, speed vs ppl)."""

from __future__ import annotations

from pathlib import Path

COLUMNS = (
    ("variant", "variant"),
    ("size MB", lambda r: f"{r['size_bytes'] / 1e6:.1f}"),
    ("loss", lambda r: f"{r['loss']:.4f}"),
    ("ppl", lambda r: f"{r['ppl']:.1f}"),
    ("eval tok/s (1 thr)", lambda r: f"{r['eval_tokens_per_s']:,.0f}"),
    ("eval tok/s (all)", lambda r: f"{r['eval_tokens_per_s_all_cores']:,.0f}"),
    ("gen p50 ms", lambda r: f"{r['gen_p50_ms']:.3f}"),
    ("gen p99 ms", lambda r: f"{r['gen_p99_ms']:.3f}"),
    ("peak RSS MB", lambda r: "-" if r["peak_rss_bytes"] is None else f"{r['peak_rss_bytes'] / 1e6:.0f}"),
    ("load s", lambda r: f"{r['load_s']:.2f}"),
    ("speed vs torch-dynamic", lambda r: _ratio(r, "vs_torch-dynamic", "eval_speedup")),
    ("speed vs ORT int8", lambda r: _ratio(r, "vs_onnxruntime-int8", "eval_speedup")),
    ("gen p50 vs ORT int8", lambda r: _ratio(r, "vs_onnxruntime-int8", "gen_p50")),
    ("size vs torch", lambda r: _ratio(r, "vs_torch", "size")),
)


def _ratio(row: dict, base: str, key: str) -> str:
    value = row["ratios"].get(base, {}).get(key)
    return "-" if value is None else f"{value:.2f}x"


def cells(row: dict) -> list[str]:
    if row["status"] != "ok":
        return [row["variant"], f"skipped: {row['reason']}"] + [""] * (len(COLUMNS) - 2)
    return [row[c] if isinstance(c, str) else c(row) for _, c in COLUMNS]


def rich_table(doc: dict):
    from rich.table import Table

    s = doc["settings"]
    tokens = next((r["tokens"] for r in doc["results"] if r["status"] == "ok"), 0)
    table = Table(title=f"wordlm bench: {s['split']} split, {tokens:,} tokens, {s['protocol']}")
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name == "variant" else "right")
    for row in doc["results"]:
        table.add_row(*cells(row))
    return table


def markdown(doc: dict) -> str:
    s, hw, v = doc["settings"], doc["hardware"], doc["versions"]
    tokens = next((r["tokens"] for r in doc["results"] if r["status"] == "ok"), 0)
    lines = [
        f"Split `{s['split']}`, {tokens:,} tokens, {s['protocol']}; one thread unless noted; eval tokens/s is "
        f"the median of {s['reps']} passes; generation latency over {s['gen_tokens']} tokens (batch 1, "
        f"sampling included); peak RSS of a separate process evaluating {s['rss_tokens']:,} tokens.",
        f"Hardware: {hw['cpu']} ({hw['cores']} cores). Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f", wordlm {doc['wordlm']}. Created {doc['created']}.",
        *([doc["machine_load"]["header"]] if "machine_load" in doc else []),  # older documents: none
        "",
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in doc["results"]]
    return "\n".join(lines) + "\n"


def plots(doc: dict, out: Path) -> list[Path]:
    """size_vs_ppl.png and speed_vs_ppl.png (written atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wordlm.checkpoint.fileio import atomic_write

    rows = [r for r in doc["results"] if r["status"] == "ok"]
    paths = []
    for fname, key, label, scale in (
        ("size_vs_ppl.png", "size_bytes", "size on disk (MB)", 1e-6),
        ("speed_vs_ppl.png", "eval_tokens_per_s", "eval tokens/s, one thread", 1.0),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for r in rows:
            x = r[key] * scale
            ax.scatter(x, r["ppl"], s=40, color="tab:orange" if r["variant"].startswith("wordlm") else "tab:blue")
            ax.annotate(r["variant"], (x, r["ppl"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(f"{doc['settings']['split']} perplexity")
        ax.grid(alpha=0.3)
        ax.set_title(f"{label.split(' (')[0].split(',')[0]} vs perplexity")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        paths.append(atomic_write(out / fname, buf.getvalue()))
    return paths
