"""wordlm's engine held to the slow reference (dequantize, then the fp32 torch model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from wordlm.checkpoint import build_model, load_checkpoint
from wordlm.engines import load_engine
from wordlm.engines.torch_fp32 import TorchEngine
from wordlm.engines.wordlm_ort import inverse_cdf
from wordlm.evaluate import evaluate
from wordlm.quant import dequantize_checkpoint, get_scheme, quantize_checkpoint
from wordlm.quant.primitives import snr_db
from wordlm.sampling import Sampling

# int8 and int4 with one scale per decoder row take the native fused decoder; groups of 16 the graph's
SCHEMES = {
    "float": None,
    "int8": get_scheme("int8"),
    "int4": get_scheme("int4", group_size=16),
    "int4-row": get_scheme("int4", group_size=32),
}


@pytest.fixture(scope="module")
def models(trained_ckpt):
    torch.set_num_threads(1)
    ck = load_checkpoint(trained_ckpt)
    out = {}
    for name, scheme in SCHEMES.items():
        q = ck if scheme is None else quantize_checkpoint(ck, scheme)
        out[name] = (load_engine("wordlm", q), TorchEngine(build_model(dequantize_checkpoint(q))))
    return ck, out


@pytest.mark.parametrize("name", list(SCHEMES))
def test_logits_and_state_agree_with_reference(models, corpus, name):
    _, engines = models
    fast, ref = engines[name]
    ids = corpus.test[:60].view(20, 3)  # batch 3, two chunks with the state carried
    sf, sr = fast.init_state(3), ref.init_state(3)
    for chunk in (ids[:12], ids[12:]):
        lf, sf = fast.forward(chunk, sf)
        lr, sr = ref.forward(chunk, sr)
        if name == "float":
            assert torch.allclose(lf, lr, atol=1e-4)
        else:  # int8 activations inside the kernels add a little noise on top of the weights'
            assert snr_db(lr, lf) > 30
    for a, b in zip(sf, sr, strict=True):  # h and c
        assert np.allclose(a, b.numpy(), atol=1e-4 if name == "float" else 0.05)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_fused_loss_and_next_logprobs_agree_with_reference(models, corpus, name):
    _, engines = models
    fast, ref = engines[name]
    a, b = evaluate(fast, corpus.test), evaluate(ref, corpus.test)
    assert a.tokens == b.tokens
    assert abs(a.loss - b.loss) < (1e-5 if name == "float" else 5e-3)
    lf, _ = fast.next_logprobs(corpus.test[:9].view(-1, 1), fast.init_state(1))
    lr, _ = ref.next_logprobs(corpus.test[:9].view(-1, 1), ref.init_state(1))
    assert lf.shape == lr.shape == (1, len(corpus.vocab))
    assert torch.allclose(lf, lr, atol=1e-4 if name == "float" else 0.05)


def test_native_kernels_run_per_row_schemes_close_to_the_reference(models, corpus):
    _, engines = models
    assert engines["float"][0].eval_kernels == engines["int4"][0].eval_kernels == "onnxruntime"
    ids = corpus.test[:201]
    chunk, targets = ids[:-1].view(-1, 2), ids[1:].view(-1, 2)
    for name in ("int8", "int4-row"):
        fast, ref = engines[name]
        assert fast._native_weights() is not None and fast.eval_kernels == "native"
        state = fast.init_state(2)
        native_nll, (h, c) = fast.token_nll(chunk, targets, state)
        ref_nll, (rh, rc) = ref.token_nll(chunk, targets, ref.init_state(2))
        graph_nll, _ = fast._run("nll", chunk, state, targets=targets.numpy())
        assert native_nll.shape == targets.shape and h.shape == state[0].shape
        # per token, the native kernels' 7-bit activations err ~1.5x as much as ORT's 8-bit ones (the
        # means agree: test_fused_loss_and_next_logprobs_agree_with_reference)
        err, graph_err = (np.abs(x - ref_nll.numpy()) for x in (native_nll.numpy(), graph_nll))
        assert err.mean() < 0.03 and err.max() < 0.3 and err.mean() < 2.5 * graph_err.mean()
        assert np.abs(h - rh.numpy()).max() < 0.1 and np.abs(c - rc.numpy()).max() < 0.2
        assert not state[0].any()  # the caller's state is not modified


def test_quantized_loss_stays_close_to_fp32(models, corpus):
    ck, engines = models
    fp32 = evaluate(TorchEngine(build_model(ck)), corpus.test).loss
    assert fp32 < 1.5  # the tiny model did learn the corpus (uniform would be ~3.4)
    assert abs(evaluate(engines["int8"][0], corpus.test).loss - fp32) < 0.01
    assert abs(evaluate(engines["int4"][0], corpus.test).loss - fp32) < 0.05


def test_fused_sampling_follows_the_model_distribution(models, corpus):
    _, engines = models
    fast, ref = engines["int8"]
    ids = corpus.test[:5].view(-1, 1)
    t = 1.5
    probs = torch.softmax(ref.next_logprobs(ids, ref.init_state(1))[0][0] / t, -1)
    gen = torch.Generator().manual_seed(0)
    n = 4000
    draws = [fast.sample_next(ids, fast.init_state(1), Sampling(temperature=t), gen)[0] for _ in range(n)]
    freq = torch.bincount(torch.tensor(draws), minlength=probs.numel()).float() / n
    assert 0.5 * (freq - probs).abs().sum() < 0.05  # total variation distance


def test_inverse_cdf_matches_a_plain_search():
    rng = np.random.default_rng(0)
    for size in (3, 256, 300, 5000):
        p = rng.random(size).astype(np.float32)
        p /= p.sum()
        cdf = np.cumsum(p, dtype=np.float64)
        for u in rng.random(100):
            assert inverse_cdf(p, u) == min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), size - 1)


def test_cli_quantize_then_eval_and_generate(trained_ckpt, corpus_dir, tmp_path):
    r = run_cli("quantize", str(trained_ckpt), "--scheme", "int4", "--group-size", "16", "--out", str(tmp_path / "q4"))
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(tmp_path / "q4"), "--data", str(corpus_dir), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (
        out["engine"] == "wordlm-int4" and out["size_bytes"] == (tmp_path / "q4" / "model.safetensors").stat().st_size
    )
    r = run_cli("generate", str(tmp_path / "q4"), "--words", "12", "--seed", "1", "--prompt", "the cat")
    assert r.returncode == 0 and r.stdout.startswith("the cat"), r.stderr
    r = run_cli("eval", str(tmp_path / "q4"), "--engine", "torch", "--data", str(corpus_dir))
    assert r.returncode != 0 and "--engine wordlm" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("quantize", str(trained_ckpt), "--scheme", "int3", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "unknown scheme" in r.stderr
