"""`wordlm.nn.LSTM`, `GRU`, `RNN`: the float modules' forward for every argument torch takes, on the
native recurrent stacks: one native call for a whole unidirectional stack (per run of equal batch size
of a packed sequence), one per layer and direction when bidirectional."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence

from wordlm import cells, native
from wordlm.nn.base import QuantizedModule, Quantizer, as_rows, check_inputs, padded
from wordlm.nn.recurrent import (
    Segments,
    layer_names,
    pack_stack,
    padded_sizes,
    run_stack,
    segments_of,
    state_buffer,
    store_layer,
)


class _RecurrentBase(QuantizedModule):
    """The multi-layer modules: the float module's sizes and flags, weights as codes (state_dict names
    are torch's: weight_ih_l0 and weight_ih_l0_scale, bias_ih_l0, ...)."""

    cell = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        threads: int | None = None,
    ) -> None:
        super().__init__(threads)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = dropout  # an inference no-op, kept for repr
        self.proj_size = proj_size
        self.fine = False

    @classmethod
    def from_float(cls, mod: nn.RNNBase, q: Quantizer, threads: int | None = None) -> _RecurrentBase:
        self = cls._like(mod, threads)
        for layer in self._layers():
            store_layer(self, mod, layer, self.proj_size > 0, q)
        self.fine = q.fine("weight_ih_l0")
        self._pack()
        return self

    @classmethod
    def _like(cls, mod: nn.RNNBase, threads: int | None) -> _RecurrentBase:
        return cls(
            mod.input_size, mod.hidden_size, mod.num_layers, mod.bias, mod.batch_first, mod.dropout,
            mod.bidirectional, mod.proj_size, threads=threads,
        )  # fmt: skip

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def out_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _layers(self) -> list[str]:
        """torch's suffixes of every layer and direction, in its order: _l0, _l0_reverse, _l1, ..."""
        return [f"_l{i}{'_reverse' if d else ''}" for i in range(self.num_layers) for d in range(self.directions)]

    def _pack(self) -> None:
        """One stack of every layer (unidirectional: the kernels run it in one call), else one per
        layer and direction, whose upper layers read the two directions' padded outputs side by side."""
        names = [layer_names(s, self.proj_size > 0, cells.CELLS[self.cell].merged_bias) for s in self._layers()]
        inputs = (1, self.input_size, padded(self.input_size))
        self._widths = padded_sizes(self.cell, self.hidden_size, self.proj_size)  # (hidden, h) as run
        upper = (self.directions, self.out_size, self._widths[1])
        if self.bidirectional:
            groups = [([n], inputs if i < 2 else upper) for i, n in enumerate(names)]
        else:
            groups = [(names, inputs)]
        sizes = (self.hidden_size, self.proj_size, self.fine)
        self._stacks = [pack_stack(self, self.cell, n, cols, *sizes) for n, cols in groups]
        self._kernel = native.kernel_index()

    def _run(self, data: torch.Tensor, segments: Segments, batch: int, hx: tuple) -> tuple[torch.Tensor, tuple]:
        """data [steps, batch, input_size] or packed rows [T, input_size] (runs `segments`, `batch`
        sequences) and the initial state (Nones: zeros) -> (y float32 [..., D * out_size], with data's
        leading shape; the final state, float32)."""
        n, out, hidden = self.num_layers * self.directions, self.out_size, self.hidden_size
        (hidden_pad, out_pad), lstm = self._widths, cells.CELLS[self.cell].has_c
        h = state_buffer(hx[0], (n, batch, out), out_pad, "hidden[0]" if lstm else "hidden")
        c = state_buffer(hx[1], (n, batch, hidden), hidden_pad, "hidden[1]") if lstm else None
        x, kernel, threads = as_rows(data, padded(self.input_size)), self._kernel, self._kernel_threads()
        if self.bidirectional:
            for layer in range(self.num_layers):  # each layer's input: both directions of the one below
                ys = []
                for d, i in enumerate((2 * layer, 2 * layer + 1)):
                    ci = None if c is None else c[i : i + 1]
                    ys.append(run_stack(self._stacks[i], x, segments, h[i : i + 1], ci, d == 1, kernel, threads))
                x = torch.cat(ys, -1)
        else:
            x = run_stack(self._stacks[0], x, segments, h, c, False, kernel, threads)
        if out_pad != out:  # drop the padding units (of each direction)
            x = torch.cat([x[..., d * out_pad : d * out_pad + out] for d in range(self.directions)], -1)
            h = h[..., :out]
        if c is not None and hidden_pad != hidden:
            c = c[..., :hidden]
        return x, (h,) if c is None else (h, c)

    def forward(self, input: torch.Tensor | PackedSequence, hx=None):
        state_in = hx if isinstance(hx, tuple) else (hx,)
        check_inputs(self, input.data if isinstance(input, PackedSequence) else input, *state_in)
        state_in = state_in + (None,) * (2 - len(state_in))
        if isinstance(input, PackedSequence):
            y, state = self._forward_packed(input, state_in)
        else:
            y, state = self._forward_dense(input, state_in)
        return y, (state if cells.CELLS[self.cell].has_c else state[0])

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )

    def _forward_dense(self, input: torch.Tensor, hx: tuple) -> tuple[torch.Tensor, tuple]:
        self._check_input(input)
        unbatched = input.dim() == 2
        if unbatched:
            x, hx = input.unsqueeze(1), tuple(None if s is None else s.unsqueeze(1) for s in hx)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
        steps, batch = x.shape[:2]
        y, state = self._run(x, [(0, steps, batch)], batch, hx)
        if unbatched:
            y, state = y.squeeze(1), tuple(s.squeeze(1) for s in state)
        elif self.batch_first:
            y = y.transpose(0, 1)  # a view, as torch returns
        return _cast(y, input.dtype), tuple(_cast(s, input.dtype) for s in state)

    def _forward_packed(self, input: PackedSequence, hx: tuple) -> tuple[PackedSequence, tuple]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._check_input(data)
        if sorted_indices is not None:  # the state comes in the batch's order: sort it as the data
            hx = tuple(None if s is None else s.index_select(1, sorted_indices) for s in hx)
        sizes = batch_sizes.tolist()
        y, state = self._run(data, segments_of(sizes), sizes[0], hx)
        if unsorted_indices is not None:
            state = tuple(s.index_select(1, unsorted_indices) for s in state)
        y = PackedSequence(_cast(y, data.dtype), batch_sizes, sorted_indices, unsorted_indices)
        return y, tuple(_cast(s, data.dtype) for s in state)

    def flatten_parameters(self) -> None:
        """torch's cuDNN call, made by many models' forward: nothing to do here."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        for name, default in (("num_layers", 1), ("bias", True), ("batch_first", False), ("dropout", 0.0)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        s += ", bidirectional=True" if self.bidirectional else ""
        s += f", proj_size={self.proj_size}" if self.proj_size else ""
        return f"{s}, {self.scheme_text()}" + (", fine activations" if self.fine else "")


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if dtype == torch.float32 else t.to(dtype)


class LSTM(_RecurrentBase):
    """nn.LSTM (with or without proj_size) on the native int8 stack."""

    cell = "lstm"


class GRU(_RecurrentBase):
    """nn.GRU on the native int8 stack."""

    cell = "gru"


class RNN(_RecurrentBase):
    """nn.RNN (tanh or relu) on the native int8 stack."""

    def __init__(self, *args, nonlinearity: str = "tanh", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        self.cell = f"rnn_{nonlinearity}"

    @classmethod
    def _like(cls, mod: nn.RNN, threads: int | None) -> RNN:
        return cls(
            mod.input_size, mod.hidden_size, mod.num_layers, mod.bias, mod.batch_first, mod.dropout,
            mod.bidirectional, nonlinearity=mod.nonlinearity, threads=threads,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", scheme=", f", nonlinearity={self.nonlinearity}, scheme=", 1)
