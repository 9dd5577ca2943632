"""`quantize --budget`: the knapsack is exact, sizes are what gets written, and on a tiny model the
search respects its budget, reproducibly, with a plan that survives a save and load."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from conftest import run_cli

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.config import expected_shapes
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.quant import QSpec, get_scheme
from wordlm.quantize import dequantize_checkpoint
from wordlm.quantize.budget import BudgetConfig, Candidate, candidate_specs, choose, search, stored_bytes
from wordlm.tasks import evaluate

SMALL = BudgetConfig(budget=0.02, val_tokens=400, streams=2, widths=(2, 4, 8), embedding_groups=(None, 16))


def test_the_knapsack_finds_the_least_bytes_within_budget():
    rng = random.Random(0)
    for _ in range(30):
        cands = [
            Candidate(f"w{i}", b, None, rng.randint(1, 100), rng.uniform(-0.002, 0.01))
            for i in range(4)
            for b in (2, 4, 8)
        ]
        cands += [Candidate(f"w{i}", None, None, 1000, 0.0) for i in range(4)]
        budget = rng.uniform(0.001, 0.03)
        got = choose(cands, budget)
        assert sorted(c.name for c in got) == ["w0", "w1", "w2", "w3"]
        assert sum(max(c.cost, 0) for c in got) <= budget * (1 + 1e-9)
        by = [[c for c in cands if c.name == f"w{i}"] for i in range(4)]
        feasible = [p for p in itertools.product(*by) if sum(max(c.cost, 0) for c in p) <= budget]
        # exact up to the cost grid (a plan within one unit per weight of the budget may be missed)
        tight = [p for p in itertools.product(*by) if sum(max(c.cost, 0) for c in p) <= budget * (1 - 4 / 2000)]
        best = min(sum(c.nbytes for c in p) for p in feasible)
        assert best <= sum(c.nbytes for c in got) <= min(sum(c.nbytes for c in p) for p in tight)


def test_stored_bytes_are_the_bytes_written(trained_ckpt):
    ck = load_checkpoint(trained_ckpt)
    shapes = expected_shapes(ck.config)
    plan = {
        "encoder.weight": QSpec(3, 16),
        "decoder.weight": QSpec(5),
        "rnn.weight_ih_l0": QSpec(6),
        "rnn.weight_hh_l1": QSpec(2),
    }
    tensors = get_scheme("mixed", plan=plan).quantize(ck.tensors)
    for name, spec in plan.items():
        written = tensors[f"{name}.qweight"].nbytes + tensors[f"{name}.scales"].nbytes
        assert written == stored_bytes(shapes[name], spec), name


def test_gemm_weights_get_one_scale_per_row_and_the_embedding_groups():
    cfg = BudgetConfig(widths=(3, 4), embedding_groups=(None, 64), recurrent_min_bits=2)
    assert {s.group_size for s in candidate_specs("encoder.weight", (1000, 512), False, cfg)} == {None, 64}
    assert {s.group_size for s in candidate_specs("encoder.weight", (1000, 256), True, cfg)} == {None}  # tied
    assert {s.group_size for s in candidate_specs("decoder.weight", (1000, 256), False, cfg)} == {None}
    assert [s.bits for s in candidate_specs("rnn.weight_hh_l0", (64, 12), False, cfg)] == [4]  # 3-bit rows: 8k


def test_recurrent_weights_stay_at_or_above_their_floor():
    cfg = BudgetConfig(widths=(2, 3, 4, 6, 8))
    assert [s.bits for s in candidate_specs("rnn.weight_ih_l1", (64, 64), False, cfg)] == [6, 8]
    assert [s.bits for s in candidate_specs("decoder.weight", (64, 64), False, cfg)] == [2, 3, 4, 6, 8]
    low = BudgetConfig(widths=(2, 3, 4, 8), recurrent_min_bits=2)
    assert [s.bits for s in candidate_specs("rnn.weight_ih_l1", (64, 64), False, low)] == [2, 3, 4, 8]
    with pytest.raises(WordLMError, match="--min-recurrent-bits must be one of"):
        BudgetConfig(recurrent_min_bits=7).check()


def test_search_keeps_its_budget_reproducibly_and_the_plan_survives_save_and_load(trained_ckpt, corpus_dir, tmp_path):
    ck = load_checkpoint(trained_ckpt)
    scheme, report = search(ck, SMALL, data_dir=str(corpus_dir))
    assert report.loss - report.float_loss <= SMALL.budget
    assert report.nbytes < min(p["nbytes"] for n, p in report.points.items() if n == "wordlm int8")
    again, _ = search(ck, SMALL, data_dir=str(corpus_dir))
    assert again.plan == scheme.plan  # the same command gives the same plan

    from wordlm.quantize import quantize_checkpoint

    out = save_checkpoint(quantize_checkpoint(ck, scheme), tmp_path / "q")
    loaded = load_checkpoint(out)
    assert loaded.scheme.plan == scheme.plan and loaded.size_bytes == report.nbytes
    ids = load_split(ck.vocab, "valid", corpus_dir)[: SMALL.val_tokens]
    fast = evaluate(load_engine("wordlm", loaded), ids, batch_size=SMALL.streams).loss
    assert fast == pytest.approx(report.loss, abs=1e-5)
    slow = evaluate(load_engine("wordlm", dequantize_checkpoint(loaded)), ids, batch_size=SMALL.streams).loss
    assert abs(fast - slow) < 0.01  # the native kernels against the dequantized reference


def test_a_budget_below_what_any_quantization_costs_falls_back_to_float_weights(trained_ckpt, corpus_dir):
    ck = load_checkpoint(trained_ckpt)
    cfg = BudgetConfig(budget=1e-9, val_tokens=400, streams=2, widths=(2,), embedding_groups=(None,))
    scheme, report = search(ck, cfg, data_dir=str(corpus_dir))
    assert report.loss - report.float_loss <= 1e-9
    assert any(s.bits is None for s in scheme.plan.values())  # 2 bits cost something somewhere


def test_the_cli_writes_a_plan_and_its_report(trained_ckpt, corpus_dir, tmp_path):
    r = run_cli(
        "quantize", str(trained_ckpt), "--budget", "0.02", "--val-tokens", "500", "--data", str(corpus_dir),
        "--method", "rtn", "--out", str(tmp_path / "q"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"]["scheme"] == "mixed" and config["quantization"]["params"]["plan"]
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["loss"] - report["float_loss"] <= 0.02
    assert (tmp_path / "q" / "report.md").read_text().startswith("# Quantization plan")
    for bad, message in (
        (["--budget", "-1"], "argument --budget: must be a finite number"),
        (["--budget", "0.01", "--plan", "p.json"], "--plan and --group-size go with --scheme"),
        (["--budget", "0.01", "--scheme", "int8"], "not allowed with"),
        (["--budget", "0.01", "--min-recurrent-bits", "7"], "--min-recurrent-bits must be one of"),
    ):
        r = run_cli("quantize", str(trained_ckpt), *bad, "--out", str(tmp_path / "bad"))
        assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(WordLMError, match="already quantized"):
        search(load_checkpoint(tmp_path / "q"), SMALL)
