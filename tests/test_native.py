"""The native kernels (decoder + loss, recurrent stacks of every cell) against their numpy references, for every
kernel this CPU runs, and on x86 for every x86 table compiled against SIMDe (tests/native_simde.py), whatever
the CPU."""

import os
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest
from native_simde import EMULATED, use_kernel

from wordlm import cells, native
from wordlm.errors import WordLMError

KERNELS = native.available_isas()


@pytest.fixture
def isa(request, monkeypatch) -> str:
    """A kernel this CPU runs, or an x86 table of the SIMDe build (`simde-avx2`, `simde-avx512-vnni`:
    tests/native_simde.py), which any x86-64 runs: the name to pass as isa=."""
    return use_kernel(request.param, monkeypatch)


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


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
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
        (1, 100, 36, 8),  # one row, an odd number of 4-input groups (the kernels take two at a time)
        (5, 70, 28, 8),  # five rows, the same
    ],
)
def test_logits_equal_the_reference_bit_for_bit(isa, m, n, k, bits):
    x, q, s, b, t = _case(m, n, k, bits=bits)
    out = native.decoder_nll(x, native.pack_linear(q, s, b), t, logits=True, isa=isa)
    assert np.array_equal(out.logits, native.reference_linear(x, q, s, b))


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_a_rows_range_is_found_wherever_its_extremes_lie(isa):
    """The kernels' activation range (min and max with 0, 16 at a time, then the tail): a row's lowest
    and highest value at every position of k = 44 (two vector steps and a tail of 12), rows all
    positive and all negative, -0.0 beside the zeros; codes, so logits, equal the reference's."""
    k, rng = 44, np.random.default_rng(8)
    rows = []
    for p in range(k):
        for sign in (1.0, -1.0):
            row = rng.uniform(0.1, 0.9, k).astype(np.float32) * sign
            row[p] = 3.0 * sign
            row[(p * 7 + 5) % k] = -2.0 * sign if p % 2 else row[(p * 7 + 5) % k]
            rows.append(row)
    zeros = np.zeros(k, np.float32)
    zeros[::3] = -0.0
    x = np.stack([*rows, zeros])
    n, q = 19, rng.integers(-128, 128, (19, k)).astype(np.int8)
    s, b = np.full(n, 1e-2, np.float32), rng.standard_normal(n).astype(np.float32)
    out = native.decoder_nll(x, native.pack_linear(q, s, b), logits=True, isa=isa)
    assert np.array_equal(out.logits, native.reference_linear(x, q, s, b))


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
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


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_nll_is_the_log_softmax_of_the_logits(isa):
    x, q, s, b, t = _case(25, 1000, 64, seed=1)
    out = native.decoder_nll(x, native.pack_linear(q, s, b), t, isa=isa)
    ref = -_log_softmax(native.reference_linear(x, q, s, b))[np.arange(len(t)), t]
    assert out.logits is None and out.lse is None
    assert np.allclose(out.nll, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_nll_survives_a_wide_range_of_logits(isa):
    """The running log-sum-exp rescales as the max grows block by block; exp underflows to 0, not NaN."""
    x, q, s, b, t = _case(5, 2000, 32, seed=2)
    b = np.linspace(-200, 200, b.size, dtype=np.float32)  # the max sits in the last block
    nll = native.decoder_nll(x, native.pack_linear(q, s, b), t, isa=isa).nll
    ref = -_log_softmax(native.reference_linear(x, q, s, b))[np.arange(len(t)), t]
    assert np.isfinite(nll).all()
    assert np.allclose(nll, ref, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
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


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
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


# every cell of the recurrent kernels: torch's cells, and the LSTM with a projection (h = W_hr m)
CELLS = [*cells.CELLS, "lstm-proj"]  # every cell of the registry, and the LSTM with a projection


class _RnnCase(NamedTuple):
    x: np.ndarray
    weights: list  # per layer (W_ih, W_hh[, W_hr]) as (codes, scales, bias): reference_recurrent's
    packed: native.PackedRecurrent
    state: tuple[np.ndarray, ...]  # (h, c) for an LSTM, (h,) otherwise


def _rnn_case(
    name: str, steps: int, batch: int, in_dim: int, hidden: int, layers: int, seed: int = 0, bits: int = 8
) -> _RnnCase:
    """A random int8 stack of cell `name` (one of CELLS); a projection to half the units (at least 4).
    bits=4: every code within [-8, 7] (int4 weights)."""
    rng = np.random.default_rng(seed)
    lo, hi = (-128, 128) if bits == 8 else (-8, 8)
    cell, proj = name.removesuffix("-proj"), name.endswith("-proj")
    out = max(4, hidden // 8 * 4) if proj else hidden
    gates = cells.CELLS[cell].gates

    def linear(n: int, k: int, bias: bool = True):
        q = rng.integers(lo, hi, (n, k), dtype=np.int8)
        scales = (rng.random(n) * 0.01 + 1e-3).astype(np.float32) * (16 if bits == 4 else 1)
        return q, scales, rng.standard_normal(n).astype(np.float32) if bias else np.zeros(n, np.float32)

    x = rng.standard_normal((steps, batch, in_dim)).astype(np.float32)
    state = (np.tanh(rng.standard_normal((layers, batch, out))).astype(np.float32),)
    if cell == "lstm":
        state += (rng.standard_normal((layers, batch, hidden)).astype(np.float32),)
    weights = [
        (linear(gates * hidden, in_dim if layer == 0 else out), linear(gates * hidden, out))
        + ((linear(out, hidden, bias=False),) if proj else ())
        for layer in range(layers)
    ]
    return _RnnCase(x, weights, _packed(cell, weights), state)


def _packed(cell: str, weights: list, fine: bool = False, nibbles: bool = False) -> native.PackedRecurrent:
    """The layers (W_ih, W_hh[, W_hr]) of codes, scales and bias, packed for the kernels (`fine`: W_ih's
    inputs as two codes; `nibbles`: int4 codes two a byte)."""
    pack = [
        [native.pack_linear(*m, fine=fine and i == 0, nibbles=nibbles) for i, m in enumerate(layer)]
        for layer in weights
    ]
    proj = [p[2] for p in pack] if len(pack[0]) == 3 else None
    return native.PackedRecurrent([(a, b) for a, b, *_ in pack], cell, proj)


def _one_code_of_m(layer: tuple, x: np.ndarray, state: tuple[np.ndarray, ...]) -> np.ndarray:
    """How far a projected LSTM's h [B, P] moves at one step when one 7-bit code of m = o * tanh(c) moves by
    one (the kernel's exp and numpy's may round it either side): per row, m's scale times the largest
    |code| x scale of each row of W_hr."""
    wih, whh, (q, scales, _) = layer
    m = native.reference_recurrent("lstm", x, [(wih, whh)], *state)[0][0]  # no W_hr: h is m
    return native.quantize_activations(m)[1][:, None] * (np.abs(q.astype(np.float32)).max(1) * scales) * 1.01


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize(
    ("steps", "batch", "in_dim", "hidden", "layers"), [(1, 1, 8, 4, 1), (25, 1, 512, 256, 2), (9, 3, 20, 36, 3)]
)
def test_recurrent_follows_the_reference(isa, name, steps, batch, in_dim, hidden, layers):
    """The stack is its layers chained, and each layer its steps chained, bit for bit; step by step from
    the kernel's own input and state, the reference's GEMMs are the kernel's bit for bit and its cells
    differ by exp's last bits (which may move a 7-bit code of a projected LSTM's m by one, seldom:
    `_one_code_of_m`). A ReLU RNN, with no exp, equals the reference over the whole stack bit for bit."""
    x, weights, packed, state = _rnn_case(name, steps, batch, in_dim, hidden, layers, seed=steps + hidden)
    cell = packed.cell
    y, *last = native.recurrent(x, packed, *state, isa=isa)
    assert y.shape == (steps, batch, packed.out_dim) and [s.shape for s in last] == [s.shape for s in state]
    assert np.array_equal(last[0][-1], y[-1]) and not np.shares_memory(last[0], state[0])  # the caller's is left alone
    inp = x
    for layer, w in enumerate(weights):
        one, s, ys = _packed(cell, [w]), tuple(st[layer : layer + 1] for st in state), []
        for t in range(steps):
            ry, *rs = native.reference_recurrent(cell, inp[t : t + 1], [w], *s)
            slack = _one_code_of_m(w, inp[t : t + 1], s) if len(w) == 3 else 0  # for h = y, not c
            ky, *s = native.recurrent(inp[t : t + 1], one, *s, isa=isa)
            for got, want, more in zip((ky, *s), (ry, *rs), (slack, slack, 0)[: len(s) + 1], strict=True):
                error = np.abs(got - want) - (2e-6 + 1e-5 * np.abs(want) + more)
                assert (error <= 0).all(), (layer, t, np.abs(got - want).max())
            ys.append(ky[0])
        inp = np.stack(ys)
        assert all(np.array_equal(a[layer : layer + 1], b) for a, b in zip(last, s, strict=True)), layer
    assert np.array_equal(inp, y)
    if cell == "rnn_relu":
        ref = native.reference_recurrent(cell, x, weights, *state)
        assert all(np.array_equal(a, b) for a, b in zip(ref, (y, *last), strict=True))


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", CELLS)
def test_recurrent_threads_give_the_same_bits(isa, name):
    x, _, packed, state = _rnn_case(name, 25, 4, 512, 256, 2, seed=8)  # 100 x 512 x 1024: worth 2 threads
    one = native.recurrent(x, packed, *state, isa=isa, threads=1)
    for threads in (2, 3):
        out = native.recurrent(x, packed, *state, isa=isa, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(out, one, strict=True)), threads


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("hidden", [12, 40, 100, 256])  # blocks of 32 units: part of 1, 1 + 8 units, 3 + 4, 8
@pytest.mark.parametrize("batch", [1, 3])
def test_recurrent_every_thread_count_gives_the_same_bits(isa, name, hidden, batch):
    """Blocks of 32 hidden units (gate rows padded to whole panels in the last one), whichever thread
    computes one: 1 to 4 threads, the same y and state."""
    assert native.lib().wl_unit_block() == native.UNIT_BLOCK  # C and Python order the rows alike
    layers = 2 if hidden == 256 else 3
    x, weights, packed, state = _rnn_case(name, 7, batch, 20, hidden, layers, seed=hidden + batch)
    one = native.recurrent(x, packed, *state, isa=isa, threads=1)
    for threads in (2, 3, 4):
        out = native.recurrent(x, packed, *state, isa=isa, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(out, one, strict=True)), threads
    first = tuple(s[:1] for s in state)  # and the blocks are the right rows: the first layer's first step
    got = native.recurrent(x[:1], _packed(packed.cell, weights[:1]), *first, isa=isa)
    want = native.reference_recurrent(packed.cell, x[:1], weights[:1], *first)
    assert all(np.allclose(a, b, rtol=1e-5, atol=2e-6) for a, b in zip(got, want, strict=True))


def test_recurrent_bad_arguments_are_clear_errors():
    x, weights, packed, state = _rnn_case("lstm", 3, 1, 8, 4, 2)
    (wih, whh), _ = weights
    with pytest.raises(WordLMError, match="4 x 4 gate rows"):  # W_ih with 3H rows: not an LSTM's
        native.PackedRecurrent([(native.pack_linear(*(a[:12] for a in wih)), native.pack_linear(*whh))])
    with pytest.raises(WordLMError, match="3 x 4 gate rows"):  # and a GRU's are not an LSTM's
        native.PackedRecurrent([(native.pack_linear(*wih), native.pack_linear(*whh))], "gru")
    with pytest.raises(WordLMError, match="cell must be one of .*got 'lstm2'"):
        native.PackedRecurrent([(native.pack_linear(*wih), native.pack_linear(*whh))], "lstm2")
    with pytest.raises(WordLMError, match="an LSTM's"):
        pair = (native.pack_linear(*(a[:4] for a in wih)), native.pack_linear(*(a[:4] for a in whh)))
        native.PackedRecurrent([pair], "rnn_tanh", [native.pack_linear(*(a[:4] for a in whh))])
    with pytest.raises(WordLMError, match="shapes"):
        native.recurrent(x[..., :4], packed, *state)
    with pytest.raises(WordLMError, match="shapes"):
        native.recurrent(x, packed, state[0][:1], state[1][:1])
    with pytest.raises(WordLMError, match="shapes"):
        native.recurrent(x, packed, state[0])  # an LSTM's state is (h, c)
    with pytest.raises(WordLMError, match="threads"):
        native.recurrent(x, packed, *state, threads=0)


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_decoder_threads_one_to_five_give_the_same_bits(isa):
    x, q, s, b, t = _case(12, 33278, 64, seed=9)
    dec = native.pack_linear(q, s, b)
    one = native.decoder_nll(x, dec, t, logits=True, lse=True, isa=isa, threads=1)
    for threads in (2, 3, 4, 5):
        out = native.decoder_nll(x, dec, t, logits=True, lse=True, isa=isa, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(out, one, strict=True)), threads


def test_consecutive_calls_with_changing_thread_counts():
    """The pool grows to the largest count asked and serves smaller ones; nothing carries over."""
    x, q, s, b, t = _case(25, 9000, 256, seed=10)
    dec = native.pack_linear(q, s, b)
    xl, _, packed, state = _rnn_case("lstm-proj", 25, 1, 64, 40, 2, seed=11)  # two phases per step
    want_dec = native.decoder_nll(x, dec, t, lse=True)
    want_rnn = native.recurrent(xl, packed, *state)
    for threads in [2, 1, 3, 2, 5, 1, 4, 2, 2, 3, 1, 6, 2] * 3:
        got = native.decoder_nll(x, dec, t, lse=True, threads=threads)
        assert np.array_equal(got.nll, want_dec.nll) and np.array_equal(got.lse, want_dec.lse)
        got_rnn = native.recurrent(xl, packed, *state, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(got_rnn, want_rnn, strict=True))


def test_calls_from_several_python_threads_at_once():
    """ctypes releases the GIL: calls overlap; one runs on the pool, the others alone, all the same bits."""
    import threading

    x, q, s, b, t = _case(25, 5000, 128, seed=12)
    dec = native.pack_linear(q, s, b)
    xl, _, packed, state = _rnn_case("gru", 25, 1, 64, 64, 2, seed=13)
    want_dec, want_rnn = native.decoder_nll(x, dec, t).nll, native.recurrent(xl, packed, *state)[0]
    bad = []

    def work(threads: int) -> None:
        for _ in range(20):
            if not np.array_equal(native.decoder_nll(x, dec, t, threads=threads).nll, want_dec):
                bad.append(("decoder", threads))
            if not np.array_equal(native.recurrent(xl, packed, *state, threads=threads)[0], want_rnn):
                bad.append(("gru", threads))

    runners = [threading.Thread(target=work, args=(n,)) for n in (2, 3, 1, 2)]
    for r in runners:
        r.start()
    for r in runners:
        r.join(timeout=120)
    assert not any(r.is_alive() for r in runners) and not bad


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_can_use_threads():
    """After fork the child has none of the parent's workers: it must start its own, not wait forever."""
    import signal
    import time

    x, q, s, b, t = _case(25, 9000, 64, seed=14)
    dec = native.pack_linear(q, s, b)
    xl, _, packed, state = _rnn_case("lstm", 9, 1, 32, 48, 2, seed=15)
    want_dec = native.decoder_nll(x, dec, t, threads=2).nll  # the parent's pool is up
    want_lstm = native.recurrent(xl, packed, *state, threads=2)[0]
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 when both calls give the parent's bits
        code = 1
        try:
            ok = np.array_equal(native.decoder_nll(x, dec, t, threads=2).nll, want_dec)
            ok = ok and np.array_equal(native.recurrent(xl, packed, *state, threads=3)[0], want_lstm)
            code = 0 if ok else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in a threaded call")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert np.array_equal(native.decoder_nll(x, dec, t, threads=2).nll, want_dec)  # the parent's pool still works


# ---- fine activations: each row's residual quantized again and its product added (kernels.c) ----


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize(("m", "n", "k"), [(1, 16, 4), (7, 37, 12), (25, 300, 256), (1, 4100, 256), (11, 2049, 36)])
def test_fine_logits_equal_the_reference_bit_for_bit_on_every_thread_count(isa, m, n, k):
    x, q, s, b, t = _case(m, n, k, seed=m + n)
    want = native.reference_linear(x, q, s, b, fine=True)
    for threads in (1, 2, 3):
        out = native.decoder_nll(x, native.pack_linear(q, s, b, fine=True), t, logits=True, isa=isa, threads=threads)
        assert np.array_equal(out.logits, want), threads
        ref = -_log_softmax(want)[np.arange(m), t]
        np.testing.assert_allclose(out.nll, ref, rtol=1e-5, atol=1e-5)


def test_fine_activations_shrink_the_activation_error_a_hundredfold():
    """Against the float product of the same codes: 7-bit activations' error, and the two-code one's."""
    x, q, s, b, _ = _case(25, 300, 256, seed=3)
    exact = x.astype(np.float64) @ (q.astype(np.float64) * s[:, None]).T + b
    coarse = np.abs(native.reference_linear(x, q, s, b) - exact).mean()
    fine = np.abs(native.decoder_nll(x, native.pack_linear(q, s, b, fine=True), logits=True).logits - exact).mean()
    assert fine < coarse / 100, (fine, coarse)


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", CELLS)
def test_fine_input_projections_follow_the_reference(isa, name):
    """W_ih fine: a ReLU RNN (no exp) equals the reference over the whole stack bit for bit; every cell
    gives the same bits on 1-3 threads and stays within exp's last bits of the reference on a step."""
    x, weights, _, state = _rnn_case(name, 9, 3, 20, 40, 2, seed=11)
    cell, packed = name.removesuffix("-proj"), _packed(name.removesuffix("-proj"), weights, fine=True)
    one = native.recurrent(x, packed, *state, isa=isa)
    for threads in (2, 3):
        out = native.recurrent(x, packed, *state, isa=isa, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(out, one, strict=True)), threads
    first = tuple(st[:1] for st in state)
    got = native.recurrent(x[:1], _packed(cell, weights[:1], fine=True), *first, isa=isa)
    want = native.reference_recurrent(cell, x[:1], weights[:1], *first, fine=True)
    assert all(np.allclose(a, b, rtol=1e-5, atol=2e-6) for a, b in zip(got, want, strict=True))
    if cell == "rnn_relu":
        ref = native.reference_recurrent(cell, x, weights, *state, fine=True)
        assert all(np.array_equal(a, b) for a, b in zip(ref, one, strict=True))
        assert not np.array_equal(one[0], native.recurrent(x, _packed(cell, weights), *state, isa=isa)[0])


def test_only_input_projections_take_fine_activations():
    _, weights, _, _ = _rnn_case("lstm", 1, 1, 8, 4, 1)
    ((wih, whh),) = weights
    with pytest.raises(WordLMError, match="only the input projections"):
        native.PackedRecurrent([(native.pack_linear(*wih), native.pack_linear(*whh, fine=True))], "lstm")


# ---- int4 weights: codes within [-8, 7] (WL_CODES4), which AVX2 adds 16 groups at a time in int16 ----


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("nibbles", [False, True])
@pytest.mark.parametrize("fine", [False, True])
@pytest.mark.parametrize(
    ("m", "n", "k"),
    [
        (1, 100, 36),  # one row: 3 pairs of panels, then one alone; 9 groups (less than a span of 16)
        (1, 4100, 260),  # 65 groups: 4 spans and 1
        (1, 48, 8),  # one row, one pair of groups (nibbles: one byte holds both), 3 panels
        (1, 64, 64),  # one row, 16 groups: one span, 4 panels
        (1, 80, 132),  # one row, 33 groups: 2 spans and an odd last group, 5 panels
        (2, 70, 68),  # 17 groups
        (3, 33, 4),  # one group
        (4, 48, 128),  # 2 + 2 rows, 2 spans exactly
        (5, 300, 256),  # 3 + 2 rows
        (25, 513, 516),  # 129 groups, 5 row groups
        (11, 2049, 36),
    ],
)
def test_int4_weights_equal_the_reference_bit_for_bit(isa, nibbles, fine, m, n, k):
    """Codes within [-8, 7], as int8 codes or two a byte (nibbles: half the bytes; an odd number of
    groups of 4 inputs leaves a last half byte empty)."""
    x, q, s, b, t = _case(m, n, k, seed=m * k + n, bits=4)
    q[0, :4] = [-8, 7, -8, 7]  # both ends of the range
    dec = native.pack_linear(q, s, b, fine=fine, nibbles=nibbles)
    assert dec.codes4 and dec.flags == 2 + fine + 4 * nibbles
    assert dec.panels.size == dec.n_pad * (-(-k // 8) * 4 if nibbles else k)  # half the bytes, rounded up
    want = native.reference_linear(x, q, s, b, fine=fine)
    for threads in (1, 2, 3):
        out = native.decoder_nll(x, dec, t, logits=True, isa=isa, threads=threads)
        assert np.array_equal(out.logits, want), threads


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("m", [1, 3, 4, 5])
def test_extreme_int4_codes_equal_the_reference(isa, m):
    """Weights of -8 and 7 against activation codes of 127 and 0 over 1,028 inputs: 16 groups of the
    largest products reach -32,512 in an int16 lane, its limit, before they are widened."""
    rng = np.random.default_rng(16)
    n, k = 35, 1028
    q = rng.choice(np.array([-8, 7], np.int8), (n, k))
    q[0], q[1] = -8, 7
    s, b = np.full(n, 1e-3, np.float32), np.zeros(n, np.float32)
    x = rng.choice(np.array([-1.0, 1.0], np.float32), (m, k))
    x[0] = 1.0  # zero point 0, every code 127
    if m > 1:
        x[1] = -1.0  # zero point 127, every code 0
    ref = native.reference_linear(x, q, s, b)
    for nibbles in (False, True):
        dec = native.pack_linear(q, s, b, nibbles=nibbles)
        assert dec.codes4 and np.array_equal(native.decoder_nll(x, dec, logits=True, isa=isa).logits, ref), nibbles
    assert np.abs(ref[0, :2] - np.array([-8, 7]) * k * 1e-3).max() < 1e-3  # the extremes were reached


def test_int4_codes_are_found_by_pack_linear():
    _, q, s, b, _ = _case(1, 40, 8, bits=4)
    assert native.pack_linear(q, s, b).codes4 and native.pack_linear(q, s, b).flags == 2
    for outside in (8, -9, 127, -128):
        wide = q.copy()
        wide[7, 3] = outside
        assert not native.pack_linear(wide, s, b).codes4 and native.pack_linear(wide, s, b, fine=True).flags == 1
        with pytest.raises(WordLMError, match="nibbles need int4 codes"):
            native.pack_linear(wide, s, b, nibbles=True)


def test_nibbles_without_int4_codes_are_refused():
    import dataclasses

    x, weights, _, state = _rnn_case("gru", 2, 1, 8, 4, 1, bits=4)
    ((wih, whh),) = weights
    _, q, s, b, t = _case(2, 40, 8, bits=4)
    liar = dataclasses.replace(native.pack_linear(q, s, b, nibbles=True), codes4=False)  # nibbles without codes4
    with pytest.raises(WordLMError, match="bad arguments"):
        native.decoder_nll(x[0], liar, t[:1])
    liars = native.PackedRecurrent([(native.pack_linear(*wih), native.pack_linear(*whh, nibbles=True))], "gru")
    liars._matrices[1].flags = 4  # W_hh: nibbles without codes4
    with pytest.raises(WordLMError, match="bad arguments"):
        native.recurrent(x, liars, *state)


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_the_int4_gemm_is_the_one_that_runs(isa):
    """White box: told that int8 codes of 127 are int4 codes, the tables with a GEMM of their own for int4
    (AVX2, ARMv8.0 NEON) overflow their int16 sums, so that one runs; the others (qgemm for both) still
    give the reference's sums."""
    import dataclasses

    n, k = 32, 256
    q = np.full((n, k), 127, np.int8)
    s, b = np.full(n, 1e-3, np.float32), np.zeros(n, np.float32)
    liar = dataclasses.replace(native.pack_linear(q, s, b), codes4=True)
    want = native.reference_linear(np.ones((1, k), np.float32), q, s, b)
    for m in (1, 3):  # the GEMV and the GEMM
        x = np.ones((m, k), np.float32)
        got = native.decoder_nll(x, liar, logits=True, isa=isa).logits
        assert np.array_equal(got[0], want[0]) == (isa not in ("avx2", "neon")), m


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("nibbles", [False, True])
@pytest.mark.parametrize("batch", [1, 3])  # nibbles: one row reads them as they are, more may unpack them
def test_int4_recurrent_stacks_follow_the_reference(isa, name, nibbles, batch):
    """Every cell with int4 weights (every matrix's codes within [-8, 7]), as int8 codes or two a byte:
    the same bits as int8 codes and on 1-3 threads, a ReLU RNN's whole stack equal to the reference, the
    others' first step within exp's last bits."""
    x, weights, packed, state = _rnn_case(name, 9, batch, 20, 40, 2, seed=21, bits=4)
    assert all(p.codes4 for pair in packed.layers for p in pair) and all(p.codes4 for p in packed.proj or [])
    one = native.recurrent(x, packed, *state, isa=isa)
    cell = packed.cell
    if nibbles:
        packed = _packed(cell, weights, nibbles=True)
        mats = [p for pair in packed.layers for p in pair] + (packed.proj or [])
        assert all(p.nibbles and p.panels.size == p.n_pad * -(-p.k // 8) * 4 for p in mats)
    for threads in (1, 2, 3):
        out = native.recurrent(x, packed, *state, isa=isa, threads=threads)
        assert all(np.array_equal(a, b) for a, b in zip(out, one, strict=True)), threads
    first = tuple(st[:1] for st in state)
    got = native.recurrent(x[:1], _packed(cell, weights[:1], nibbles=nibbles), *first, isa=isa)
    want = native.reference_recurrent(cell, x[:1], weights[:1], *first)
    assert all(np.allclose(a, b, rtol=1e-5, atol=2e-6) for a, b in zip(got, want, strict=True))
    if cell == "rnn_relu":
        ref = native.reference_recurrent(cell, x, weights, *state)
        assert all(np.array_equal(a, b) for a, b in zip(ref, one, strict=True))


# ---- the embedding's rows (embed.c) and the sampler's max ----


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])  # quant.primitives.WIDTHS
@pytest.mark.parametrize("groups", [1, 4])
def test_embedding_rows_equal_numpys_unpacking(bits, groups):
    """Codes of any width as stored (one bit stream per row), times their group's scale: numpy's
    unpack_bits and float32 product, bit for bit, for ids of any shape."""
    from wordlm.quant.primitives import pack_bits, qmax, unpack_bits

    rng = np.random.default_rng(bits)
    vocab, dim = 50, 40
    codes = rng.integers(-qmax(bits) - 1, qmax(bits) + 1, (vocab, dim), dtype=np.int8)
    table, scales = pack_bits(codes, bits), rng.random((vocab, groups)).astype(np.float32)
    ids = rng.integers(0, vocab, (3, 4))
    want = unpack_bits(table[ids], bits).astype(np.float32).reshape(3, 4, groups, -1) * scales[ids][..., None]
    emb = native.PackedEmbedding(table, scales, bits, dim)
    got = native.embed(emb, ids)
    assert got.shape == (3, 4, dim) and np.array_equal(got, want.reshape(3, 4, dim))
    for bad in (-1, vocab):
        with pytest.raises(WordLMError, match="ids must lie"):
            native.embed(emb, np.array([0, bad]))


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_the_native_max_is_numpys(isa):
    rng = np.random.default_rng(5)
    for n in (1, 15, 16, 17, 31, 32, 33, 33278):
        z = rng.standard_normal(n).astype(np.float32) * 10
        assert native.max_value(z, isa=isa) == z.max(), n
        z[-1] = z.max() + 1  # the tail's
        assert native.max_value(z, isa=isa) == z[-1], n
    with pytest.raises(WordLMError, match="no values"):
        native.max_value(np.zeros(0, np.float32))


@pytest.mark.parametrize("isa", [*KERNELS, *EMULATED], indirect=True)
def test_every_table_samples_the_same_words(isa):
    """The sampler's weights are plain C compiled per table (sample.h): each table draws the portable
    one's word at every u, temperature and size (tails of its vector width and of a 256-word block)."""
    rng = np.random.default_rng(6)
    for n in (1, 7, 255, 257, 1000, 33278):
        z = (rng.standard_normal(n) * 4).astype(np.float32)
        for t in (0.3, 1.0, 3.0):
            us = rng.random(50)
            want = [native.sample(z, t, u, isa="portable") for u in us]
            assert [native.sample(z, t, u, isa=isa) for u in us] == want, (n, t)
