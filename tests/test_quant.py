"""Quantization primitives and schemes: round trips, signal-to-noise, registry, checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.config import preset
from wordlm.errors import WordLMError
from wordlm.quant import SCHEMES, get_scheme, scheme_from_dict
from wordlm.quant.primitives import dequantize, pack_int4, quantize, snr_db, unpack_int4
from wordlm.quantize import dequantize_checkpoint, quantize_checkpoint

rng = np.random.default_rng(0)


def test_int4_pack_unpack_round_trips_bit_for_bit():
    q = rng.integers(-8, 8, (37, 64), dtype=np.int8)
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == (37, 32)
    assert np.array_equal(unpack_int4(packed), q)
    # layout: even column in the low nibble, offset by 8 (what MatMulNBits reads)
    assert int(packed[0, 0]) == (int(q[0, 0]) + 8) | ((int(q[0, 1]) + 8) << 4)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(WordLMError, match=r"\[-8, 7\]"):
        pack_int4(np.array([[8, 0]], np.int8))


@pytest.mark.parametrize("bits, group, min_snr", [(8, None, 38.0), (8, 32, 40.0), (4, 32, 18.0), (4, 256, 15.0)])
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


def test_scheme_registry_and_versions():
    assert set(SCHEMES) >= {"int8", "int4"}
    s = get_scheme("int4", group_size=64)
    assert s.encoder.group_size == 64 and s.rnn.bits == 8
    assert scheme_from_dict(s.to_dict()) == s
    with pytest.raises(WordLMError, match="version 99"):
        scheme_from_dict({**s.to_dict(), "version": 99})
    with pytest.raises(WordLMError, match="version '1'; this wordlm reads version 1"):
        scheme_from_dict({**s.to_dict(), "version": "1"})  # a string is not the version, whatever it says
    with pytest.raises(WordLMError, match="unknown scheme"):
        get_scheme("int3")
    with pytest.raises(WordLMError, match="no group-wise part"):
        get_scheme("int8", group_size=64)
    with pytest.raises(WordLMError, match="power of two"):
        get_scheme("int4", group_size=3)


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


def test_quantizing_twice_is_an_error(trained_ckpt):
    q = quantize_checkpoint(load_checkpoint(trained_ckpt), get_scheme("int8"))
    with pytest.raises(WordLMError, match="already quantized"):
        quantize_checkpoint(q, get_scheme("int8"))
