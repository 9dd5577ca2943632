"""The recurrent modules' shared machinery: packing their weights into the kernels' stacks, and running
a stack over a sequence, dense or packed, in either direction.

Sizes: the kernels take multiples of 4. A hidden (or projection) size that is not one is padded with
units whose weights, biases and initial state are zero: every cell keeps such a unit at exactly 0
(LSTM c = 0.5 c + 0.5 tanh 0, h = 0.5 tanh c; GRU h = 0.5 tanh 0 + 0.5 h; RNN tanh 0 or relu 0), and a
zero input column changes neither a row's activation range nor its products, so the real units get
the unpadded arithmetic bit for bit. Inputs are padded with zero columns likewise.

Packed sequences (and lengths): the batch is sorted by length, so the steps fall into runs of equal
batch size; each run is one native call over the whole stack for the run's sequences (the state of
sequences that ended stays as they left it, and the reverse direction picks up new ones from their
initial state as it goes back), which is torch's packed semantics without computing any padding.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from wordlm import cells, native
from wordlm.errors import WordLMError
from wordlm.nn.base import Blocks, QuantizedModule, Quantizer, owned_copy, pad_blocks, padded

LANES = 8  # the vector LSTM cells' width (AVX2 8, NEON 4): a block of units not a multiple of it runs scalar C
Segments = list[tuple[int, int, int]]  # (first row, steps, batch) of each run of equal batch size


def padded_sizes(cell: str, hidden: int, proj: int) -> tuple[int, int]:
    """(hidden, h's size) as the kernels run them: multiples of 4, an LSTM's hidden units of LANES (the
    vector cell on every block: 51 units as 56 run 2.5x faster than as 52 in C), h the projection's
    size or hidden."""
    h = -(-hidden // LANES) * LANES if cell == "lstm" else padded(hidden)
    return h, padded(proj) if proj else h


def segments_of(batch_sizes: list[int]) -> Segments:
    """A packed sequence's batch sizes per step -> its runs of equal batch size."""
    segments, row = [], 0
    for batch, run in itertools.groupby(batch_sizes):
        steps = len(list(run))
        segments.append((row, steps, batch))
        row += steps * batch
    return segments


def layer_names(layer: str, proj: bool, fold: bool) -> tuple[str, str, str, str | None, str | None]:
    """The names (W_ih, W_hh, b_ih, b_hh, W_hr) of a layer's tensors, `layer` their suffix as torch writes
    it ('_l0', '_l1_reverse'; '' for a cell). `fold`: one bias, b_ih + b_hh, named 'bias_ih_hh_l0',
    and b_hh None: every cell but the GRU adds the two, whose reset gate needs b_hn apart. It saves what
    the per-row scales cost in the state_dict (torch.ao's is per tensor)."""
    b_ih, b_hh = (f"bias_ih_hh{layer}", None) if fold else (f"bias_ih{layer}", f"bias_hh{layer}")
    return f"weight_ih{layer}", f"weight_hh{layer}", b_ih, b_hh, f"weight_hr{layer}" if proj else None


def store_layer(m: QuantizedModule, mod: torch.nn.Module, layer: str, proj: bool, q: Quantizer) -> None:
    """Quantize the weights of float module mod's layer `layer` (a suffix, as layer_names) into m."""
    w_ih, w_hh, b_ih, b_hh, w_hr = layer_names(layer, proj, cells.CELLS[m.cell].merged_bias)
    for name in (w_ih, w_hh, w_hr):
        if name:
            m.store(name, getattr(mod, name), q)
    ih, hh = (getattr(mod, f"bias_ih{layer}"), getattr(mod, f"bias_hh{layer}")) if mod.bias else (None, None)
    if b_hh is None:
        m.store_bias(b_ih, None if ih is None else ih.detach().double() + hh.detach().double(), q)
    else:
        m.store_bias(b_ih, ih, q)
        m.store_bias(b_hh, hh, q)


def _packed(m: QuantizedModule, name: str, bias: str | None, rows: Blocks, cols: Blocks, fine: bool = False):
    n = rows[0] * rows[1]
    if m.scales(name).shape[1] != 1:
        raise WordLMError(f"{name}: recurrent weights take one scale per row (no group size)")
    b = m.bias_array(bias, n) if bias else np.zeros(n, np.float32)
    q = pad_blocks(m.codes(name), rows, cols)
    return native.pack_linear(q, pad_blocks(m.scales(name)[:, 0], rows, fill=1), pad_blocks(b, rows), fine)


def pack_stack(
    m: QuantizedModule, cell: str, layers: list[tuple], in_cols: Blocks, hidden: int, proj: int, fine: bool
) -> native.PackedRecurrent:
    """The layers (their names, `layer_names`) of module m as one native stack: gate rows padded per
    gate to a multiple of 4 units, the first layer's inputs laid out as `in_cols` (its input's real and
    padded blocks), the upper ones' as the padded h below."""
    out, (hidden_pad, out_pad) = proj or hidden, padded_sizes(cell, hidden, proj)
    rows, h_cols = (cells.CELLS[cell].gates, hidden, hidden_pad), (1, out, out_pad)
    pairs, hr = [], []
    for i, (ih, hh, b_ih, b_hh, w_hr) in enumerate(layers):
        pairs.append(
            (_packed(m, ih, b_ih, rows, in_cols if i == 0 else h_cols, fine), _packed(m, hh, b_hh, rows, h_cols))
        )
        if w_hr:
            hr.append(_packed(m, w_hr, None, (1, out, out_pad), (1, hidden, hidden_pad)))
    return native.PackedRecurrent(pairs, cell, hr or None)


def state_buffer(t: torch.Tensor | None, shape: tuple[int, int, int], width: int, what: str) -> torch.Tensor:
    """An initial state [n, B, real] (None: zeros) -> a new float32 [n, B, width] buffer, zero past real:
    the kernels update it in place."""
    n, batch, real = shape
    if t is None:
        return torch.zeros(n, batch, width)
    if tuple(t.shape) != shape:
        raise RuntimeError(f"Expected {what} size {shape}, got {tuple(t.shape)}")
    return owned_copy(t, width)


def run_stack(
    packed: native.PackedRecurrent,
    x: torch.Tensor,
    segments: Segments,
    h: torch.Tensor,
    c: torch.Tensor | None,
    reverse: bool,
    kernel: int,
    threads: int,
) -> torch.Tensor:
    """The stack over x float32 [steps, batch, in] or packed rows [T, in] (the runs `segments`), from the
    state h [L, B, P] (c [L, B, H]), updated in place; `reverse`: each sequence from its end. Returns y
    float32 [..., P], x's leading shape."""
    y = torch.empty(*x.shape[:-1], packed.out_dim)
    if len(segments) == 1 and not reverse:  # the whole batch in one call, the state updated where it is
        _, steps, batch = segments[0]
        c_ptr = None if c is None else c.data_ptr()
        native.recurrent_into(x.data_ptr(), steps, batch, packed, h.data_ptr(), c_ptr, y.data_ptr(), kernel, threads)
        return y
    rows, out = x.view(-1, x.shape[-1]), y.view(-1, packed.out_dim)
    for row, steps, batch in reversed(segments) if reverse else segments:
        xs, ys = rows[row : row + steps * batch], out[row : row + steps * batch]
        if reverse and steps > 1:
            xs, ys = xs.view(steps, batch, -1).flip(0), torch.empty_like(ys)  # flip copies
        hs, cs = h[:, :batch], None if c is None else c[:, :batch]
        own = hs.is_contiguous()  # the whole batch, or one layer: the kernels update the buffers themselves
        if not own:
            hs, cs = hs.contiguous(), None if cs is None else cs.contiguous()
        c_ptr = None if cs is None else cs.data_ptr()
        native.recurrent_into(xs.data_ptr(), steps, batch, packed, hs.data_ptr(), c_ptr, ys.data_ptr(), kernel, threads)
        if not own:
            h[:, :batch] = hs
            if c is not None:
                c[:, :batch] = cs
        if reverse and steps > 1:
            out[row : row + steps * batch].view(steps, batch, -1).copy_(ys.view(steps, batch, -1).flip(0))
    return y
