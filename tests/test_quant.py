"""Quantization: packing of every width, round trips, GPTQ, schemes and plans, checkpoints, the engine."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import run_cli

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.config import preset
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.quant import SCHEMES, QSpec, Scheme, get_scheme, scheme_from_dict
from wordlm.quant.gptq import gptq
from wordlm.quant.primitives import WIDTHS, dequantize, pack_bits, qmax, quantize, snr_db, unpack_bits
from wordlm.quantize import dequantize_checkpoint, make_rounder, quantize_checkpoint
from wordlm.runtime import Runtime

rng = np.random.default_rng(0)


@pytest.mark.parametrize("bits", WIDTHS)
@pytest.mark.parametrize("k", [8, 24, 40, 512])
def test_every_width_packs_and_unpacks_bit_for_bit(bits, k):
    q = rng.integers(-qmax(bits) - 1, qmax(bits) + 1, (37, k), dtype=np.int8)  # every code, extremes included
    packed = pack_bits(q, bits)
    assert packed.dtype == (np.int8 if bits == 8 else np.uint8) and packed.shape == (37, k * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits), q)
    assert np.array_equal(unpack_bits(packed[[3, 0, 3]], bits), q[[3, 0, 3]])  # rows gather packed (the embedding)


def test_a_matrix_unpacks_in_blocks_of_rows_with_the_same_codes(monkeypatch):
    """UNPACK_ROWS rows at a time (a model's load would otherwise peak at 8 bytes a code), the last
    block short: the same codes as all at once."""
    from wordlm.quant import primitives

    q = rng.integers(-8, 8, (37, 64), dtype=np.int8)
    monkeypatch.setattr(primitives, "UNPACK_ROWS", 10)
    assert np.array_equal(unpack_bits(pack_bits(q, 4), 4), q)
    assert np.array_equal(unpack_bits(pack_bits(q[:, None], 4), 4), q[:, None])  # any leading shape


def test_four_bits_keep_the_int4_layout():
    """Byte for byte what int4 checkpoints have always held (ONNX Runtime's MatMulNBits layout): the even
    column in the low nibble, offset by 8."""
    q = rng.integers(-8, 8, (5, 64), dtype=np.int8)
    old = ((q[:, 0::2] + 8) | ((q[:, 1::2] + 8) << 4)).astype(np.uint8)
    assert np.array_equal(pack_bits(q, 4), old)


@pytest.mark.parametrize("bits, k, unit", [(3, 12, 8), (5, 4, 8), (2, 6, 4), (6, 2, 4), (4, 7, 2)])
def test_rows_that_do_not_fill_whole_bytes_are_refused(bits, k, unit):
    with pytest.raises(WordLMError, match=f"multiple of {unit} codes"):
        pack_bits(np.zeros((2, k), np.int8), bits)


def test_pack_rejects_out_of_range_codes_and_widths():
    with pytest.raises(WordLMError, match=r"\[-8, 7\]"):
        pack_bits(np.array([[8, 0]], np.int8), 4)
    with pytest.raises(WordLMError, match=r"\[-4, 3\]"):
        pack_bits(np.full((1, 8), -5, np.int8), 3)
    with pytest.raises(WordLMError, match="unsupported bit width 7"):
        pack_bits(np.zeros((1, 8), np.int8), 7)


@pytest.mark.parametrize(
    "bits, group, min_snr",
    [
        (8, None, 38.0),
        (8, 32, 40.0),
        (6, 32, 30.0),
        (5, 32, 24.0),
        (4, 32, 18.0),
        (4, 256, 15.0),
        (3, 32, 12.0),
        (2, 32, 6.0),
    ],
)
def test_quantize_dequantize_signal_to_noise(bits, group, min_snr):
    w = rng.standard_normal((300, 256)).astype(np.float32) * 0.05
    q, s = quantize(w, bits, group or 256)
    assert q.dtype == np.int8 and s.dtype == np.float16
    assert int(q.min()) >= -(2 ** (bits - 1)) and int(q.max()) <= 2 ** (bits - 1) - 1
    assert snr_db(w, dequantize(q, s)) > min_snr


def test_mse_search_never_worse_than_absmax():
    w = rng.standard_normal((64, 128)).astype(np.float32)
    w[0, 0] = 40.0  # an outlier
    plain = dequantize(*quantize(w, 4, 32, mse_search=False))
    searched = dequantize(*quantize(w, 4, 32, mse_search=True))
    assert ((searched - w) ** 2).sum() < ((plain - w) ** 2).sum()


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bits, group", [(4, 64), (4, 16), (3, 32), (2, 64), (8, 64)])
def test_gptq_lowers_a_layers_output_error(bits, group, act_order):
    """On correlated inputs, error compensation beats round to nearest on what the layer outputs."""
    k, n = 64, 48
    mix = rng.standard_normal((k, k)) * np.exp(rng.standard_normal(k))  # correlated, uneven inputs
    x = (rng.standard_normal((1500, k)) @ mix).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    codes, scales = gptq(w, x.T.astype(np.float64) @ x, bits, group, act_order=act_order)
    assert codes.dtype == np.int8 and scales.dtype == np.float16 and scales.shape == (n, k // group)
    assert int(codes.min()) >= -qmax(bits) - 1 and int(codes.max()) <= qmax(bits)
    rtn = np.linalg.norm(x @ (w - dequantize(*quantize(w, bits, group))).T)
    compensated = np.linalg.norm(x @ (w - dequantize(codes, scales)).T)
    assert compensated < 0.9 * rtn


def test_gptq_rounds_dead_inputs_from_zero():
    w = rng.standard_normal((8, 32)).astype(np.float32)
    x = rng.standard_normal((200, 32)).astype(np.float32)
    x[:, 5] = 0  # an input that never fires
    codes, _ = gptq(w, x.T @ x, 4, 32)
    assert not codes[:, 5].any()


def test_scheme_registry_and_versions():
    assert set(SCHEMES) >= {"int8", "int4"}
    s = get_scheme("int4", group_size=64)
    assert s.encoder.group_size == 64 and s.rnn.bits == 8 and s.version == 2
    assert scheme_from_dict(s.to_dict()) == s
    with pytest.raises(WordLMError, match="version 99"):
        scheme_from_dict({**s.to_dict(), "version": 99})
    with pytest.raises(WordLMError, match="version '1'; this wordlm reads versions 1 to 2"):
        scheme_from_dict({**s.to_dict(), "version": "1"})  # a string is not the version, whatever it says
    with pytest.raises(WordLMError, match="unknown scheme"):
        get_scheme("int3")
    with pytest.raises(WordLMError, match="no group-wise part"):
        get_scheme("int8", group_size=64)
    with pytest.raises(WordLMError, match="power of two"):
        get_scheme("int4", group_size=3)
    with pytest.raises(WordLMError, match="bits must be one of 2, 3, 4, 5, 6, 8"):
        get_scheme("int8", plan={"decoder.weight": QSpec(7)})
    with pytest.raises(WordLMError, match="one scale per row"):
        get_scheme("int8", plan={"rnn.weight_hh_l0": QSpec(4, 16)})


def test_version_1_means_what_it_always_meant():
    v1 = {"scheme": "int4", "version": 1, "params": get_scheme("int4").to_dict()["params"]}
    assert scheme_from_dict(v1) == Scheme("int4", 1, QSpec(4, 256), QSpec(8), QSpec(4, 256), "float16")
    for params in (
        {"plan": {"decoder.weight": {"bits": 8, "group_size": None}}},
        {"rnn": {"bits": 6, "group_size": None}},
    ):
        with pytest.raises(WordLMError, match="version 1 has no plan"):
            scheme_from_dict({**v1, "params": {**v1["params"], **params}})


PLAN = {  # every width somewhere, the LSTM per row at three widths, one weight kept float
    "encoder.weight": QSpec(3, 16),
    "rnn.weight_ih_l0": QSpec(6),
    "rnn.weight_hh_l0": QSpec(2),
    "rnn.weight_ih_l1": QSpec(5),
    "rnn.weight_hh_l1": QSpec(None),
    "decoder.weight": QSpec(4),
}


def test_the_plan_decides_each_weights_spec():
    s = get_scheme("int8", plan=PLAN)
    assert s.spec_for("rnn.weight_ih_l0") == QSpec(6) and s.spec_for("rnn.weight_ih_l2") == QSpec(8)
    assert s.spec_for("rnn.weight_hh_l1") is None and s.spec_for("decoder.bias") is None
    assert scheme_from_dict(s.to_dict()) == s
    assert s.to_dict()["params"]["plan"]["encoder.weight"] == {"bits": 3, "group_size": 16}


def test_a_plan_must_name_weights_of_the_model(trained_ckpt):
    ck = load_checkpoint(trained_ckpt)
    for name in ("rnn.weight_ih_l9", "decoder.bias"):
        with pytest.raises(WordLMError, match="not weights of this model"):
            quantize_checkpoint(ck, get_scheme("int8", plan={name: QSpec(4)}))


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_a_mixed_plan_survives_save_and_load_and_the_engine_runs_it(trained_ckpt, corpus_dir, corpus, tmp_path, method):
    ck = load_checkpoint(trained_ckpt)
    calib = {"calib_tokens": 2000, "data_dir": str(corpus_dir)} if method == "gptq" else {}
    q = quantize_checkpoint(ck, get_scheme("int8", plan=PLAN), *make_rounder(ck, method, **calib))
    assert q.tensors["rnn.weight_ih_l0.qweight"].shape == (128, 32 * 6 // 8)
    again = load_checkpoint(save_checkpoint(q, tmp_path / "mixed"))
    assert again.scheme == q.scheme and again.scheme.plan == PLAN and again.meta["quantization_method"] == method
    assert again.tensors.keys() == q.tensors.keys()
    assert all(np.array_equal(again.tensors[k], q.tensors[k]) for k in q.tensors)
    ref = dequantize_checkpoint(again)
    assert snr_db(ck.tensors["rnn.weight_ih_l0"], ref.tensors["rnn.weight_ih_l0"]) > 25
    assert np.array_equal(ref.tensors["rnn.weight_hh_l1"], np.asarray(ck.tensors["rnn.weight_hh_l1"], np.float32))
    # the engine (the float layer on numpy, the others' GEMMs native) against dequantize-then-fp32
    engine, slow = load_engine("wordlm", again), load_engine("wordlm", ref)
    assert "native" in engine.kernels and Runtime(ref).kernels == "lstm numpy float32, decoder numpy float32"
    ids = corpus.test[:60].reshape(20, 3)
    sf, sr = engine.init_state(3), slow.init_state(3)
    for chunk in (ids[:12], ids[12:]):
        lf, sf = engine.forward(chunk, sf)
        lr, sr = slow.forward(chunk, sr)
        assert snr_db(lr, lf) > 30
    assert all(np.allclose(a, b, atol=0.05) for a, b in zip(sf, sr, strict=True))


def test_gptq_lowers_the_loss_of_a_trained_model(trained_ckpt, corpus_dir, corpus):
    from wordlm.tasks import evaluate

    ck = load_checkpoint(trained_ckpt)
    scheme = get_scheme("int8", plan={"decoder.weight": QSpec(2), "encoder.weight": QSpec(2, 16)})
    loss = {
        m: evaluate(load_engine("wordlm", quantize_checkpoint(ck, scheme, *make_rounder(ck, m, **kw))), corpus.valid)
        for m, kw in (("rtn", {}), ("gptq", {"calib_tokens": 2000, "data_dir": str(corpus_dir)}))
    }
    assert loss["gptq"].loss < loss["rtn"].loss, loss


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_checkpoint_round_trip_and_reference(trained_ckpt, tmp_path, name):
    ck = load_checkpoint(trained_ckpt)
    q = quantize_checkpoint(ck, get_scheme(name, group_size=16 if name == "int4" else None))
    save_checkpoint(q, tmp_path / name)
    again = load_checkpoint(tmp_path / name)
    assert again.quant == q.quant
    assert all(np.array_equal(again.tensors[k], q.tensors[k]) for k in q.tensors)
    ref = dequantize_checkpoint(again)
    for k, w in ck.tensors.items():
        assert snr_db(w, ref.tensors[k]) > (30 if name == "int8" or "rnn" in k else 14), k
    assert again.size_bytes < ck.size_bytes / 3  # tiny model: biases weigh a lot; real sizes below


def test_tutorial_sizes_meet_the_targets():
    """int8 at most 30 MB and int4 at most 16 MB on disk for the tutorial's architecture."""
    from wordlm.checkpoint import Checkpoint
    from wordlm.data import Vocab

    cfg = preset("tutorial", 33278)
    vocab = Vocab(f"w{i}" for i in range(33278))
    sizes = {}
    for name in ("int8", "int4"):
        s = get_scheme(name)
        fake = {k: np.zeros(shape, dt[0]) for k, (shape, dt) in s.tensor_spec(cfg).items()}
        sizes[name] = Checkpoint(cfg, vocab, fake, scheme=s).size_bytes
    assert sizes["int8"] <= 30e6 and sizes["int4"] <= 16e6, sizes


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda cfg, p: cfg["quantization"].update(version=7), "version 7"),
        (lambda cfg, p: cfg["quantization"].update(scheme="int2"), "unknown quantization scheme"),
        (lambda cfg, p: cfg["quantization"]["params"]["decoder"].update(bits=4), "decoder.weight.qweight"),
        (lambda cfg, p: cfg.update(quantization={"scheme": "int8"}), "malformed quantization config"),
    ],
)
def test_corrupt_quantized_checkpoints(trained_ckpt, tmp_path, corrupt, message):
    save_checkpoint(quantize_checkpoint(load_checkpoint(trained_ckpt), get_scheme("int8")), tmp_path / "q")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "q", bad)
    cfg = json.loads((bad / "config.json").read_text())
    corrupt(cfg, bad)
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WordLMError, match=message):
        load_checkpoint(bad)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_version_1_checkpoints_still_load(trained_ckpt, tmp_path, name):
    """A checkpoint written before issue 14 (scheme version 1, 4-bit codes as pack_int4 stored them) loads
    to the same codes and runs."""
    ck = load_checkpoint(trained_ckpt)
    v1 = Scheme(name, 1, **{p: getattr(SCHEMES[name], p) for p in ("encoder", "rnn", "decoder", "float_dtype")})
    q = quantize_checkpoint(
        ck, replace(v1, encoder=replace(v1.encoder, group_size=16) if name == "int4" else v1.encoder)
    )
    path = save_checkpoint(q, tmp_path / name)
    assert json.loads((path / "config.json").read_text())["quantization"]["version"] == 1
    again = load_checkpoint(path)
    assert again.scheme.version == 1 and again.scheme == q.scheme
    if name == "int4":
        codes, _ = quantize(np.asarray(ck.tensors["decoder.weight"], np.float32), 4, 32)
        old = ((codes[:, 0::2] + 8) | ((codes[:, 1::2] + 8) << 4)).astype(np.uint8)
        assert np.array_equal(again.tensors["decoder.weight.qweight"], old)
    assert np.isfinite(
        load_engine("wordlm", again).forward(np.zeros((3, 1), np.int64), load_engine("wordlm", again).init_state(1))[0]
    ).all()


def test_quantize_cli_gptq_and_its_errors(trained_ckpt, corpus_dir, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"rnn.weight_ih_l0": {"bits": 6, "group_size": None}}))
    out = tmp_path / "q"
    r = run_cli(
        "quantize",
        str(trained_ckpt),
        "--scheme",
        "int4",
        "--method",
        "gptq",
        "--calib-tokens",
        "1000",
        "--data",
        str(corpus_dir),
        "--plan",
        str(plan),
        "--group-size",
        "16",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "int4 (gptq)" in r.stdout
    q = load_checkpoint(out)
    assert q.scheme.spec_for("rnn.weight_ih_l0") == QSpec(6) and q.meta["calib_tokens"] == 1000
    r = run_cli(
        "quantize", str(trained_ckpt), "--scheme", "int4", "--calib-tokens", "1000", "--out", str(tmp_path / "x")
    )
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "gptq only" in r.stderr
    plan.write_text("{")
    r = run_cli("quantize", str(trained_ckpt), "--scheme", "int4", "--plan", str(plan), "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "not valid JSON" in r.stderr


def test_quantizing_twice_is_an_error(trained_ckpt):
    q = quantize_checkpoint(load_checkpoint(trained_ckpt), get_scheme("int8"))
    with pytest.raises(WordLMError, match="already quantized"):
        quantize_checkpoint(q, get_scheme("int8"))
