"""wordlm's native kernels, built by `pip install` from kernels*.c and called through ctypes.

Two operations (kernels.c says how and why): the int8 decoder GEMM with the loss fused (`decoder_nll`:
NLL of targets, logits, log-sum-exp), and an int8 LSTM stack (`lstm`). `reference_linear` and
`reference_lstm` are their slow numpy references, the same integer arithmetic: the GEMMs equal it bit
for bit (tests/test_native.py).

Kernels: one per instruction set of this machine's architecture, `ISAS` (x86: portable, avx2,
avx512-vnni; ARM64: portable, neon, dotprod, i8mm; elsewhere portable C only). `available_isas()` lists
those this CPU runs, `active_isa()` the one every call uses unless it names one (`isa=`): the
environment variable WORDLM_ISA (one of ISAS) when set, so that tests and benchmarks can force a lower
one, else the best. Threads (`threads=`) change how fast, never the bits: the work is cut the same way
for any count.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from wordlm.errors import WordLMError

PANEL = 16  # rows of W per packed panel (kernels.h: NR)
# every kernel of an architecture, lowest first, by kernels.c's number (its isa_names)
ISAS_BY_ARCH = {"x86": ("portable", "avx2", "avx512-vnni"), "arm64": ("portable", "neon", "dotprod", "i8mm")}
# platform.machine() as Linux, macOS and Windows spell it
_ARCH = {"x86_64": "x86", "amd64": "x86", "i386": "x86", "i686": "x86", "aarch64": "arm64", "arm64": "arm64"}


def architecture(machine: str | None = None) -> str:
    """'x86', 'arm64' or 'other' (portable C only) for platform.machine(), or for `machine`."""
    return _ARCH.get((platform.machine() if machine is None else machine).lower(), "other")


ISAS: tuple[str, ...] = ISAS_BY_ARCH.get(architecture(), ("portable",))  # this machine's kernels


def _library() -> ctypes.CDLL:
    try:
        from wordlm.native import _kernels
    except ImportError as e:  # a source tree that was never installed
        raise WordLMError(f"wordlm's native kernels are not built ({e}); run `pip install -e .`") from e
    lib = ctypes.CDLL(_kernels.__file__)  # ctypes releases the GIL during each call
    # raw addresses of arrays whose dtype and layout the wrappers below guarantee: ndpointer's checks
    # cost ~40 us per call, more than a layer's step
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.wl_best_isa.restype = c_int
    lib.wl_lstm_block.restype = c_int
    lib.wl_decoder_nll.restype = c_int
    lib.wl_decoder_nll.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, c_int, c_int]
    lib.wl_lstm.restype = c_int
    lib.wl_lstm.argtypes = [ptr, i64, i64, i64, i64, i64, *[ptr] * 8, ptr, ptr, ptr, c_int, c_int]
    lib.wl_sample.restype = i64
    lib.wl_sample.argtypes = [ptr, i64, ctypes.c_float, ctypes.c_float, ctypes.c_double, ptr, ptr]
    lib.wl_isa_name.restype = ctypes.c_char_p
    lib.wl_isa_name.argtypes = [c_int]
    built = []
    while (name := lib.wl_isa_name(len(built))) is not None:
        built.append(name.decode())
    if tuple(built) != ISAS:  # never expected: a library built for another architecture than this Python's
        raise WordLMError(f"wordlm's native kernels are {built}, but this {platform.machine()} machine's are {ISAS}")
    return lib


_lib: ctypes.CDLL | None = None
_active: str | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _library()
    return _lib


def best_isa() -> str:
    """The fastest kernel this CPU runs."""
    return ISAS[lib().wl_best_isa()]


def available_isas() -> tuple[str, ...]:
    """Every kernel this CPU runs, lowest first (portable C always)."""
    return ISAS[: ISAS.index(best_isa()) + 1]


def active_isa() -> str:
    """The kernel calls use when they name none: WORDLM_ISA if set, else the best; read once per process.

    A WORDLM_ISA that names no kernel, or one this CPU does not run, is a WordLMError here (the first
    use of the kernels), not at import.
    """
    global _active
    if _active is None:
        forced = os.environ.get("WORDLM_ISA", "")
        _active = _checked(forced, "WORDLM_ISA") if forced else best_isa()
    return _active


def _checked(isa: str, what: str) -> str:
    runs = available_isas()
    if isa not in ISAS:
        raise WordLMError(f"{what}={isa!r} is not a kernel; choose one of {', '.join(runs)}")
    if isa not in runs:
        raise WordLMError(f"{what}={isa!r}: this CPU does not run it; choose one of {', '.join(runs)}")
    return isa


def _isa(isa: str | None) -> int:
    return ISAS.index(active_isa() if isa is None else _checked(isa, "isa"))


def _addr(a: np.ndarray | None) -> int | None:
    """The address of a C-contiguous array (None for None): ~1 us where a.ctypes.data takes ~3."""
    if a is None:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(a)) if a.flags.writeable else a.ctypes.data


def _threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise WordLMError(f"native kernels: threads must be an integer >= 1, got {threads!r}")
    return min(int(threads), 1 << 16)


@dataclass
class PackedLinear:
    """Weights [N, K] as the kernels read them: int8 codes in panels of 16 rows, [N/16][K/4][16][4]."""

    panels: np.ndarray  # int8, flat, 64-byte aligned
    scales: np.ndarray  # float32 [n_pad]
    sums: np.ndarray  # int32 [n_pad]: sum_k q[n, k], for the activations' zero point
    bias: np.ndarray  # float32 [n_pad]
    n: int  # real rows (words)
    k: int

    def __post_init__(self) -> None:  # the addresses every call passes, taken once (2.7 us each)
        self._args = tuple(a.ctypes.data for a in (self.panels, self.scales, self.sums, self.bias))

    @property
    def n_pad(self) -> int:
        return self.scales.size


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + align, np.uint8)
    offset = -raw.ctypes.data % align
    return raw[offset : offset + nbytes]


def pack_linear(q: np.ndarray, scales: np.ndarray, bias: np.ndarray) -> PackedLinear:
    """codes q int8 [N, K] (K a multiple of 4), one scale per row [N] and bias [N] -> PackedLinear."""
    n, k = q.shape
    if q.dtype != np.int8 or k % 4 or scales.shape != (n,) or bias.shape != (n,):
        raise WordLMError(f"native kernels: need int8 codes [N, K], K a multiple of 4, [N] scales; got {q.shape}")
    n_pad, full = -(-n // PANEL) * PANEL, n // PANEL
    panels = _aligned(n_pad * k).view(np.int8)
    # [N/16, 16, K/4, 4] -> [N/16, K/4, 16, 4]: each 64 bytes hold 4 inputs of 16 words. Written
    # through views, panel by panel for the last (padded) one: no full-size temporary copy of q,
    # which would double the memory a model takes while it loads
    out = panels.reshape(n_pad // PANEL, k // 4, PANEL, 4)
    out[:full] = q[: full * PANEL].reshape(full, PANEL, k // 4, 4).transpose(0, 2, 1, 3)
    if full * PANEL < n:
        tail = np.zeros((PANEL, k), np.int8)
        tail[: n - full * PANEL] = q[full * PANEL :]
        out[full] = tail.reshape(PANEL, k // 4, 4).transpose(1, 0, 2)

    def pad(v: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(n_pad, dtype)
        out[:n] = v
        return out

    return PackedLinear(
        panels=panels,
        scales=pad(scales, np.float32),
        sums=pad(q.sum(1, dtype=np.int32), np.int32),  # summed in int32 without an int32 copy of q
        bias=pad(bias, np.float32),
        n=n,
        k=k,
    )


class DecoderOutput(NamedTuple):
    """What `decoder_nll` computed; None where it was not asked for."""

    nll: np.ndarray | None  # float32 [M]: -log p(target) per row (when targets are given)
    logits: np.ndarray | None  # float32 [M, N] (logits=True)
    lse: np.ndarray | None  # float32 [M]: log sum_n exp(logits[m, n]) (lse=True); logits - lse = log p


def decoder_nll(
    x: np.ndarray,
    dec: PackedLinear,
    targets: np.ndarray | None = None,
    logits: bool = False,
    *,
    lse: bool = False,
    isa: str | None = None,
    threads: int = 1,
) -> DecoderOutput:
    """The decoder on x float32 [M, K]: any of the NLL of targets [M], the logits [M, N], and each row's
    log-sum-exp, in one pass over the weights (see DecoderOutput).

    `isa`: one of available_isas() (None: active_isa()). `threads` >= 1: every count gives the same bits.
    """
    kernel, n_threads = _isa(isa), _threads(threads)
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != dec.k:
        raise WordLMError(f"native decoder: activations must be [M, {dec.k}], got {list(x.shape)}")
    m = x.shape[0]
    tgt = None if targets is None else np.ascontiguousarray(targets, np.int64)
    if tgt is not None and tgt.shape != (m,):
        raise WordLMError(f"native decoder: {m} rows need {m} targets, got {tgt.size}")
    out = DecoderOutput(
        nll=None if tgt is None else np.empty(m, np.float32),
        logits=np.empty((m, dec.n), np.float32) if logits else None,
        lse=np.empty(m, np.float32) if lse else None,
    )
    if m == 0:
        return out
    panels, scales, sums, bias = dec._args
    rc = lib().wl_decoder_nll(
        _addr(x), m, dec.k, panels, dec.n, dec.n_pad, scales, sums, bias, *map(_addr, (tgt, *out)), kernel, n_threads
    )
    if rc != 0:
        raise WordLMError("native decoder: bad arguments (a target outside the vocabulary?)")
    return out


LSTM_BLOCK = 32  # hidden units per block of the LSTM's partition among threads (kernels.c: LSTM_BLOCK)


def _unit_block_order(hidden: int) -> np.ndarray:
    """The 4H gate rows (torch's order: i, f, g, o, each [H]) in the kernels' order: block by block of
    LSTM_BLOCK units (the last one what remains), that block's rows of i, then f, g, o."""
    return np.concatenate(
        [
            np.arange(gate * hidden + u, gate * hidden + min(u + LSTM_BLOCK, hidden))
            for u in range(0, hidden, LSTM_BLOCK)
            for gate in range(4)
        ]
    )


def _rows_reordered(p: PackedLinear, order: np.ndarray) -> PackedLinear:
    """p with its rows (codes, scale, code sum, bias) in `order` (of its p.n real rows)."""
    codes = p.panels.reshape(p.n_pad // PANEL, p.k // 4, PANEL, 4).transpose(0, 2, 1, 3).reshape(p.n_pad, p.k)
    return pack_linear(codes[: p.n][order], p.scales[: p.n][order], p.bias[: p.n][order])


@dataclass
class PackedLSTM:
    """A stack of LSTM layers for the kernels: (W_ih with b_ih, W_hh with b_hh) per layer, and the
    arrays of their addresses that `wl_lstm` takes (built once).

    Given packed in torch's row order, the layers are kept with their gate rows in blocks of hidden
    units (`_unit_block_order`), so that a thread owns whole blocks: all four gates of its units.
    """

    layers: list[tuple[PackedLinear, PackedLinear]]

    def __post_init__(self) -> None:
        hidden = self.layers[0][1].k
        if any(p.n != 4 * hidden for pair in self.layers for p in pair):
            raise WordLMError(f"native LSTM: every W_ih and W_hh needs 4 x {hidden} gate rows (hidden = W_hh's inputs)")
        order = _unit_block_order(hidden)
        self.layers = [(_rows_reordered(a, order), _rows_reordered(b, order)) for a, b in self.layers]
        self._args = []  # W_ih's panels, scales, sums, biases, then W_hh's: one address per layer each
        for i in (0, 1):
            for field in ("panels", "scales", "sums", "bias"):
                arr = (ctypes.c_void_p * len(self.layers))(*(getattr(p[i], field).ctypes.data for p in self.layers))
                self._args.append(arr)

    @property
    def hidden(self) -> int:
        return self.layers[0][1].k


def lstm(
    x: np.ndarray,
    packed: PackedLSTM,
    h: np.ndarray,
    c: np.ndarray,
    *,
    isa: str | None = None,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 LSTM stack: x [S, B, in] and state h, c [L, B, H] -> (y [S, B, H] of the top layer, h, c).

    Torch's gate order; h and c are not modified (new arrays come back). `isa` as for decoder_nll;
    `threads` (up to one per LSTM_BLOCK hidden units) each compute the input projection, the recurrent
    GEMM and the cell of their own units, meeting once per step; every count gives the same bits.
    """
    kernel, n_threads = _isa(isa), _threads(threads)
    x = np.ascontiguousarray(x, np.float32)
    steps, batch, in_dim = x.shape
    n_layers, hidden = len(packed.layers), packed.hidden
    if packed.layers[0][0].k != in_dim or h.shape != (n_layers, batch, hidden) or c.shape != h.shape:
        raise WordLMError(f"native LSTM: shapes do not fit (x {list(x.shape)}, h {list(h.shape)})")
    h = np.array(h, np.float32, order="C")  # copies: the kernel updates them in place
    c = np.array(c, np.float32, order="C")
    y = np.empty((steps, batch, hidden), np.float32)
    addr = [_addr(a) for a in (x, h, c, y)]
    rc = lib().wl_lstm(addr[0], steps, batch, in_dim, hidden, n_layers, *packed._args, *addr[1:], kernel, n_threads)
    if rc != 0:
        raise WordLMError("native LSTM: bad arguments (sizes must be multiples of 4, 4 x hidden of 16)")
    return y, h, c


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x float32 [M, K] -> (7-bit codes uint8 [M, K], scales float32 [M], zero points int32 [M]), per row."""
    x = np.asarray(x, np.float32)
    lo = np.minimum(x.min(1), 0).astype(np.float32)
    hi = np.maximum(x.max(1), 0).astype(np.float32)
    s = (hi - lo) / np.float32(127)
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    zp = np.clip(np.rint(-lo * inv), 0, 127).astype(np.int32)
    u = np.clip(np.rint(x * inv[:, None]) + zp[:, None].astype(np.float32), 0, 127).astype(np.uint8)
    return u, s, zp


def reference_linear(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The kernels' GEMM, slowly: y [M, N] of x [M, K] and codes q [N, K] (the decoder's logits)."""
    u, s, zp = quantize_activations(x)
    acc = u.astype(np.int64) @ q.astype(np.int64).T - zp[:, None].astype(np.int64) * q.astype(np.int64).sum(1)
    scale = (s[:, None] * scales.astype(np.float32)[None, :]).astype(np.float32)
    return (acc.astype(np.float32) * scale + bias.astype(np.float32)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1 / (1 + np.exp(-x))).astype(np.float32)


def reference_lstm(
    x: np.ndarray, layers: list[tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]], h: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`lstm`, slowly; layers hold ((codes, scales, bias) of W_ih, the same of W_hh) per layer."""
    steps, batch, _ = x.shape
    hidden = h.shape[-1]
    hs, cs = [], []
    for layer, (wih, whh) in enumerate(layers):
        xproj = reference_linear(x.reshape(steps * batch, -1), *wih).reshape(steps, batch, 4 * hidden)
        hl, cl, ys = h[layer].astype(np.float32), c[layer].astype(np.float32), []
        for t in range(steps):
            g = xproj[t] + reference_linear(hl, *whh)
            i, f, gg, o = (g[:, k * hidden : (k + 1) * hidden] for k in range(4))
            cl = (_sigmoid(f) * cl + _sigmoid(i) * np.tanh(gg)).astype(np.float32)
            hl = (_sigmoid(o) * np.tanh(cl)).astype(np.float32)
            ys.append(hl)
        x = np.stack(ys)
        hs.append(hl)
        cs.append(cl)
    return x, np.stack(hs), np.stack(cs)


def sample(z: np.ndarray, temperature: float, u: float) -> int:
    """Draw a word from logits z float32 [V] at `temperature` > 0 by inverse CDF at u in [0, 1)
    (sample.c): the word i with cdf[i-1] <= u * total < cdf[i] of the weights exp((z - max z) / T)."""
    z = np.ascontiguousarray(z, np.float32)
    w, sums = np.empty(z.size, np.float32), np.empty(z.size // 256 + 1, np.float64)
    i = lib().wl_sample(z.ctypes.data, z.size, float(z.max()), 1.0 / temperature, u, w.ctypes.data, sums.ctypes.data)
    if i < 0:
        raise WordLMError(f"native sampler: bad arguments (temperature {temperature}, u {u}, {z.size} words)")
    return int(i)
