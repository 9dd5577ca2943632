"""Error-compensating rounding: GPTQ (Frantar et al. 2022, https://arxiv.org/abs/2210.17323).

Round to nearest treats every weight alone; what matters is a layer's output X W^T on the inputs it
really sees. GPTQ rounds one input column at a time and spreads each column's rounding error over the
columns not rounded yet, in proportion to the inverse Hessian H^-1 of that output error
(H = 2 X^T X): the optimal brain surgeon update, made cheap by taking the columns in a fixed order
(one Cholesky factor serves every row) and by applying it lazily, a block of columns at a time.
Group-wise scales are decided when their group's first column is reached, on the columns as the
earlier errors left them. Pure numpy; the codes and scales are those of wordlm.quant.primitives.
"""

from __future__ import annotations

import numpy as np

from wordlm.errors import WordLMError
from wordlm.quant.primitives import CLIP_RATIOS, dequantize, fit_scales, round_codes

DAMP = 0.01  # damping added to H's diagonal, as a fraction of its mean (the paper's lambda)
BLOCK = 64  # columns per lazy update (the paper's B: 128; 64 measured a little faster here)


def inverse_cholesky(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """The upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1 (H^-1 = U^T U), float64.

    Row j of U, divided by U[j, j], is how column j's error moves the columns after it once the
    columns before it are fixed: the paper's equation (3) in its Cholesky form (section 3.3)."""
    h = np.array(h, np.float64)
    k = len(h)
    if h.shape != (k, k) or not np.isfinite(h).all():
        raise WordLMError(f"GPTQ needs a finite square Hessian, got shape {h.shape}")
    diag = np.diag_indices(k)
    h[diag] += damp * max(float(np.mean(h[diag])), 1e-12)
    lower_inv = np.linalg.inv(np.linalg.cholesky(h))  # H = L L^T, so H^-1 = L^-T L^-1
    return np.linalg.cholesky(lower_inv.T @ lower_inv).T


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    bits: int,
    group_size: int,
    act_order: bool = True,
    block: int = BLOCK,
    damp: float = DAMP,
) -> tuple[np.ndarray, np.ndarray]:
    """W[N, K] and the Hessian H[K, K] of its inputs (X^T X up to a factor) -> (codes int8 [N, K],
    scales fp16 [N, K // group_size]), in the layout of `primitives.quantize`.

    `act_order` takes the columns by decreasing H[j, j] (the inputs with the most energy first, while
    the most columns are left to absorb their error: the reference implementation's `desc_act`). Its
    groups' scales are then fixed before any update ("static groups", since a group's columns are no
    longer reached together), so each row's clipping ratio can be chosen by what matters: the
    output error (w - q)^T H (w - q) after compensation, one GPTQ pass per ratio (rows are
    independent in GPTQ). Without it, a group's scale is fitted (by weight error) when its first
    column is reached, to the columns as the earlier errors left them. Inputs that never fire
    (H[j, j] == 0) carry no information: their weights are rounded from zero.
    """
    w = np.array(w, np.float64)
    n, k = w.shape
    if k % group_size:
        raise WordLMError(f"group size {group_size} does not divide the row length {k}")
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    u = inverse_cholesky(h[np.ix_(order, order)], damp)
    if not act_order:
        return _columns(w, u, order, bits, group_size, None, block)
    best_codes, best_scales, best_err = None, None, None
    for ratio in CLIP_RATIOS:
        scales = fit_scales(w.reshape(n, -1, group_size), bits, (ratio,))[..., 0]
        codes, scales = _columns(w, u, order, bits, group_size, scales, block)
        e = w - dequantize(codes, scales)
        err = ((e @ h) * e).sum(1)  # each row's (w - q)^T H (w - q)
        if best_err is None:
            best_codes, best_scales, best_err = codes, scales, err
        else:
            better = err < best_err
            best_codes[better], best_scales[better], best_err = codes[better], scales[better], np.minimum(err, best_err)
    return best_codes, best_scales


def _columns(
    w: np.ndarray,
    u: np.ndarray,
    order: np.ndarray,
    bits: int,
    group_size: int,
    scales: np.ndarray | None,
    block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ's loop: round the columns of `w` in `order` (u: the inverse Cholesky factor of H in that
    order) under fixed `scales`, or under scales fitted as each group is reached (None; the columns in
    their natural order, blocks of whole groups)."""
    n, k = w.shape
    dynamic = scales is None
    if dynamic:
        scales = np.empty((n, k // group_size), np.float32)
        block = group_size * max(1, block // group_size)
    # transposed, so that a column is a contiguous row and each update streams through memory
    # (2x faster than updating the columns of a row-major [N, block] on a 33,278-row embedding)
    wt, group_of = np.ascontiguousarray(w[:, order].T), order // group_size  # [K, N]
    codes = np.empty((k, n), np.int8)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, u1 = wt[i1:i2], u[i1:i2, i1:i2]
        err = np.empty_like(w1)
        for i in range(i2 - i1):
            if dynamic and (i1 + i) % group_size == 0:
                scales[:, group_of[i1 + i]] = fit_scales(w1[i : i + group_size].T, bits)[:, 0]
            s = scales[:, group_of[i1 + i]].astype(np.float64)
            q = round_codes(w1[i], s, bits)
            codes[order[i1 + i]] = q
            err[i] = (w1[i] - q * s) / u1[i, i]
            w1[i + 1 :] -= u1[i, i + 1 :, None] * err[i]
        wt[i2:] -= u[i1:i2, i2:].T @ err
    return np.ascontiguousarray(codes.T), scales.astype(np.float16)
