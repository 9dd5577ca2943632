"""The kernels' arithmetic in numpy, slowly: the references tests/test_native.py holds every kernel to
(the same integer GEMMs, bit for bit; the cells within exp's last bits), and the recurrent cells that
the runtime's float path steps through (`cell_step`)."""

from __future__ import annotations

import numpy as np

from wordlm import cells


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


def reference_linear(
    x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray, fine: bool = False
) -> np.ndarray:
    """The kernels' GEMM, slowly: y [M, N] of x [M, K] and codes q [N, K] (the decoder's logits). `fine`:
    plus the product of the residual's codes, without the bias (kernels.c's fine activations)."""
    x = np.asarray(x, np.float32)
    u, s, zp = quantize_activations(x)
    y = _gemm(u, s, zp, q, scales, bias)
    if not fine:
        return y
    residual = x - (u.astype(np.float32) - zp[:, None].astype(np.float32)) * s[:, None]
    return y + _gemm(*quantize_activations(residual), q, scales, np.zeros_like(bias, np.float32))


def _gemm(u, s, zp, q, scales, bias) -> np.ndarray:
    acc = u.astype(np.int64) @ q.astype(np.int64).T - zp[:, None].astype(np.int64) * q.astype(np.int64).sum(1)
    scale = (s[:, None] * scales.astype(np.float32)[None, :]).astype(np.float32)
    return (acc.astype(np.float32) * scale + bias.astype(np.float32)).astype(np.float32)


def cell_step(
    cell: str, xp: np.ndarray, hp: np.ndarray, h: np.ndarray, c: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One step of `cell` (a wordlm.cells name) for a batch, in torch's gate orders and in kernels.c's
    order of operations: the input projection xp and the recurrent GEMM hp [B, gates x H] (each with
    its bias) and the previous h [B, H] (and c [B, H] where the cell has one) -> the new h (an LSTM's
    before any projection) and c (None for cells without one). float32 in, float32 out."""
    return cells.get(cell).step(xp, hp, h, c)


Codes = tuple[np.ndarray, np.ndarray, np.ndarray]  # a matrix as codes int8 [N, K], scales [N], bias [N]


def reference_recurrent(
    cell: str, x: np.ndarray, layers: list[tuple[Codes, ...]], *state: np.ndarray, fine: bool = False
) -> tuple[np.ndarray, ...]:
    """wordlm.native.recurrent, slowly: x [S, B, in], layers of (W_ih, W_hh) or, for an LSTM with a
    projection, (W_ih, W_hh, W_hr), and the state (h, and c for an LSTM) -> (y, *the new state).
    `fine`: the input projections take fine activations."""
    steps, batch, _ = x.shape
    new: tuple[list, list] = ([], [])
    for layer, (wih, whh, *whr) in enumerate(layers):
        xproj = reference_linear(x.reshape(steps * batch, -1), *wih, fine=fine).reshape(steps, batch, -1)
        h = state[0][layer].astype(np.float32)
        c = state[1][layer].astype(np.float32) if cells.get(cell).has_c else None
        ys = []
        for t in range(steps):
            h, c = cell_step(cell, xproj[t], reference_linear(h, *whh), h, c)
            if whr:
                h = reference_linear(h, *whr[0])
            ys.append(h)
        x = np.stack(ys)
        new[0].append(h)
        new[1].append(c)
    return (x, *(np.stack(s) for s in new[: len(state)]))
