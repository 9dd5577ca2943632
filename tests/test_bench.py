"""`wordlm bench` on a tiny model: every variant runs, the JSON is complete, ratios are right."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_cli

from wordlm.bench.run import ALL_VARIANTS, BenchConfig, Row, add_ratios, run_bench, write_results
from wordlm.errors import WordLMError

FIELDS = (
    "size_bytes",
    "loss",
    "ppl",
    "tokens",
    "eval_tokens_per_s",
    "eval_tokens_per_s_all_cores",
    "gen_p50_ms",
    "gen_p99_ms",
    "load_s",
    "peak_rss_bytes",
)


@pytest.fixture(scope="module")
def doc(trained_ckpt, corpus_dir):
    cfg = BenchConfig(max_tokens=400, reps=2, gen_tokens=20, rss_tokens=100, all_cores=2)
    return run_bench(trained_ckpt, cfg, data_dir=str(corpus_dir))


def test_every_variant_runs_with_all_fields(doc):
    rows = {r["variant"]: r for r in doc["results"]}
    assert tuple(rows) == ALL_VARIANTS
    for name, r in rows.items():
        assert r["status"] == "ok", (name, r["reason"])
        for f in FIELDS:
            assert r[f] is not None and r[f] > 0, (name, f)
        assert len(r["eval_tokens_per_s_runs"]) == 2
        assert r["tokens"] == 399
    # same model, same tokens: the float variants agree, the quantized ones are close
    assert abs(rows["onnxruntime"]["loss"] - rows["torch"]["loss"]) < 1e-4
    assert abs(rows["wordlm-int8"]["loss"] - rows["torch"]["loss"]) < 0.02
    for key in ("hardware", "versions", "settings", "created", "checkpoint"):
        assert key in doc


def test_fine_variants_are_asked_by_name(trained_ckpt, corpus_dir):
    cfg = BenchConfig(("wordlm-int8-fine-all",), max_tokens=400, reps=1, gen_tokens=5, all_cores=1, measure_rss=False)
    row = run_bench(trained_ckpt, cfg, data_dir=str(corpus_dir))["results"][0]
    assert row["variant"] == "wordlm-int8-fine-all" and row["status"] == "ok" and row["loss"] > 0
    with pytest.raises(WordLMError, match="unknown bench variant 'wordlm-int8-fine-most'"):
        run_bench(trained_ckpt, BenchConfig(("wordlm-int8-fine-most",)), data_dir=str(corpus_dir))


def test_ratios_are_computed_against_the_baselines(doc):
    rows = {r["variant"]: r for r in doc["results"]}
    w, base = rows["wordlm-int8"], rows["torch-dynamic"]
    r = w["ratios"]["vs_torch-dynamic"]
    assert r["eval_speedup"] == pytest.approx(w["eval_tokens_per_s"] / base["eval_tokens_per_s"])
    assert r["size"] == pytest.approx(w["size_bytes"] / base["size_bytes"])
    assert r["gen_p50"] == pytest.approx(w["gen_p50_ms"] / base["gen_p50_ms"])
    # the tutorial's figures: dynamic int8 is smaller than fp32 (79.7 vs 113.9 MB at full size)
    assert rows["torch-dynamic"]["ratios"]["vs_torch"]["size"] < 1


def test_add_ratios_by_hand():
    a = Row("torch", size_bytes=100, eval_tokens_per_s=10.0, gen_p50_ms=4.0)
    b = Row("wordlm-int8", size_bytes=25, eval_tokens_per_s=40.0, gen_p50_ms=1.0)
    add_ratios([a, b, Row("onnxruntime-int8", "skipped", "no onnxruntime")])
    assert b.ratios == {"vs_torch": {"size": 0.25, "eval_speedup": 4.0, "gen_p50": 0.25}}


def test_written_results(doc, tmp_path):
    paths = write_results(doc, tmp_path)
    assert {p.name for p in paths} == {"results.json", "results.md", "size_vs_ppl.png", "speed_vs_ppl.png"}
    assert json.loads((tmp_path / "results.json").read_text()) == doc
    md = (tmp_path / "results.md").read_text()
    assert "| wordlm-int4 |" in md and "speed vs torch-dynamic" in md
    load = doc["machine_load"]  # the load it ran under, in the document and the table's header
    assert load["header"] in md and load["load_before"] is not None and "1-minute load average" in load["header"]
    assert (tmp_path / "size_vs_ppl.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_runtime_is_reported_as_skipped(trained_ckpt, corpus_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if onnxruntime were not installed
    cfg = BenchConfig(
        variants=("torch", "onnxruntime-int8", "wordlm-int8"),
        max_tokens=100,
        reps=1,
        gen_tokens=5,
        measure_rss=False,
        all_cores=1,
    )
    rows = {r["variant"]: r for r in run_bench(trained_ckpt, cfg, data_dir=str(corpus_dir))["results"]}
    r = rows["onnxruntime-int8"]
    assert r["status"] == "skipped" and "onnxruntime is not installed" in r["reason"] and r["loss"] is None
    # wordlm's runtime needs no onnxruntime (nor torch): its row runs and is measured
    for name in ("torch", "wordlm-int8"):
        assert rows[name]["status"] == "ok" and rows[name]["loss"] > 0 and rows[name]["tokens"] == 99, name


def test_cli_json_and_bad_variant(trained_ckpt, corpus_dir):
    r = run_cli(
        "bench",
        str(trained_ckpt),
        "--data",
        str(corpus_dir),
        "--engines",
        "torch,wordlm-int8",
        "--max-tokens",
        "100",
        "--reps",
        "1",
        "--gen-tokens",
        "5",
        "--no-rss",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert [x["variant"] for x in json.loads(r.stdout)["results"]] == ["torch", "wordlm-int8"]
    r = run_cli("bench", str(trained_ckpt), "--data", str(corpus_dir), "--engines", "tflite")
    assert r.returncode != 0 and "unknown bench variant" in r.stderr and "Traceback" not in r.stderr
