"""The native kernels (decoder + loss, LSTM layer) against their numpy references, for every kernel this CPU runs."""

import numpy as np
import pytest
import torch

from wordlm import native
from wordlm.errors import WordLMError

# kernels above the CPU's best fall back to it, so list only those that really run here
KERNELS = native.ISAS[: native.ISAS.index(native.best_isa()) + 1]


def _case(m: int, n: int, k: int, seed: int = 0, bits: int = 8):
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 128) if bits == 8 else (-8, 8)
    q = rng.integers(lo, hi, (n, k), dtype=np.int8)
    scales = (rng.random(n) * 0.05 + 1e-3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x = np.tanh(rng.standard_normal((m, k)) * 2).astype(np.float32)
    x[0, : k // 2] = np.abs(x[0, : k // 2])  # one row with an asymmetric range
    targets = rng.integers(0, n, m)
    return x, q, scales, bias, targets


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize(("m", "n", "k", "bits"), [(1, 16, 4, 8), (7, 37, 12, 8), (25, 300, 256, 8), (26, 513, 64, 4)])
def test_logits_equal_the_reference_bit_for_bit(isa, m, n, k, bits):
    x, q, s, b, t = _case(m, n, k, bits=bits)
    _, logits = native.decoder_nll(x, native.pack_linear(q, s, b), t, logits=True, isa=isa)
    assert np.array_equal(logits, native.reference_linear(x, q, s, b))


@pytest.mark.parametrize("isa", KERNELS)
def test_nll_is_the_log_softmax_of_the_logits(isa):
    x, q, s, b, t = _case(25, 1000, 64, seed=1)
    nll, _ = native.decoder_nll(x, native.pack_linear(q, s, b), t, isa=isa)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(native.reference_linear(x, q, s, b)).double(), torch.from_numpy(t), reduction="none"
    )
    assert np.allclose(nll, ref.numpy(), rtol=0, atol=2e-5)


def test_nll_survives_a_wide_range_of_logits():
    """The running log-sum-exp rescales as the max grows block by block; exp underflows to 0, not NaN."""
    x, q, s, b, t = _case(5, 2000, 32, seed=2)
    b = np.linspace(-200, 200, b.size, dtype=np.float32)  # the max sits in the last block
    nll, _ = native.decoder_nll(x, native.pack_linear(q, s, b), t)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(native.reference_linear(x, q, s, b)).double(), torch.from_numpy(t), reduction="none"
    )
    assert np.isfinite(nll).all()
    assert np.allclose(nll, ref.numpy(), rtol=1e-6, atol=1e-4)


def test_activation_codes_are_seven_bit_and_close():
    x = np.random.default_rng(3).standard_normal((9, 40)).astype(np.float32)
    x[3] = 0  # a constant row
    u, s, zp = native.quantize_activations(x)
    assert u.max() <= 127 and zp.min() >= 0 and zp.max() <= 127
    back = (u.astype(np.float32) - zp[:, None]) * s[:, None]
    assert np.all(np.abs(back - x) <= s[:, None] * 0.5 + 1e-6)
    assert np.all(back[3] == 0)


def test_bad_arguments_are_clear_errors():
    x, q, s, b, t = _case(3, 40, 8)
    dec = native.pack_linear(q, s, b)
    with pytest.raises(WordLMError, match="target"):
        native.decoder_nll(x, dec, np.array([0, 40, 1]))
    with pytest.raises(WordLMError, match=r"\[M, 8\]"):
        native.decoder_nll(x[:, :4], dec, t)
    with pytest.raises(WordLMError, match="multiple of 4"):
        native.pack_linear(q[:, :6], s, b)


def _lstm_case(steps: int, batch: int, in_dim: int, hidden: int, layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def linear(k: int):
        q = rng.integers(-128, 128, (4 * hidden, k), dtype=np.int8)
        scales = (rng.random(4 * hidden) * 0.01 + 1e-3).astype(np.float32)
        return q, scales, rng.standard_normal(4 * hidden).astype(np.float32)

    x = rng.standard_normal((steps, batch, in_dim)).astype(np.float32)
    h = np.tanh(rng.standard_normal((layers, batch, hidden))).astype(np.float32)
    c = rng.standard_normal((layers, batch, hidden)).astype(np.float32)
    weights = [(linear(in_dim if layer == 0 else hidden), linear(hidden)) for layer in range(layers)]
    packed = native.PackedLSTM([(native.pack_linear(*a), native.pack_linear(*b)) for a, b in weights])
    return x, weights, packed, h, c


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize(
    ("steps", "batch", "in_dim", "hidden", "layers"), [(1, 1, 8, 4, 1), (25, 1, 512, 256, 2), (9, 3, 20, 12, 3)]
)
def test_lstm_follows_the_reference(isa, steps, batch, in_dim, hidden, layers):
    x, weights, packed, h, c = _lstm_case(steps, batch, in_dim, hidden, layers)
    y, hn, cn = native.lstm(x, packed, h, c, isa=isa)
    ry, rh, rc = native.reference_lstm(x, weights, h, c)
    assert y.shape == (steps, batch, hidden) and hn.shape == cn.shape == h.shape
    # the GEMMs are exact; exp differs by ~1 ulp, which can move a 7-bit code of h by one now and then
    assert np.abs(y - ry).max() < 2e-3 and np.abs(y - ry).mean() < 1e-5
    assert np.array_equal(hn[-1], y[-1]) and np.abs(hn - rh).max() < 2e-3 and np.abs(cn - rc).max() < 2e-2
    assert not np.shares_memory(hn, h)  # the caller's state is left alone


def test_lstm_carries_its_state():
    x, _, packed, h, c = _lstm_case(10, 2, 8, 8, 2, seed=4)
    y, hn, cn = native.lstm(x, packed, h, c)
    y1, h1, c1 = native.lstm(x[:4], packed, h, c)
    y2, h2, c2 = native.lstm(x[4:], packed, h1, c1)
    assert np.array_equal(np.concatenate([y1, y2]), y) and np.array_equal(h2, hn) and np.array_equal(c2, cn)


def test_lstm_bad_shapes_are_clear_errors():
    x, _, packed, h, c = _lstm_case(3, 1, 8, 4, 2)
    with pytest.raises(WordLMError, match="shapes"):
        native.lstm(x[..., :4], packed, h, c)
    with pytest.raises(WordLMError, match="shapes"):
        native.lstm(x, packed, h[:1], c[:1])
