"""Pure quantization primitives: symmetric codes of 2 to 8 bits, per row or group-wise, dense packing.

A weight W[N, K] (N output rows, K inputs) is cut into groups of `group_size` consecutive inputs per
row (group_size = K: one scale per row). Each group gets one fp16 scale s = absmax / qmax and codes
q = clamp(round(W / s), -qmax - 1, qmax). Scales are rounded to fp16 *before* the codes are computed,
so dequantize(quantize(W)) is exactly what every kernel computes.

Codes narrower than 8 bits are stored offset-binary (q + 2^(bits-1)), densely, as one little-endian
bit stream per row: code j occupies bits [j * bits, (j + 1) * bits). At 4 bits that is two per byte,
the even input in the low nibble: the layout of ONNX Runtime's MatMulNBits and GatherBlockQuantized,
so packed 4-bit weights go to those kernels as they are. 8-bit codes are stored as int8 (two's
complement is their dense packing, and it is what every int8 kernel reads).
"""

from __future__ import annotations

import math

import numpy as np

from wordlm.errors import WordLMError

WIDTHS = (2, 3, 4, 5, 6, 8)  # the code widths wordlm stores and runs
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # fractions of a group's absmax tried as its range


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def check_bits(bits: int) -> None:
    if bits not in WIDTHS:
        raise WordLMError(f"unsupported bit width {bits!r}; choose one of {', '.join(map(str, WIDTHS))}")


def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    n, k = w.shape
    if k % group_size:
        raise WordLMError(f"group size {group_size} does not divide the row length {k}")
    return np.asarray(w, np.float32).reshape(n, k // group_size, group_size)


def round_codes(w: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """Round-to-nearest codes (as floats) of `w` under `scales` (broadcast), clamped to the width."""
    hi = qmax(bits)
    return np.clip(np.rint(w / scales), -hi - 1, hi)


def fit_scales(g: np.ndarray, bits: int, ratios: tuple[float, ...] = CLIP_RATIOS) -> np.ndarray:
    """Groups [..., gs] -> their scales [..., 1] (float32 holding fp16 values).

    Each group's clipping range is the one among absmax * `ratios` that minimises the squared
    reconstruction error (clipping a few outliers buys resolution for the rest; it matters at 4 bits
    and below).
    """
    check_bits(bits)
    g = np.asarray(g, np.float32)
    absmax = np.maximum(np.abs(g).max(-1, keepdims=True), np.float32(1e-12))
    tiny = np.float32(np.finfo(np.float16).tiny)
    best_s = best_err = None
    for ratio in ratios:
        s = np.maximum((absmax * np.float32(ratio / qmax(bits))).astype(np.float16).astype(np.float32), tiny)
        err = ((round_codes(g, s, bits) * s - g) ** 2).sum(-1, keepdims=True)
        if best_err is None:
            best_s, best_err = s, err
        else:
            best_s = np.where(err < best_err, s, best_s)
            best_err = np.minimum(err, best_err)
    return best_s


def quantize(w: np.ndarray, bits: int, group_size: int, mse_search: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """W[N, K] -> (codes int8 [N, K] in [-qmax-1, qmax], scales fp16 [N, K // group_size]): round to
    nearest under each group's `fit_scales` scale."""
    g = _groups(w, group_size)  # [N, G, gs]
    s = fit_scales(g, bits, CLIP_RATIOS if mse_search else (1.0,))
    return round_codes(g, s, bits).astype(np.int8).reshape(w.shape), s[..., 0].astype(np.float16)


def dequantize(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(codes int8 [N, K], scales [N, G]) -> W float32 [N, K]; the reference every fast path is held to."""
    n, k = q.shape
    g = scales.shape[1]
    return (q.astype(np.float32).reshape(n, g, k // g) * scales.astype(np.float32)[..., None]).reshape(n, k)


def row_unit(bits: int) -> int:
    """Codes per whole number of bytes: packed rows must hold a multiple of this many codes."""
    return 8 // math.gcd(bits, 8)


def packed_width(k: int, bits: int) -> int:
    """Bytes of a packed row of k codes (k a multiple of row_unit(bits))."""
    return k * bits // 8


def code_count(width: int, bits: int) -> int:
    """Codes in a packed row of `width` bytes: the inverse of `packed_width`."""
    return width * 8 // bits


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """int8 codes [..., K] in [-qmax-1, qmax] -> their dense storage [..., K * bits / 8].

    Below 8 bits: uint8, offset-binary codes in one little-endian bit stream per row (the module's
    doc); 8 bits: the int8 codes themselves. Rows must fill whole bytes (K a multiple of
    `row_unit(bits)`), so that a packed row's byte count gives its code count and rows can be
    gathered (the embedding) without unpacking the table.
    """
    check_bits(bits)
    k, unit = q.shape[-1], row_unit(bits)
    if k % unit:
        raise WordLMError(f"{bits}-bit rows must hold a multiple of {unit} codes to fill whole bytes, got {k}")
    if q.size and (int(q.min()) < -qmax(bits) - 1 or int(q.max()) > qmax(bits)):
        raise WordLMError(f"{bits}-bit codes must lie in [{-qmax(bits) - 1}, {qmax(bits)}]")
    if bits == 8:
        return np.asarray(q, np.int8)
    lead = q.shape[:-1]
    u = np.zeros((*lead, -(-k // 8) * 8), np.uint64)  # 8 codes (`bits` bytes) per 64-bit word
    u[..., :k] = q.astype(np.int16) + (qmax(bits) + 1)
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    words = (u.reshape(*lead, -1, 8) << shifts).sum(-1, dtype=np.uint64)  # disjoint bits: sum is OR
    stream = words.astype("<u8").view(np.uint8).reshape(*lead, -1, 8)[..., :bits].reshape(*lead, -1)
    return np.ascontiguousarray(stream[..., : packed_width(k, bits)])


UNPACK_ROWS = 1024  # rows unpacked at once: the temporaries take 8 bytes a code (~2 MB a row-block of 256)


def unpack_bits(packed: np.ndarray, bits: int) -> np.ndarray:
    """Dense storage [..., W] -> int8 codes [..., W * 8 / bits]; the exact inverse of `pack_bits`.
    A matrix goes UNPACK_ROWS rows at a time, so that loading a model does not peak at 8 bytes a code."""
    check_bits(bits)
    if bits == 8:
        return np.asarray(packed, np.int8)
    if packed.ndim > 1 and len(packed) > UNPACK_ROWS:
        out = np.empty((*packed.shape[:-1], code_count(packed.shape[-1], bits)), np.int8)
        for i in range(0, len(packed), UNPACK_ROWS):
            out[i : i + UNPACK_ROWS] = unpack_bits(packed[i : i + UNPACK_ROWS], bits)
        return out
    lead, width = packed.shape[:-1], packed.shape[-1]
    chunks = -(-width // bits)
    stream = np.zeros((*lead, chunks * bits), np.uint8)
    stream[..., :width] = packed
    buf = np.zeros((*lead, chunks, 8), np.uint8)
    buf[..., :bits] = stream.reshape(*lead, chunks, bits)
    words = buf.view("<u8")  # [..., chunks, 1]
    shifts = np.arange(8, dtype=np.uint64) * np.uint64(bits)
    u = (words >> shifts) & np.uint64((1 << bits) - 1)  # [..., chunks, 8]
    k = code_count(width, bits)
    return (u.reshape(*lead, -1)[..., :k].astype(np.int16) - (qmax(bits) + 1)).astype(np.int8)


def snr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio of an approximation, in dB (torchao's measure for quantization error)."""
    ref = np.asarray(reference, np.float64)
    noise = ((ref - np.asarray(approx, np.float64)) ** 2).mean()
    return float(10 * np.log10((ref**2).mean() / max(noise, 1e-30)))
