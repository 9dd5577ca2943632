"""GPTQ for any model (`quantize_dynamic(..., method="gptq", calibration=...)`): each weight's input
Hessian X^T X from the float model run on the calibration inputs, then wordlm.quantize.calibrate's rounder.

What each weight sees: a Linear its input rows; a cell's W_ih its input and W_hh the state it is given;
a recurrent stack's W_ih of layer l that layer's input sequence and W_hh that layer direction's
outputs (h_t, standing in for h_{t-1}: the same rows but one), recomputed layer by layer with one-layer
float copies of the module. An LSTM's projection W_hr (its inputs are internal) and embeddings are
rounded to nearest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence

from wordlm.quant import Rounder
from wordlm.quantize.calibrate import Grams
from wordlm.quantize.calibrate import gptq_rounder as _rounder_of

Add = Callable[[str, torch.Tensor], None]


def gptq_rounder(model: nn.Module, targets: list[tuple[str, nn.Module, type]], calibration: Iterable) -> Rounder:
    """Run `calibration` (model inputs: tensors or tuples of arguments) through the float model and
    return a Rounder doing GPTQ on every weight whose inputs it saw, by qualified name."""
    grams = Grams()

    def add(name: str, x: torch.Tensor) -> None:
        grams.add(name, x.detach().double().numpy())

    hooks = [mod.register_forward_hook(_observer(f"{name}." if name else "", add)) for name, mod, _ in targets]
    try:
        with torch.no_grad():
            for batch in calibration:
                model(*batch) if isinstance(batch, tuple) else model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return _rounder_of(grams.hessians())


def _observer(prefix: str, add: Add):
    def observe(mod: nn.Module, args: tuple, output) -> None:
        x = args[0]
        if isinstance(mod, nn.RNNBase):
            _observe_stack(prefix, mod, x, add)
        elif isinstance(mod, nn.RNNCellBase):
            add(prefix + "weight_ih", x)
            state = args[1] if len(args) > 1 else None
            if state is not None:
                add(prefix + "weight_hh", state[0] if isinstance(state, tuple) else state)
        elif isinstance(mod, nn.Linear):
            add(prefix + "weight", x)

    return observe


def _one_layer(mod: nn.RNNBase, layer: int) -> nn.RNNBase:
    """Layer `layer` of mod (both directions) as a float module of its own."""
    extra = {"nonlinearity": mod.nonlinearity} if isinstance(mod, nn.RNN) else {}
    if isinstance(mod, nn.LSTM):
        extra["proj_size"] = mod.proj_size
    size = mod.input_size if layer == 0 else (mod.proj_size or mod.hidden_size) * (2 if mod.bidirectional else 1)
    family = next(t for t in (nn.LSTM, nn.GRU, nn.RNN) if isinstance(mod, t))
    one = family(size, mod.hidden_size, 1, mod.bias, mod.batch_first, 0.0, mod.bidirectional, **extra)
    one.load_state_dict({n.replace(f"_l{layer}", "_l0"): p for n, p in mod.named_parameters() if f"_l{layer}" in n})
    return one


def _observe_stack(prefix: str, mod: nn.RNNBase, x, add: Add) -> None:
    out = mod.proj_size or mod.hidden_size
    for layer in range(mod.num_layers):
        one = _one_layer(mod, layer)
        y = one(x)[0]
        rows, y_rows = (x.data, y.data) if isinstance(x, PackedSequence) else (x, y)
        for d in range(2 if mod.bidirectional else 1):
            suffix = f"_l{layer}{'_reverse' if d else ''}"
            add(f"{prefix}weight_ih{suffix}", rows)
            add(f"{prefix}weight_hh{suffix}", y_rows[..., d * out : (d + 1) * out])
        x = y
