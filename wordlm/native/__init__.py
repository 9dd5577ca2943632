"""wordlm's native kernels, built by `pip install` from decoder.c and called through ctypes.

One fused kernel for now: the int8 decoder GEMM and the loss of evaluation (decoder.c says how and
why). `reference_logits` is its slow numpy reference: the same integer arithmetic, which the kernel's
logits equal bit for bit (tests/test_native.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from wordlm.errors import WordLMError

PANEL = 16  # rows of W per packed panel (decoder.c: NR)
_f32, _i32, _i64, _i8 = (np.ctypeslib.ndpointer(t, flags="C") for t in (np.float32, np.int32, np.int64, np.int8))


def _library() -> ctypes.CDLL:
    try:
        from wordlm.native import _decoder
    except ImportError as e:  # a source tree that was never installed
        raise WordLMError(f"wordlm's native kernels are not built ({e}); run `pip install -e .`") from e
    lib = ctypes.CDLL(_decoder.__file__)
    lib.wl_best_isa.restype = ctypes.c_int
    lib.wl_decoder_nll.restype = ctypes.c_int
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.wl_decoder_nll.argtypes = [_f32, i64, i64, ptr, i64, i64, _f32, _i32, _f32, ptr, ptr, ptr, ctypes.c_int]
    return lib


_lib: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _library()
    return _lib


ISAS = ("portable", "avx2", "avx512-vnni")  # decoder.c's kernels, by wl_best_isa's number


def best_isa() -> str:
    """The fastest kernel this CPU runs."""
    return ISAS[lib().wl_best_isa()]


@dataclass
class PackedDecoder:
    """Decoder weights as the kernel reads them: int8 codes in panels of 16 rows, [N/16][K/4][16][4]."""

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


def pack_decoder(q: np.ndarray, scales: np.ndarray, bias: np.ndarray) -> PackedDecoder:
    """codes q int8 [N, K] (K a multiple of 4), one scale per row [N] and bias [N] -> PackedDecoder."""
    n, k = q.shape
    if q.dtype != np.int8 or k % 4 or scales.shape != (n,) or bias.shape != (n,):
        raise WordLMError(f"native decoder: needs int8 codes [N, K], K a multiple of 4, [N] scales; got {q.shape}")
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

    return PackedDecoder(
        panels=panels,
        scales=pad(scales, np.float32),
        sums=pad(q.astype(np.int32).sum(1), np.int32),
        bias=pad(bias, np.float32),
        n=n,
        k=k,
    )


def decoder_nll(
    x: np.ndarray, dec: PackedDecoder, targets: np.ndarray | None, logits: bool = False, isa: str | None = None
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
        x,
        m,
        dec.k,
        dec.panels.ctypes.data,
        dec.n,
        dec.n_pad,
        dec.scales,
        dec.sums,
        dec.bias,
        None if tgt is None else tgt.ctypes.data,
        None if nll is None else nll.ctypes.data,
        None if out is None else out.ctypes.data,
        ISAS.index(isa) if isa else len(ISAS),
    )
    if rc != 0:
        raise WordLMError("native decoder: bad arguments (a target outside the vocabulary?)")
    return nll, out


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


def reference_logits(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic, slowly: logits [M, N] of x [M, K] and codes q [N, K]."""
    u, s, zp = quantize_activations(x)
    acc = u.astype(np.int64) @ q.astype(np.int64).T - zp[:, None].astype(np.int64) * q.astype(np.int64).sum(1)
    scale = (s[:, None] * scales.astype(np.float32)[None, :]).astype(np.float32)
    return (acc.astype(np.float32) * scale + bias.astype(np.float32)).astype(np.float32)
