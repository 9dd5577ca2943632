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

import torch

from wordlm.errors import WordLMError


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = w.shape
    if k % group_size:
        raise WordLMError(f"group size {group_size} does not divide the row length {k}")
    return w.float().reshape(n, k // group_size, group_size)


def quantize(w: torch.Tensor, bits: int, group_size: int, mse_search: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """W[N, K] -> (codes int8 [N, K] in [-qmax-1, qmax], scales fp16 [N, K // group_size]).

    With `mse_search`, each group's clipping range is the one among absmax * {1.0, 0.95, ..., 0.7} that
    minimises the squared reconstruction error (clipping a few outliers buys resolution for the rest;
    it matters at 4 bits).
    """
    if bits not in (4, 8):
        raise WordLMError(f"unsupported bit width {bits}; choose 4 or 8")
    g = _groups(w, group_size)  # [N, G, gs]
    hi = qmax(bits)
    absmax = g.abs().amax(-1, keepdim=True).clamp_min(1e-12)
    best_q = best_s = best_err = None
    for ratio in (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7) if mse_search else (1.0,):
        s = (absmax * ratio / hi).half().float().clamp_min(torch.finfo(torch.float16).tiny)
        q = torch.clamp(torch.round(g / s), -hi - 1, hi)
        err = ((q * s - g) ** 2).sum(-1, keepdim=True)
        if best_err is None:
            best_q, best_s, best_err = q, s, err
        else:
            better = err < best_err
            best_q = torch.where(better, q, best_q)
            best_s = torch.where(better, s, best_s)
            best_err = torch.minimum(err, best_err)
    return best_q.to(torch.int8).reshape(w.shape), best_s.squeeze(-1).half()


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(codes int8 [N, K], scales [N, G]) -> W float32 [N, K]; the reference every fast path is held to."""
    n, k = q.shape
    g = scales.shape[1]
    return (q.float().reshape(n, g, k // g) * scales.float().unsqueeze(-1)).reshape(n, k)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 codes in [-8, 7], [N, K] (K even) -> uint8 [N, K // 2]: (q[2j] + 8) | (q[2j + 1] + 8) << 4."""
    if q.shape[-1] % 2:
        raise WordLMError("int4 packing needs an even row length")
    if q.min() < -8 or q.max() > 7:
        raise WordLMError("int4 codes must lie in [-8, 7]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> int8 codes [N, K]; the exact inverse of `pack_int4`."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-noise ratio of an approximation, in dB (torchao's measure for quantization error)."""
    noise = (reference.float() - approx.float()).pow(2).mean()
    return float(10 * torch.log10(reference.float().pow(2).mean() / noise.clamp_min(1e-30)))
