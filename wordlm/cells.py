"""The cell registry: one entry per recurrent cell, read by every part that handles cells.

A cell is what torch calls the `mode` of its recurrent module: the gates per hidden unit, whether a
cell state c travels beside h, the numpy step (the reference every kernel is held to), the C step
in kernels.c's table (found by name when the library loads: a registry cell without a C function is
refused there, as an unknown instruction set is), torch's module and its arguments, ONNX's operator,
its attributes and gate order, and what torch.ao's dynamic quantization takes. Config validation,
the runtime's state shapes, the torch model, the importer, the ONNX graphs, the CLI's choices and the
torch-dynamic engine all read this table: a new cell is an entry here and a C function in kernels.c.

Torch-free (numpy only): the runtime reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from wordlm.errors import WordLMError

# (xp, hp, h, c) -> (h, c): the input projection and the recurrent GEMM [B, gates x H] (each with its
# bias), the previous h [B, H] and c (None where the cell has none); float32 in, float32 out
Step = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray | None]]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1)  # no overflow warning for large |x|


def lstm_step(xp, hp, h, c):
    i, f, g, o = np.split(xp + hp, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


def gru_step(xp, hp, h, c):
    """torch's GRU: the reset gate scales the recurrent part with its bias, n = tanh(x_n + r * h_n)."""
    (xr, xz, xn), (hr, hz, hn) = np.split(xp, 3, axis=1), np.split(hp, 3, axis=1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    return (1 - z) * np.tanh(xn + r * hn) + z * h, None


def rnn_tanh_step(xp, hp, h, c):
    return np.tanh(xp + hp), None


def rnn_relu_step(xp, hp, h, c):
    return np.maximum(xp + hp, np.float32(0)), None


@dataclass(frozen=True)
class Cell:
    name: str  # config.json's "cell", the CLI's --cell
    gates: int  # gate rows per hidden unit, in torch's order
    has_c: bool  # a cell state c beside h (the state is (h, c), else (h,))
    step: Step  # the numpy reference of one step (kernels.c's order of operations)
    kernel: str  # the C step's name in kernels.c's cell table (wl_cell_name)
    torch_module: str  # torch.nn's class: LSTM, GRU or RNN
    torch_kwargs: dict = field(default_factory=dict)  # e.g. the RNN's nonlinearity
    onnx_op: str = ""  # ONNX's operator
    onnx_attrs: dict = field(default_factory=dict)  # its attributes beyond hidden_size
    onnx_gate_order: tuple[int, ...] = (0,)  # torch's gate index of each of ONNX's gates, in ONNX's order
    projection: bool = False  # takes torch's proj_size (h = W_hr (o * tanh(c)))
    torch_dynamic: bool = False  # torch.ao's quantize_dynamic quantizes it (it has no dynamic nn.RNN)
    # b_ih + b_hh may be stored as one bias (not a GRU's: r scales W_hn h + b_hn, so its biases stay apart)
    merged_bias: bool = True

    def state_shapes(self, layers: int, batch: int, hidden: int, out: int) -> tuple[tuple[int, int, int], ...]:
        """h [layers, batch, out] (out: the projection's size, else hidden), and c [layers, batch, hidden]."""
        h = (layers, batch, out)
        return (h, (layers, batch, hidden)) if self.has_c else (h,)


CELLS: dict[str, Cell] = {
    c.name: c
    for c in (
        # ONNX's LSTM gates are i, o, f, c; torch's i, f, g, o
        Cell("lstm", 4, True, lstm_step, "lstm", "LSTM", {}, "LSTM", {}, (0, 3, 1, 2), True, True),
        # ONNX's z, r, h from torch's r, z, n; torch computes n with linear_before_reset
        Cell(
            "gru",
            3,
            False,
            gru_step,
            "gru",
            "GRU",
            {},
            "GRU",
            {"linear_before_reset": 1},
            (1, 0, 2),
            False,
            True,
            merged_bias=False,
        ),  # fmt: skip
        Cell(
            "rnn_tanh",
            1,
            False,
            rnn_tanh_step,
            "rnn_tanh",
            "RNN",
            {"nonlinearity": "tanh"},
            "RNN",
            {"activations": ["Tanh"]},
        ),  # fmt: skip
        Cell(
            "rnn_relu",
            1,
            False,
            rnn_relu_step,
            "rnn_relu",
            "RNN",
            {"nonlinearity": "relu"},
            "RNN",
            {"activations": ["Relu"]},
        ),  # fmt: skip
    )
}


def get(name: object) -> Cell:
    """The registry's cell `name`, or a one-line error listing the cells."""
    if not isinstance(name, str) or name not in CELLS:
        raise WordLMError(f"cell must be one of {', '.join(CELLS)}, got {name!r}")
    return CELLS[name]


def by_gates(gates: int) -> list[Cell]:
    """The cells with `gates` gate rows per unit (what a state_dict's shapes can tell)."""
    return [c for c in CELLS.values() if c.gates == gates]
