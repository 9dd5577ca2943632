"""wordlm.runtime (and the `wordlm` engine over it) held to the slow reference: dequantize, then the
fp32 torch model; with every kernel this CPU runs (and the x86 tables of the SIMDe build: tests/native_simde.py),
every thread count, and without torch at all."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli
from native_simde import EMULATED, use_kernel

from wordlm import native
from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.engines import load_engine
from wordlm.engines.torch_fp32 import TorchEngine
from wordlm.errors import WordLMError
from wordlm.quant import QSpec, get_scheme
from wordlm.quant.primitives import snr_db
from wordlm.quantize import dequantize_checkpoint, quantize_checkpoint
from wordlm.runtime import Runtime, Sampling, new_rng
from wordlm.tasks import evaluate
from wordlm.train.model import build_model

# int8 and int4 with one scale per decoder row (groups of 32 = the trained model's hidden size) run
# on the native kernels; groups of 16 and float weights on numpy's float32 path; int8-fine: the input
# projections and the decoder with two-code activations (fine_activations "all")
SCHEMES = {
    "float": None,
    "int8": get_scheme("int8"),
    "int8-fine": get_scheme("int8", fine_activations="all"),
    "int4": get_scheme("int4", group_size=16),
    "int4-row": get_scheme("int4", group_size=32),
}
ISAS = native.available_isas()


@pytest.fixture(scope="module")
def models(trained_ckpt):
    torch.set_num_threads(1)
    ck = load_checkpoint(trained_ckpt)
    out = {}
    for name, scheme in SCHEMES.items():
        q = ck if scheme is None else quantize_checkpoint(ck, scheme)
        out[name] = (q, TorchEngine(build_model(dequantize_checkpoint(q))))
    return ck, out


@pytest.fixture
def isa(request, monkeypatch):
    """Run the test with one forced kernel (what WORDLM_ISA does for a whole process): one this CPU runs,
    or an x86 table of the SIMDe build (tests/native_simde.py)."""
    return use_kernel(request.param, monkeypatch)


def test_parts_run_where_they_should(models):
    _, m = models
    kernels = {name: Runtime(q).kernels for name, (q, _) in m.items()}
    assert kernels["float"] == "lstm numpy float32, decoder numpy float32"
    assert kernels["int4"] == f"lstm native {native.active_isa()}, decoder numpy float32"
    assert (
        kernels["int8"]
        == kernels["int4-row"]
        == f"lstm native {native.active_isa()}, decoder native {native.active_isa()}"
    )
    assert kernels["int8-fine"] == kernels["int8"] + ", fine activations (all)"
    for name, int4 in (("int8", False), ("int4-row", True)):  # int4 codes reach the kernels marked as such
        w = Runtime(m[name][0]).weights  # (the int4 scheme's recurrent weights are int8)
        assert w.decoder.packed.codes4 == w.decoder.packed.nibbles == int4  # a decoder's two a byte
        assert not any(p.codes4 for pair in w.recurrent.packed.layers for p in pair)


def test_recurrent_matrices_of_4_bits_or_fewer_are_kept_as_nibbles(models, monkeypatch):
    """A plan's 4- and 2-bit LSTM matrices two codes a byte (generation reads each once per word), the
    others int8 codes; the logits are those of the same codes as int8 (the kernels' contract)."""
    ck, _ = models
    plan = {"rnn.weight_hh_l0": QSpec(4), "rnn.weight_ih_l1": QSpec(2)}
    q = quantize_checkpoint(ck, get_scheme("mixed", plan=plan))
    rt = Runtime(q)
    (ih0, hh0), (ih1, hh1) = rt.weights.recurrent.packed.layers[:2]
    assert hh0.nibbles and ih1.nibbles and not ih0.nibbles and not hh1.nibbles
    pack_linear = native.pack_linear
    monkeypatch.setattr(native, "pack_linear", lambda q, s, b, fine=False, nibbles=False: pack_linear(q, s, b, fine))
    as_int8 = Runtime(q)
    assert not any(p.nibbles for pair in as_int8.weights.recurrent.packed.layers for p in pair)
    ids = np.array([[3, 5], [7, 2], [1, 1]])  # two streams: the unpacked path; one: nibbles as they are
    for batch in (ids, ids[:, :1]):
        want = as_int8.logits(batch, as_int8.init_state(batch.shape[1]))
        got = rt.logits(batch, rt.init_state(batch.shape[1]))
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("isa", [*ISAS, *EMULATED], indirect=True)
def test_fine_activations_bring_the_engine_to_its_weights(models, corpus, isa):
    """The same int8 weights: with fine activations the engine's logits are closer to the
    dequantized reference's (what the weights alone give) than with 7-bit ones."""
    _, m = models
    ids = corpus.test[:60].reshape(20, 3)
    ref = m["int8"][1].forward(ids, m["int8"][1].init_state(3))[0]
    snr = {}
    for name in ("int8", "int8-fine"):
        engine = load_engine("wordlm", m[name][0])
        snr[name] = snr_db(ref, engine.forward(ids, engine.init_state(3))[0])
    assert snr["int8-fine"] > snr["int8"] + 5, snr  # the recurrent GEMMs keep 7 bits: +7.7 dB measured


@pytest.mark.parametrize("isa", [*ISAS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", list(SCHEMES))
def test_logits_and_state_agree_with_reference(models, corpus, name, isa):
    _, m = models
    q, ref = m[name]
    fast = load_engine("wordlm", q)
    ids = corpus.test[:60].reshape(20, 3)  # batch 3, two chunks with the state carried
    sf, sr = fast.init_state(3), ref.init_state(3)
    for chunk in (ids[:12], ids[12:]):
        lf, sf = fast.forward(chunk, sf)
        lr, sr = ref.forward(chunk, sr)
        if name == "float":
            assert np.allclose(lf, lr, atol=1e-4)
        else:  # 7-bit activations inside the kernels add a little noise on top of the weights'
            assert snr_db(lr, lf) > 30
    for a, b in zip(sf, sr, strict=True):  # h and c
        assert np.allclose(a, b, atol=1e-4 if name == "float" else 0.05)


@pytest.mark.parametrize("isa", [*ISAS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", list(SCHEMES))
def test_loss_and_next_logprobs_agree_with_reference(models, corpus, name, isa):
    _, m = models
    q, ref = m[name]
    fast = load_engine("wordlm", q)
    a, b = evaluate(fast, corpus.test), evaluate(ref, corpus.test)
    assert a.tokens == b.tokens
    assert abs(a.loss - b.loss) < (1e-5 if name == "float" else 5e-3)
    ctx = corpus.test[:9].reshape(-1, 1)
    lf, _ = fast.next_logprobs(ctx, fast.init_state(1))
    lr, _ = ref.next_logprobs(ctx, ref.init_state(1))
    assert lf.shape == lr.shape == (1, len(corpus.vocab))
    assert np.allclose(lf, lr, atol=1e-4 if name == "float" else 0.05)
    assert np.isclose(np.exp(lf.astype(np.float64)).sum(), 1, atol=1e-5)


@pytest.fixture(scope="module")
def cells(corpus):
    """A tiny random GRU, tanh RNN, ReLU RNN and projected LSTM (36 units: a block of 32 and one of 4,
    gate rows not a whole number of panels; a projection to 12), each float and int8."""
    from wordlm.checkpoint import Checkpoint
    from wordlm.config import ModelConfig
    from wordlm.train.model import RecurrentLM, checkpoint_tensors

    torch.set_num_threads(1)
    out = {}
    for name in ("gru", "rnn_tanh", "rnn_relu", "lstm-proj"):
        torch.manual_seed(0)
        cell, proj = name.removesuffix("-proj"), 12 if name.endswith("-proj") else 0
        cfg = ModelConfig(len(corpus.vocab), emb_dim=16, hidden_dim=36, num_layers=2, cell=cell, proj_size=proj)
        ck = Checkpoint(cfg, corpus.vocab, checkpoint_tensors(RecurrentLM(cfg)))
        q = quantize_checkpoint(ck, get_scheme("int8"))
        out[name] = (ck, q, TorchEngine(build_model(ck)), TorchEngine(build_model(dequantize_checkpoint(q))))
    return out


@pytest.mark.parametrize("isa", [*ISAS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", ["gru", "rnn_tanh", "rnn_relu", "lstm-proj"])
def test_every_cell_runs_natively_and_agrees_with_reference(cells, corpus, name, isa):
    """Quantized GRU, RNN and projected LSTM run their whole stack in C, as the LSTM does, and agree with
    the dequantized fp32 model (torch); float ones run numpy's cells and agree with torch's."""
    ck, q, ref_float, ref_q = cells[name]
    cell = ck.config.cell
    assert Runtime(q).kernels == f"{cell} native {isa}, decoder native {isa}"
    assert Runtime(ck).kernels == f"{cell} numpy float32, decoder numpy float32"
    ids = corpus.test[:60].reshape(20, 3)  # batch 3, two chunks with the state carried
    for model, ref, close in ((q, ref_q, 0.05), (ck, ref_float, 1e-4)):
        fast = load_engine("wordlm", model)
        sf, sr = fast.init_state(3), ref.init_state(3)
        for chunk in (ids[:12], ids[12:]):
            lf, sf = fast.forward(chunk, sf)
            lr, sr = ref.forward(chunk, sr)
            assert snr_db(lr, lf) > (30 if model is q else 80)
        assert len(sf) == len(sr) and all(np.allclose(a, b, atol=close) for a, b in zip(sf, sr, strict=True))
        a, b = evaluate(fast, corpus.test), evaluate(ref, corpus.test)
        assert a.tokens == b.tokens and abs(a.loss - b.loss) < (5e-3 if model is q else 1e-5)
    one, two = Runtime(q, threads=1), Runtime(q, threads=2)
    tgt = corpus.test[1:61].reshape(20, 3)
    assert np.array_equal(one.token_nll(ids, tgt, one.init_state(3))[0], two.token_nll(ids, tgt, two.init_state(3))[0])


def test_every_kernel_computes_the_same_loss(models, corpus, monkeypatch):
    """The GEMMs are bit-exact across kernels; only exp's last bits differ."""
    q, _ = models[1]["int8"]
    losses = []
    for isa in ISAS:
        monkeypatch.setattr(native, "_active", isa)
        losses.append(evaluate(load_engine("wordlm", q), corpus.test).loss)
    assert max(losses) - min(losses) < 1e-5, dict(zip(ISAS, losses, strict=True))


@pytest.mark.parametrize("name", ["int8", "int4-row", "float"])
def test_thread_counts_give_the_same_numbers(models, corpus, name):
    q, _ = models[1][name]
    one, two, three = (Runtime(q, threads=n) for n in (1, 2, 3))
    ids, tgt = corpus.test[:200].reshape(-1, 2), corpus.test[1:201].reshape(-1, 2)
    a, b, c = (r.token_nll(ids, tgt, r.init_state(2))[0] for r in (one, two, three))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    la, lb = (r.logits(ids[:5], r.init_state(2))[0] for r in (one, two))
    assert np.array_equal(la, lb)
    assert (
        evaluate(load_engine("wordlm", q, threads=1), corpus.test).loss
        == evaluate(load_engine("wordlm", q, threads=2), corpus.test).loss
    )


def test_streams_of_a_batch_are_independent(models, corpus):
    q, _ = models[1]["int8"]
    r = Runtime(q)
    ids = corpus.test[:90].reshape(30, 3)
    nll, (h, c) = r.token_nll(ids[:-1], ids[1:], r.init_state(3))
    for b in range(3):
        one, (h1, c1) = r.token_nll(ids[:-1, b : b + 1], ids[1:, b : b + 1], r.init_state(1))
        assert np.array_equal(one[:, 0], nll[:, b]) and np.array_equal(h1[:, 0], h[:, b])


@pytest.mark.parametrize("name", ["int8", "int4-row", "int8-fine"])
def test_one_streams_lean_step_gives_the_general_paths_words_and_state(models, name):
    """sample_next at one stream and one word (native in every part) takes _Step's five C calls; the
    general path (here: row 0 of two streams, each row exact whatever its batch) draws the same words
    from the same generator and leaves the same state, bit for bit; the caller's state stays untouched.
    A float model has no lean step."""
    q, _ = models[1][name]
    r = Runtime(q, threads=2)
    assert r._step is not None and Runtime(models[1]["float"][0])._step is None
    one, two = r.init_state(1), r.init_state(2)
    rng1, rngs2 = new_rng(7), [new_rng(7), new_rng(8)]
    w1, w2 = np.array([[3]]), np.array([[3, 5]])
    for step in range(12):
        t = Sampling(temperature=0.7 + 0.1 * step)
        before = tuple(a.copy() for a in one)
        w1, new1 = r.sample_next(w1, one, t, rng1)
        assert all(np.array_equal(a, b) for a, b in zip(one, before, strict=True))
        w2, two = r.sample_next(w2, two, [t, t], rngs2)
        one, w1, w2 = new1, w1.reshape(1, 1), w2.reshape(1, 2)
        assert w1[0, 0] == w2[0, 0] and all(np.array_equal(a[:, 0], b[:, 0]) for a, b in zip(one, two, strict=True))


def test_state_is_the_callers(models, corpus):
    q, _ = models[1]["int8"]
    r = Runtime(q)
    state = r.init_state(1)
    ids = corpus.test[:10].reshape(-1, 1)
    _, new = r.next_logprobs(ids, state)
    assert not state[0].any() and not state[1].any()  # the input state is never modified
    split = r.next_logprobs(ids[5:], r.next_logprobs(ids[:5], state)[1])[0]
    assert np.array_equal(split, r.next_logprobs(ids, state)[0])  # carrying the state = one call
    with pytest.raises(WordLMError, match="state must be arrays of shapes"):
        r.next_logprobs(ids, r.init_state(2))
    with pytest.raises(WordLMError, match="ids must lie in"):
        r.next_logprobs(ids + 10_000, state)
    words, lp, _ = r.top_k(ids, state, 5)
    full = r.next_logprobs(ids, state)[0][0]
    assert words.shape == (1, 5) and np.array_equal(words[0], np.argsort(-full, kind="stable")[:5])
    assert np.array_equal(lp[0], full[words[0]])


def test_quantized_loss_stays_close_to_fp32(models, corpus):
    ck, m = models
    fp32 = evaluate(TorchEngine(build_model(ck)), corpus.test).loss
    assert fp32 < 1.5  # the tiny model did learn the corpus (uniform would be ~3.4)
    assert abs(evaluate(load_engine("wordlm", m["int8"][0]), corpus.test).loss - fp32) < 0.01
    assert abs(evaluate(load_engine("wordlm", m["int4"][0]), corpus.test).loss - fp32) < 0.05


def test_sampling_follows_the_model_distribution(models, corpus):
    q, ref = models[1]["int8"]
    r = Runtime(q)
    ids, t = corpus.test[:5].reshape(-1, 1), 1.5
    lr = ref.next_logprobs(ids, ref.init_state(1))[0][0].astype(np.float64) / t
    probs = np.exp(lr - lr.max())
    probs /= probs.sum()
    rng, n = new_rng(0), 4000
    state = r.init_state(1)
    draws = [int(r.sample_next(ids, state, Sampling(temperature=t), rng)[0][0]) for _ in range(n)]
    freq = np.bincount(draws, minlength=probs.size) / n
    assert 0.5 * np.abs(freq - probs).sum() < 0.05  # total variation distance


def test_non_finite_weights_are_an_error_naming_the_tensor(trained_ckpt, corpus_dir, tmp_path):
    ck = load_checkpoint(trained_ckpt)
    ck.tensors = {k: np.array(v) for k, v in ck.tensors.items()}
    ck.tensors["rnn.weight_hh_l1"][3, 4] = np.nan
    with pytest.raises(WordLMError, match="rnn.weight_hh_l1 holds NaN"):
        save_checkpoint(ck, tmp_path / "nan")
    save_checkpoint(load_checkpoint(trained_ckpt), tmp_path / "nan")  # then damaged on disk
    data = bytearray((tmp_path / "nan" / "model.safetensors").read_bytes())
    at = data.rindex(np.float32(ck.tensors["decoder.bias"][-1]).tobytes())
    data[at : at + 4] = np.float32(np.inf).tobytes()
    (tmp_path / "nan" / "model.safetensors").write_bytes(bytes(data))
    for engine in ("torch", "wordlm"):
        r = run_cli("eval", str(tmp_path / "nan"), "--engine", engine, "--data", str(corpus_dir))
        assert r.returncode == 2 and "holds NaN or infinite values" in r.stderr and "Traceback" not in r.stderr


NO_TORCH = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxruntime"):
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")
sys.meta_path.insert(0, Refuse())
from wordlm.cli import main
code = main(sys.argv[1:])
assert not any(m.split(".")[0] in ("torch", "onnx", "onnxruntime") for m in sys.modules), "torch was imported"
sys.exit(code)
"""


def _no_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=300)


def test_eval_generate_and_next_words_run_without_torch(trained_ckpt, corpus, corpus_dir, tmp_path):
    out = tmp_path / "q8"
    r = _no_torch("quantize", str(trained_ckpt), "--scheme", "int8", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = _no_torch("eval", str(out), "--data", str(corpus_dir), "--json", "--threads", "2")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    q = load_checkpoint(out)
    assert got["engine"] == "wordlm-int8" and got["loss"] == evaluate(load_engine("wordlm", q), corpus.test).loss
    r = _no_torch("generate", str(out), "--words", "12", "--seed", "3", "--prompt", "the cat")
    assert r.returncode == 0 and r.stdout.startswith("the cat") and len(r.stdout.split()) >= 10, r.stderr
    code = f"""
from wordlm.checkpoint import load_checkpoint
from wordlm.tasks.generate import context_ids
from wordlm.runtime import Runtime
import numpy as np
ck = load_checkpoint({str(out)!r})
rt = Runtime(ck)
words, lp, _ = rt.top_k(np.array(context_ids(ck.vocab, "the cat")).reshape(-1, 1), rt.init_state(1), 3)
print(" ".join(ck.vocab.itos[i] for i in words[0]))
"""
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH.split("from wordlm.cli")[0] + code], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 3 and r.stdout.split()[0] in ("sat", "looked", "ran", "slept")
    r = _no_torch("train", "--out", str(tmp_path / "t"), "--data", str(corpus_dir))
    assert r.returncode == 2 and "pip install 'wordlm[torch]'" in r.stderr and "Traceback" not in r.stderr


def test_cli_quantize_then_eval_and_generate(trained_ckpt, corpus_dir, tmp_path):
    r = run_cli("quantize", str(trained_ckpt), "--scheme", "int4", "--group-size", "16", "--out", str(tmp_path / "q4"))
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", str(tmp_path / "q4"), "--data", str(corpus_dir), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["engine"] == "wordlm-int4"
    assert out["size_bytes"] == (tmp_path / "q4" / "model.safetensors").stat().st_size
    r = run_cli("generate", str(tmp_path / "q4"), "--words", "12", "--seed", "1", "--prompt", "the cat")
    assert r.returncode == 0 and r.stdout.startswith("the cat"), r.stderr
    r = run_cli("eval", str(tmp_path / "q4"), "--engine", "torch", "--data", str(corpus_dir))
    assert r.returncode != 0 and "--engine wordlm" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", str(tmp_path / "q4"), "--threads", "100000", "--data", str(corpus_dir))
    assert r.returncode == 2 and "--threads: must be an integer from 1 to" in r.stderr
    r = run_cli("quantize", str(trained_ckpt), "--scheme", "int3", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "unknown scheme" in r.stderr


def test_cli_fine_activations_are_kept_in_the_checkpoint(trained_ckpt, corpus_dir, tmp_path):
    r = run_cli(
        "quantize", str(trained_ckpt), "--scheme", "int8", "--fine-activations", "inputs", "--out", str(tmp_path / "f")
    )
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    assert config["quantization"]["params"]["fine_activations"] == "inputs"
    weights = Runtime(load_checkpoint(tmp_path / "f")).weights
    assert weights.kernels.endswith(", fine activations (inputs)") and not weights.decoder.packed.fine
    assert all(w_ih.fine and not w_hh.fine for w_ih, w_hh in weights.recurrent.packed.layers)
    r = run_cli("eval", str(tmp_path / "f"), "--data", str(corpus_dir), "--json")
    assert r.returncode == 0, r.stderr
    plain = json.loads((tmp_path / "f" / "config.json").read_text())
    plain["quantization"]["params"]["fine_activations"] = "yes"
    (tmp_path / "f" / "config.json").write_text(json.dumps(plain))
    r = run_cli("eval", str(tmp_path / "f"), "--data", str(corpus_dir))
    assert r.returncode != 0 and "fine_activations must be one of none, inputs, all" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_native_sampler_is_the_inverse_cdf_of_the_tempered_softmax():
    """native.sample draws the same word as a float64 inverse CDF at the same u (the weights' float32
    rounding may move a boundary by an ulp: allow a rare miss), at any temperature and vocabulary size."""
    rng = np.random.default_rng(0)
    for n in (1, 7, 256, 1000, 33278):
        z = (rng.standard_normal(n) * 4).astype(np.float32)
        for t in (0.3, 1.0, 3.0):
            p = np.exp((z.astype(np.float64) - z.max()) / t)
            cdf = np.cumsum(p)
            us = rng.random(300)
            want = np.minimum(np.searchsorted(cdf, us * cdf[-1], side="right"), n - 1)
            got = np.array([native.sample(z, t, u) for u in us])
            assert (got == want).mean() > 0.99 and (got < n).all() and (got >= 0).all()
    assert native.sample(np.array([0, -1e30, 5], np.float32), 1e-30, 0.999) == 2  # the mode, never NaN
    with pytest.raises(WordLMError, match="native sampler"):
        native.sample(np.zeros(3, np.float32), 1.0, 1.0)
