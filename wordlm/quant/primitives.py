"""Pure quantization primitives: symmetric, per-row or group-wise, 8 or 4 bits.

A weight W[N, K] (N output rows, K inputs) is cut into groups of `group_size` consecutive inputs per
row (group_size = K: one scale per row). Each group gets one fp16 scale s = absmax / qmax and codes
q = clamp(round(W / s), -qmax - 1, qmax). Scales are rounded to fp16 *before* the codes are computed,
so dequantize(quantize(W)) is exactly what every kernel computes.

4-bit codes are stored offset-binary (q + 8, in 0..15), two per byte, the even input in the low
nibble: the layout of ONNX Runtime's MatMulNBits and GatherBlockQuantized, so packed weights go to
the kernels as they are.
"""

from __future__ import annotations

import numpy as np

from wordlm.errors import WordLMError


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    n, k = w.shape
    if k % group_size:
        raise WordLMError(f"group size {group_size} does not divide the row length {k}")
    return np.asarray(w, np.float32).reshape(n, k // group_size, group_size)


def quantize(w: np.ndarray, bits: int, group_size: int, mse_search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """W[N, K] -> (codes int8 [N, K] in [-qmax-1, qmax], scales fp16 [N, K // group_size]).

    With `mse_search`, each group's clipping range is the one among absmax * {1.0, 0.95, ..., 0.7} that
    minimises the squared reconstruction error (clipping a few outliers buys resolution for the rest;
    it matters at 4 bits).
    """
    if bits not in (4, 8):
        raise WordLMError(f"unsupported bit width {bits}; choose 4 or 8")
    g = _groups(w, group_size)  # [N, G, gs]
    hi = np.float32(qmax(bits))
    absmax = np.maximum(np.abs(g).max(-1, keepdims=True), np.float32(1e-12))
    tiny = np.float32(np.finfo(np.float16).tiny)
    best_q = best_s = best_err = None
    for ratio in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7) if mse_search else (1.0,):
        s = np.maximum((absmax * np.float32(ratio) / hi).astype(np.float16).astype(np.float32), tiny)
        q = np.clip(np.rint(g / s), -hi - 1, hi)
        err = ((q * s - g) ** 2).sum(-1, keepdims=True)
        if best_err is None:
            best_q, best_s, best_err = q, s, err
        else:
            better = err < best_err
            best_q = np.where(better, q, best_q)
            best_s = np.where(better, s, best_s)
            best_err = np.minimum(err, best_err)
    return best_q.astype(np.int8).reshape(w.shape), best_s[..., 0].astype(np.float16)


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(codes int8 [N, K], scales [N, G]) -> W float32 [N, K]; the reference every fast path is held to."""
    n, k = q.shape
    g = scales.shape[1]
    return (q.astype(np.float32).reshape(n, g, k // g) * scales.astype(np.float32)[..., None]).reshape(n, k)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """int8 codes in [-8, 7], [N, K] (K even) -> uint8 [N, K // 2]: (q[2j] + 8) | (q[2j + 1] + 8) << 4."""
    if q.shape[-1] % 2:
        raise WordLMError("int4 packing needs an even row length")
    if q.min() < -8 or q.max() > 7:
        raise WordLMError("int4 codes must lie in [-8, 7]")
    u = (q.astype(np.int16) + 8).astype(np.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """uint8 [N, K // 2] -> int8 codes [N, K]; the exact inverse of `pack_int4`."""
    lo = (packed & 0x0F).astype(np.int8) - 8
    hi = (packed >> 4).astype(np.int8) - 8
    return np.stack((lo, hi), axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def snr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio of an approximation, in dB (torchao's measure for quantization error)."""
    ref = np.asarray(reference, np.float64)
    noise = ((ref - np.asarray(approx, np.float64)) ** 2).mean()
    return float(10 * np.log10((ref**2).mean() / max(noise, 1e-30)))
