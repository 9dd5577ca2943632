"""wordlm's native kernels, built by `pip install` from kernels.c and called through ctypes.

Two operations for evaluation (kernels.c says how and why): the int8 decoder GEMM with the loss fused,
and an int8 LSTM stack. `reference_linear` and `reference_lstm` are their slow numpy references,
the same integer arithmetic: the GEMMs equal it bit for bit (tests/test_native.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from wordlm.errors import WordLMError

PANEL = 16  # rows of W per packed panel (kernels.c: NR)


def _library() -> ctypes.CDLL:
    try:
        from wordlm.native import _kernels
    except ImportError as e:  # a source tree that was never installed
        raise WordLMError(f"wordlm's native kernels are not built ({e}); run `pip install -e .`") from e
    lib = ctypes.CDLL(_kernels.__file__)
    # raw addresses of arrays whose dtype and layout the wrappers below guarantee: ndpointer's checks
    # cost ~40 us per call, more than a layer's step
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.wl_best_isa.restype = ctypes.c_int
    lib.wl_decoder_nll.restype = ctypes.c_int
    lib.wl_decoder_nll.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
    lib.wl_lstm.restype = ctypes.c_int
    lib.wl_lstm.argtypes = [ptr, i64, i64, i64, i64, i64, *[ptr] * 8, ptr, ptr, ptr, ctypes.c_int]
    return lib


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _library()
    return _lib


ISAS = ("portable", "avx2", "avx512-vnni")  # kernels.c's kernels, by wl_best_isa's number


def best_isa() -> str:
    """The fastest kernel this CPU runs."""
    return ISAS[lib().wl_best_isa()]


@dataclass
class PackedLinear:
    """Weights [N, K] as the kernels read them: int8 codes in panels of 16 rows, [N/16][K/4][16][4]."""

    panels: np.ndarray  # int8, flat, 64-byte aligned
    scales: np.ndarray  # float32 [n_pad]
    sums: np.ndarray  # int32 [n_pad]: sum_k q[n, k], for the activations' zero point
    bias: np.ndarray  # float32 [n_pad]
    n: int  # real rows (words)
    k: int

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
    n_pad = -(-n // PANEL) * PANEL
    padded = np.zeros((n_pad, k), np.int8)
    padded[:n] = q
    panels = _aligned(n_pad * k).view(np.int8)
    # [N/16, 16, K/4, 4] -> [N/16, K/4, 16, 4]: each 64 bytes hold 4 inputs of 16 words
    panels[:] = padded.reshape(n_pad // PANEL, PANEL, k // 4, 4).transpose(0, 2, 1, 3).reshape(-1)

    def pad(v: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(n_pad, dtype)
        out[:n] = v
        return out

    return PackedLinear(
        panels=panels,
        scales=pad(scales, np.float32),
        sums=pad(q.astype(np.int32).sum(1), np.int32),
        bias=pad(bias, np.float32),
        n=n,
        k=k,
    )


def decoder_nll(
    x: np.ndarray, dec: PackedLinear, targets: np.ndarray | None, logits: bool = False, isa: str | None = None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """x float32 [M, K] -> (nll [M] of targets [M] or None, logits [M, N] when asked for, or None).

    `isa` picks a kernel (one of ISAS; default and at most: the best this CPU runs); the tests hold
    every kernel to the reference.
    """
    x = np.ascontiguousarray(x, np.float32)
    m = x.shape[0]
    if x.ndim != 2 or x.shape[1] != dec.k:
        raise WordLMError(f"native decoder: activations must be [M, {dec.k}], got {list(x.shape)}")
    nll = np.empty(m, np.float32) if targets is not None else None
    out = np.empty((m, dec.n), np.float32) if logits else None
    tgt = None if targets is None else np.ascontiguousarray(targets, np.int64)
    if tgt is not None and tgt.shape != (m,):
        raise WordLMError(f"native decoder: {m} rows need {m} targets, got {tgt.size}")
    rc = lib().wl_decoder_nll(
        x.ctypes.data,
        m,
        dec.k,
        dec.panels.ctypes.data,
        dec.n,
        dec.n_pad,
        dec.scales.ctypes.data,
        dec.sums.ctypes.data,
        dec.bias.ctypes.data,
        None if tgt is None else tgt.ctypes.data,
        None if nll is None else nll.ctypes.data,
        None if out is None else out.ctypes.data,
        _isa(isa),
    )
    if rc != 0:
        raise WordLMError("native decoder: bad arguments (a target outside the vocabulary?)")
    return nll, out


def _isa(isa: str | None) -> int:
    return ISAS.index(isa) if isa else len(ISAS)


@dataclass
class PackedLSTM:
    """A stack of LSTM layers for the kernels: (W_ih with b_ih, W_hh with b_hh) per layer, and the
    arrays of their addresses that `wl_lstm` takes (built once)."""

    layers: list[tuple[PackedLinear, PackedLinear]]

    def __post_init__(self) -> None:
        self._args = []  # W_ih's panels, scales, sums, biases, then W_hh's: one address per layer each
        for i in (0, 1):
            for field in ("panels", "scales", "sums", "bias"):
                arr = (ctypes.c_void_p * len(self.layers))(*(getattr(p[i], field).ctypes.data for p in self.layers))
                self._args.append(arr)

    @property
    def hidden(self) -> int:
        return self.layers[0][1].k


def lstm(
    x: np.ndarray, packed: PackedLSTM, h: np.ndarray, c: np.ndarray, isa: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The int8 LSTM stack: x [S, B, in] and state h, c [L, B, H] -> (y [S, B, H] of the top layer, h, c).

    Torch's gate order; h and c are not modified (new arrays come back).
    """
    x = np.ascontiguousarray(x, np.float32)
    steps, batch, in_dim = x.shape
    n_layers, hidden = len(packed.layers), packed.hidden
    if packed.layers[0][0].k != in_dim or h.shape != (n_layers, batch, hidden) or c.shape != h.shape:
        raise WordLMError(f"native LSTM: shapes do not fit (x {list(x.shape)}, h {list(h.shape)})")
    h = np.array(h, np.float32, order="C")  # copies: the kernel updates them in place
    c = np.array(c, np.float32, order="C")
    y = np.empty((steps, batch, hidden), np.float32)
    addr = [a.ctypes.data for a in (x, h, c, y)]
    rc = lib().wl_lstm(addr[0], steps, batch, in_dim, hidden, n_layers, *packed._args, *addr[1:], _isa(isa))
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
