"""The default models: models/wikitext2-lstm (the clone's float model: the tutorial's architecture stored
as fp16, better than the tutorial's pretrained model on the whole test split, and what commands use by
default in a clone) and the quantized models/wikitext2-lstm-15mb (what a wheel has, as wordlm/shipped/;
its card's figures hold). tests/wheel/check.sh checks the wheel itself."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors import safe_open

from wordlm import models
from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.data import load_split
from wordlm.engines import ENGINES, load_engine
from wordlm.errors import WordLMError
from wordlm.models import DEFAULT_MODEL, SHIPPED_MODEL, default_checkpoint
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.tasks import evaluate
from wordlm.train.model import build_model

TUTORIAL_TEST_LOSS = 5.167  # the tutorial's pretrained model, bptt 25, batch 1
SHIPPED_TEST_LOSS = 5.1363  # the packaged model on the whole test split, as its README.md says
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(DEFAULT_MODEL)


def test_it_is_the_tutorial_architecture_stored_as_fp16(shipped):
    c = shipped.config
    assert (c.vocab_size, c.emb_dim, c.hidden_dim, c.num_layers, c.dropout) == (33278, 512, 256, 5, 0.5)
    with safe_open(DEFAULT_MODEL / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert build_model(shipped).decoder.weight.dtype == torch.float32  # upcast on load


def test_it_beats_the_tutorial_on_the_whole_test_split(shipped):
    """wordlm's int8 engine over all 245,569 test tokens (~20 s); its loss is within a hair of the
    fp32 figure the card quotes, and both are below the tutorial's 5.167."""
    test = load_split(shipped.vocab, "test")
    int8 = quantize_checkpoint(shipped, get_scheme("int8"))
    res = evaluate(load_engine("wordlm", int8), test, bptt=25, batch_size=1)
    fp32 = shipped.meta["eval"]["test"]["loss"]
    assert res.tokens == len(test) - 1 == shipped.meta["eval"]["test"]["tokens"]
    assert abs(res.loss - fp32) < 0.002
    assert res.loss < TUTORIAL_TEST_LOSS and fp32 < TUTORIAL_TEST_LOSS


def test_commands_use_it_when_no_checkpoint_is_named(monkeypatch):
    monkeypatch.delenv("WORDLM_MODEL", raising=False)
    r = run_cli("generate", "--words", "12", "--seed", "3", "--prompt", "the king of")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the king of") and len(r.stdout.split()) >= 12


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_runs_an_fp16_checkpoint_like_its_fp32_upcast(engine, tiny_ckpt, corpus, tmp_path):
    ck = load_checkpoint(tiny_ckpt)
    ck.tensors = {k: v.astype(np.float16) for k, v in ck.tensors.items()}
    save_checkpoint(ck, tmp_path / "half")
    half = load_checkpoint(tmp_path / "half")
    upcast = replace(half, tensors={k: v.astype(np.float32) for k, v in half.tensors.items()})
    losses = [evaluate(load_engine(engine, c), corpus.test[:400]).loss for c in (half, upcast)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_the_default_is_named_then_env_then_the_clones_float_model_then_the_packaged_one(monkeypatch, tmp_path):
    monkeypatch.delenv("WORDLM_MODEL", raising=False)
    assert default_checkpoint() == DEFAULT_MODEL  # a clone
    monkeypatch.setenv("WORDLM_MODEL", str(tmp_path / "env"))
    assert default_checkpoint("named") == Path("named")
    assert default_checkpoint() == tmp_path / "env"
    monkeypatch.delenv("WORDLM_MODEL")
    monkeypatch.setattr(models, "DEFAULT_MODEL", tmp_path / "absent")  # an installed wheel has no models/
    assert default_checkpoint() == SHIPPED_MODEL
    monkeypatch.setattr(models, "SHIPPED_MODEL", tmp_path / "absent-too")
    assert default_checkpoint(required=False) is None
    with pytest.raises(WordLMError, match="WORDLM_MODEL"):
        default_checkpoint()


def test_the_packaged_model_is_its_cards_plan_and_loss():
    """The README's command (the plan of benchmarks/budget/front, GPTQ, fine inputs) and its figure on
    the whole test split (~20-40 s on one thread); at most 16 MB so the wheel stays small."""
    ck = load_checkpoint(SHIPPED_MODEL)
    q = json.loads((SHIPPED_MODEL / "config.json").read_text())["quantization"]["params"]
    assert q["plan"] == json.loads((REPO / "benchmarks/budget/front/plan-0.0005.json").read_text())
    assert q["fine_activations"] == "inputs" and ck.meta["quantization_method"] == "gptq"
    assert ck.size_bytes <= 16e6
    assert "wordlm quantize models/wikitext2-lstm --scheme mixed" in (SHIPPED_MODEL / "README.md").read_text()
    test = load_split(ck.vocab, "test")
    res = evaluate(load_engine("wordlm", ck), test, bptt=25, batch_size=1)
    assert res.tokens == len(test) - 1
    assert res.loss == pytest.approx(SHIPPED_TEST_LOSS, abs=5e-5)
