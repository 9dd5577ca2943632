"""The native kernels (decoder + loss, LSTM layer) against their numpy references, for every kernel this CPU runs."""

import os
import subprocess
import sys

import numpy as np
import pytest

from wordlm import native
from wordlm.errors import WordLMError

KERNELS = native.available_isas()


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


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return z - _logsumexp(z)[:, None]


def _logsumexp(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    top = z.max(1)
    return top + np.log(np.exp(z - top[:, None]).sum(1))


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize(
    ("m", "n", "k", "bits"),
    [
        (1, 16, 4, 8),
        (7, 37, 12, 8),
        (25, 300, 256, 8),
        (26, 513, 64, 4),
        (1, 1, 4, 8),  # one word: 15 rows of padding
        (3, 1025, 20, 8),  # one word into the second chunk of the vocabulary
        (11, 2049, 36, 8),  # MR = 5 rows, then 5, then 1
        (1, 4100, 256, 8),  # one row (the generation's GEMV): 257 panels, 4 at a time and 1 alone
    ],
)
def test_logits_equal_the_reference_bit_for_bit(isa, m, n, k, bits):
    x, q, s, b, t = _case(m, n, k, bits=bits)
    out = native.decoder_nll(x, native.pack_linear(q, s, b), t, logits=True, isa=isa)
    assert np.array_equal(out.logits, native.reference_linear(x, q, s, b))


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize("m", [1, 4, 5, 6])
def test_extreme_codes_equal_the_reference(isa, m):
    """Weights of -128 and 127 against activation codes of 0 and 127 (rows all positive, all negative,
    and both): the largest products, where an int16 pair sum would saturate with 8-bit activations."""
    rng = np.random.default_rng(5)
    n, k = 67, 516
    q = rng.choice(np.array([-128, 127], np.int8), (n, k))
    q[0], q[1] = -128, 127
    s, b = np.full(n, 1e-3, np.float32), np.zeros(n, np.float32)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), (m, k))
    x[0] = 1.0  # zero point 0, every code 127
    if m > 1:
        x[1] = -1.0  # zero point 127, every code 0
    dec = native.pack_linear(q, s, b)
    ref = native.reference_linear(x, q, s, b)
    assert np.array_equal(native.decoder_nll(x, dec, logits=True, isa=isa).logits, ref)
    assert np.abs(ref[0, :2] - np.array([-128, 127]) * k * 1e-3).max() < 1e-3  # the extremes were reached


@pytest.mark.parametrize("isa", KERNELS)
def test_nll_is_the_log_softmax_of_the_logits(isa):
    x, q, s, b, t = _case(25, 1000, 64, seed=1)
    out = native.decoder_nll(x, native.pack_linear(q, s, b), t, isa=isa)
    ref = -_log_softmax(native.reference_linear(x, q, s, b))[np.arange(len(t)), t]
    assert out.logits is None and out.lse is None
    assert np.allclose(out.nll, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("isa", KERNELS)
def test_nll_survives_a_wide_range_of_logits(isa):
    """The running log-sum-exp rescales as the max grows block by block; exp underflows to 0, not NaN."""
    x, q, s, b, t = _case(5, 2000, 32, seed=2)
    b = np.linspace(-200, 200, b.size, dtype=np.float32)  # the max sits in the last block
    nll = native.decoder_nll(x, native.pack_linear(q, s, b), t, isa=isa).nll
    ref = -_log_softmax(native.reference_linear(x, q, s, b))[np.arange(len(t)), t]
    assert np.isfinite(nll).all()
    assert np.allclose(nll, ref, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("isa", KERNELS)
def test_lse_is_the_log_sum_exp_of_the_logits(isa):
    x, q, s, b, t = _case(6, 3001, 48, seed=6)
    out = native.decoder_nll(x, native.pack_linear(q, s, b), None, logits=True, lse=True, isa=isa)
    assert out.nll is None and out.lse.dtype == np.float32 and out.lse.shape == (6,)
    assert np.allclose(out.lse, _logsumexp(out.logits), rtol=1e-6, atol=1e-5)
    logp = out.logits - out.lse[:, None]  # what a generator samples from
    assert np.allclose(np.exp(logp.astype(np.float64)).sum(1), 1, atol=1e-4)
    with_nll = native.decoder_nll(x, native.pack_linear(q, s, b), t, lse=True, isa=isa)
    assert np.array_equal(with_nll.lse, out.lse)
    assert np.allclose(with_nll.nll, out.lse - out.logits[np.arange(6), t], atol=1e-5)


@pytest.mark.parametrize("isa", KERNELS)
@pytest.mark.parametrize(("m", "n", "k"), [(9, 9000, 256), (1, 33278, 256), (2, 1000, 8)])
def test_every_thread_count_gives_the_same_bits(isa, m, n, k):
    """A fixed partition of the vocabulary, merged in order: the thread count changes nothing."""
    x, q, s, b, t = _case(m, n, k, seed=7)
    dec = native.pack_linear(q, s, b)
    outs = [native.decoder_nll(x, dec, t, logits=True, lse=True, isa=isa, threads=th) for th in (1, 2, 3, 5)]
    for out in outs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(out, outs[0], strict=True))
    assert np.array_equal(outs[0].logits, native.reference_linear(x, q, s, b))


def test_bad_arguments_are_clear_errors():
    x, q, s, b, t = _case(3, 40, 8)
    dec = native.pack_linear(q, s, b)
    with pytest.raises(WordLMError, match="target"):
        native.decoder_nll(x, dec, np.array([0, 40, 1]))
    with pytest.raises(WordLMError, match=r"\[M, 8\]"):
        native.decoder_nll(x[:, :4], dec, t)
    with pytest.raises(WordLMError, match="multiple of 4"):
        native.pack_linear(q[:, :6], s, b)
    for threads in (0, -1):
        with pytest.raises(WordLMError, match="threads"):
            native.decoder_nll(x, dec, t, threads=threads)
    with pytest.raises(WordLMError, match="'sse9'.*portable"):
        native.decoder_nll(x, dec, t, isa="sse9")


def test_activation_codes_are_seven_bit_and_close():
    x = np.random.default_rng(3).standard_normal((9, 40)).astype(np.float32)
    x[3] = 0  # a constant row
    u, s, zp = native.quantize_activations(x)
    assert u.max() <= 127 and zp.min() >= 0 and zp.max() <= 127
    back = (u.astype(np.float32) - zp[:, None]) * s[:, None]
    assert np.all(np.abs(back - x) <= s[:, None] * 0.5 + 1e-6)
    assert np.all(back[3] == 0)


def test_the_kernels_this_cpu_runs():
    assert KERNELS[0] == "portable" and KERNELS == native.ISAS[: len(KERNELS)]
    assert native.best_isa() == KERNELS[-1]
    assert native.active_isa() == (os.environ.get("WORDLM_ISA") or native.best_isa())


def _python(code: str, isa: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORDLM_ISA": isa}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_wordlm_isa_forces_a_kernel():
    code = (
        "import numpy as np; from wordlm import native\n"
        "x, q = np.ones((1, 8), np.float32), np.ones((16, 8), np.int8)\n"
        "out = native.decoder_nll(x, native.pack_linear(q, np.ones(16, np.float32), np.zeros(16, np.float32)), [0])\n"
        "print(native.active_isa(), float(out.nll[0]))"
    )
    run = _python(code, "portable")
    assert run.returncode == 0, run.stderr
    isa, nll = run.stdout.split()
    assert isa == "portable" and abs(float(nll) - np.log(16)) < 1e-5


@pytest.mark.parametrize("value", ["bogus", *(isa for isa in native.ISAS if isa not in KERNELS)])
def test_a_bad_wordlm_isa_is_a_one_line_error_at_first_use(value):
    run = _python("import wordlm.native as n; print('imported', flush=True); n.active_isa()", value)
    assert run.returncode != 0 and run.stdout == "imported\n"  # importing is fine; using the kernels is not
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("wordlm.errors.WordLMError: ") and f"WORDLM_ISA={value!r}" in last and "portable" in last


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


@pytest.mark.parametrize("isa", KERNELS)
def test_lstm_threads_give_the_same_bits(isa):
    x, _, packed, h, c = _lstm_case(25, 4, 512, 256, 2, seed=8)  # 100 x 512 x 1024: worth 2 threads
    one = native.lstm(x, packed, h, c, isa=isa, threads=1)
    for threads in (2, 3):
        out = native.lstm(x, packed, h, c, isa=isa, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(out, one, strict=True))


def test_lstm_carries_its_state():
    x, _, packed, h, c = _lstm_case(10, 2, 8, 8, 2, seed=4)
    y, hn, cn = native.lstm(x, packed, h, c)
    y1, h1, c1 = native.lstm(x[:4], packed, h, c)
    y2, h2, c2 = native.lstm(x[4:], packed, h1, c1)
    assert np.array_equal(np.concatenate([y1, y2]), y) and np.array_equal(h2, hn) and np.array_equal(c2, cn)


def test_lstm_bad_arguments_are_clear_errors():
    x, _, packed, h, c = _lstm_case(3, 1, 8, 4, 2)
    with pytest.raises(WordLMError, match="shapes"):
        native.lstm(x[..., :4], packed, h, c)
    with pytest.raises(WordLMError, match="shapes"):
        native.lstm(x, packed, h[:1], c[:1])
    with pytest.raises(WordLMError, match="threads"):
        native.lstm(x, packed, h, c, threads=0)
