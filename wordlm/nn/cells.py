"""`wordlm.nn.LSTMCell`, `GRUCell`, `RNNCell`: one step of the float cells, as a one-layer native stack
of one step (a cell loop calls it once per step: its Python overhead is the number to watch)."""

from __future__ import annotations

import torch
import torch.nn as nn

from wordlm import cells, native
from wordlm.nn.base import QuantizedModule, Quantizer, as_rows, check_inputs, owned_copy, padded
from wordlm.nn.recurrent import layer_names, pack_stack, padded_sizes, store_layer


class _CellBase(QuantizedModule):
    cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, threads: int | None = None) -> None:
        super().__init__(threads)
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.fine = False

    @classmethod
    def from_float(cls, mod: nn.RNNCellBase, q: Quantizer, threads: int | None = None) -> _CellBase:
        self = cls._like(mod, threads)
        store_layer(self, mod, "", False, q)
        self.fine = q.fine("weight_ih")
        self._pack()
        return self

    @classmethod
    def _like(cls, mod: nn.RNNCellBase, threads: int | None) -> _CellBase:
        return cls(mod.input_size, mod.hidden_size, mod.bias, threads)

    def _pack(self) -> None:
        inputs = (1, self.input_size, padded(self.input_size))
        names = [layer_names("", False, cells.CELLS[self.cell].merged_bias)]
        self._stack = pack_stack(self, self.cell, names, inputs, self.hidden_size, 0, self.fine)
        self._width = padded_sizes(self.cell, self.hidden_size, 0)[0]
        self._kernel = native.kernel_index()

    def _step(self, input: torch.Tensor, hx: tuple) -> list[torch.Tensor]:
        """x [B, in] or [in] and the state (Nones: zeros) -> the new state, in the input's dtype and shape.
        The lean path of a cell loop: a handful of torch calls around one native call."""
        check_inputs(self, input, *hx)
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        if input.dim() == 1:  # unbatched: a batch of one
            return [s[0] for s in self._step(input[None], tuple(None if s is None else s[None] for s in hx))]
        batch, hidden, width = input.shape[0], self.hidden_size, self._width
        x = as_rows(input, padded(self.input_size))
        states = [self._state(s, batch, width) for s in hx]
        c = states[1].data_ptr() if len(states) > 1 else None
        y = torch.empty(batch, width)  # the kernels' output of the step: the new h again
        args = (self._stack, states[0].data_ptr(), c, y.data_ptr(), self._kernel, self._kernel_threads())
        native.recurrent_into(x.data_ptr(), 1, batch, *args)
        out = states if width == hidden else [s[:, :hidden] for s in states]
        return out if input.dtype == torch.float32 else [s.to(input.dtype) for s in out]

    def _state(self, s: torch.Tensor | None, batch: int, width: int) -> torch.Tensor:
        if s is None:
            return torch.zeros(batch, width)
        if tuple(s.shape) != (batch, self.hidden_size):
            raise RuntimeError(f"Expected hidden size {(batch, self.hidden_size)}, got {tuple(s.shape)}")
        return owned_copy(s, width)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")
        return f"{s}, {self.scheme_text()}" + (", fine activations" if self.fine else "")


class LSTMCell(_CellBase):
    """nn.LSTMCell: (x, (h, c)) -> (h', c')."""

    cell = "lstm"

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        return tuple(self._step(input, (None, None) if hx is None else tuple(hx)))


class GRUCell(_CellBase):
    """nn.GRUCell: (x, h) -> h'."""

    cell = "gru"

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(input, (hx,))[0]


class RNNCell(_CellBase):
    """nn.RNNCell (tanh or relu): (x, h) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh", threads=None):
        super().__init__(input_size, hidden_size, bias, threads)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity, self.cell = nonlinearity, f"rnn_{nonlinearity}"

    @classmethod
    def _like(cls, mod: nn.RNNCell, threads: int | None) -> RNNCell:
        return cls(mod.input_size, mod.hidden_size, mod.bias, mod.nonlinearity, threads)

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(input, (hx,))[0]

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", scheme=", f", nonlinearity={self.nonlinearity}, scheme=", 1)
