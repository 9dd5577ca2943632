"""`quantize_dynamic`: torch.ao's call, swapping float modules for wordlm.nn's.

The meaning is torch.ao.quantization.quantize_dynamic's: `qconfig_spec` a set of module types (or
qualified names), or a dict of types or names to a qconfig (None: keep float; a name's entry applies
to the modules under it); a deep copy unless `inplace`. Unlike torch.ao, a subclass of an asked type
is taken when it keeps the base's forward, and a module asked for that cannot be taken exactly stays
float with one warning naming every such module: never a silently different result.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.utils import parametrize

from wordlm.errors import WordLMError
from wordlm.nn.base import Quantizer, Rounder
from wordlm.nn.calibration import gptq_rounder
from wordlm.nn.cells import GRUCell, LSTMCell, RNNCell
from wordlm.nn.embedding import Embedding, EmbeddingBag
from wordlm.nn.linear import Linear
from wordlm.nn.rnn import GRU, LSTM, RNN
from wordlm.quant import FINE_ACTIVATIONS, SCHEMES, QSpec, Scheme, get_scheme, round_to_nearest

DEFAULT_QINT8 = {nn.Linear, nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell}  # torch.ao's + nn.RNN
DEFAULT_QUINT8 = {nn.Embedding, nn.EmbeddingBag}  # torch.ao's for dtype=torch.quint8
MAPPING: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: Linear,
    nn.LSTM: LSTM,
    nn.GRU: GRU,
    nn.RNN: RNN,
    nn.LSTMCell: LSTMCell,
    nn.GRUCell: GRUCell,
    nn.RNNCell: RNNCell,
    nn.Embedding: Embedding,
    nn.EmbeddingBag: EmbeddingBag,
}
# which of a scheme's parts (wordlm.quant.Scheme) quantizes a module family
PART = {nn.Linear: "decoder", nn.Embedding: "encoder", nn.EmbeddingBag: "encoder"}


def quantize_dynamic(
    model: nn.Module,
    qconfig_spec: Iterable | dict | None = None,
    dtype: torch.dtype = torch.qint8,
    mapping: dict | None = None,
    inplace: bool = False,
    *,
    scheme: str | Scheme | None = None,
    method: str = "rtn",
    calibration: Iterable | None = None,
    threads: int | None = None,
) -> nn.Module:
    """torch.ao.quantization.quantize_dynamic on wordlm's kernels; returns the model.

    `qconfig_spec` None: torch.ao's default types for `dtype` (qint8: Linear, LSTM, GRU and their
    cells, plus RNN and RNNCell; quint8: Embedding and EmbeddingBag). `mapping`: float type -> a
    class with `from_float(module, quantizer, threads)` (default: wordlm.nn's). `scheme`: what
    `wordlm quantize --scheme` takes, a name or a wordlm.quant.Scheme (default "int8": int8 codes, one
    scale per row): its `rnn` part quantizes the recurrent modules and cells, `decoder` the Linears,
    `encoder` the embeddings, and its plan any weight by qualified name ("rnn.weight_ih_l0").
    `method` "gptq": error-compensating rounding of every weight whose inputs `calibration` (inputs of
    the model: tensors, or tuples of forward's arguments) shows (wordlm.nn.calibration). `threads`: the
    kernels' threads (None: torch.get_num_threads() at each call). The root module itself is swapped
    (and returned) when it is one of the asked types.
    """
    scheme = _scheme(scheme)
    spec = _qconfig_spec(qconfig_spec, dtype)
    mapping = MAPPING if mapping is None else mapping
    if method not in ("rtn", "gptq"):
        raise WordLMError(f"unknown quantization method {method!r}; choose rtn or gptq")
    if method == "gptq" and calibration is None:
        raise WordLMError("method='gptq' needs calibration= inputs to run through the float model")
    model = model if inplace else copy.deepcopy(model)
    targets = _targets(model, spec, mapping)
    rounder = gptq_rounder(model, targets, calibration) if method == "gptq" else None
    shared: dict = {}
    left = []
    for name, mod, base in targets:
        reason = unsupported(mod, base)
        quantizer = _quantizer(scheme, name, base, rounder, shared)
        if reason is None and quantizer.spec(_first_weight(mod)).bits is None:
            continue  # the scheme keeps this part float
        try:
            new = None if reason else mapping[base].from_float(mod, quantizer, threads)
        except WordLMError as e:
            new, reason = None, str(e)
        if new is None:
            left.append(f"{name or type(mod).__name__} ({reason})")
            continue
        new._forward_pre_hooks.update(mod._forward_pre_hooks)  # as torch.ao's swap_module keeps them
        new._forward_hooks.update(mod._forward_hooks)
        model = _swap(model, name, new)
    if left:
        warnings.warn(f"wordlm.quantize_dynamic left {len(left)} module(s) float: {'; '.join(left)}", stacklevel=2)
    return model


def _scheme(scheme: str | Scheme | None) -> Scheme:
    if scheme is None or isinstance(scheme, str):
        return SCHEMES["int8"] if scheme is None else get_scheme(scheme)
    if not isinstance(scheme, Scheme):
        raise WordLMError(f"scheme must be a name ({', '.join(SCHEMES)}) or a wordlm.quant.Scheme, got {scheme!r}")
    scheme.check()
    return scheme


def _qconfig_spec(qconfig_spec, dtype: torch.dtype) -> dict:
    """torch.ao's qconfig_spec as {type or qualified name: asked (truthy) or not (None)}. torch.ao's
    float16 dynamic quantization (dtype, or a qconfig's weight) is not wordlm's: refused, not run as int8."""
    if dtype not in (torch.qint8, torch.quint8) or any(map(_is_float16, _values(qconfig_spec))):
        raise WordLMError("wordlm.quantize_dynamic stores integer codes: dtype torch.qint8 or quint8, not float16")
    if qconfig_spec is None:
        return dict.fromkeys(DEFAULT_QINT8 if dtype == torch.qint8 else DEFAULT_QUINT8, True)
    if isinstance(qconfig_spec, dict):
        return dict(qconfig_spec)
    return dict.fromkeys(qconfig_spec, True)


def _values(qconfig_spec) -> list:
    return list(qconfig_spec.values()) if isinstance(qconfig_spec, dict) else []


def _is_float16(qconfig) -> bool:
    """Whether a torch.ao QConfig asks for float16 weights (float16_dynamic_qconfig)."""
    weight = getattr(qconfig, "weight", None)
    return callable(weight) and getattr(weight(), "dtype", None) == torch.float16


def _family(mod: nn.Module, mapping: dict) -> type | None:
    """The float type of `mapping` that mod is (or subclasses); None for torch's MultiheadAttention
    projection, whose weight the attention reads directly (torch.ao leaves it too)."""
    if isinstance(mod, NonDynamicallyQuantizableLinear):
        return None
    return next((t for t in mapping if isinstance(mod, t)), None)


def _targets(model: nn.Module, spec: dict, mapping: dict) -> list[tuple[str, nn.Module, type]]:
    """(qualified name, module, its float type) of every module asked for, as torch.ao propagates
    qconfigs: a module's type entry, then its name's, over what its parent got."""
    types = [(k, v) for k, v in spec.items() if isinstance(k, type)]
    found = []

    def visit(mod: nn.Module, name: str, asked) -> None:
        asked = next((v for t, v in types if type(mod) is t), next((v for t, v in types if isinstance(mod, t)), asked))
        asked = spec.get(name, asked)
        base = _family(mod, mapping)
        if asked and base is not None:
            found.append((name, mod, base))
            return
        for child, sub in mod.named_children():
            visit(sub, f"{name}.{child}" if name else child, asked)

    visit(model, "", None)
    return found


def _expected_parameters(mod: nn.Module, base: type) -> set[str]:
    if issubclass(base, nn.RNNBase):
        return set(mod._flat_weights_names)
    if issubclass(base, nn.RNNCellBase):
        return {"weight_ih", "weight_hh"} | ({"bias_ih", "bias_hh"} if mod.bias else set())
    return {"weight"} | ({"bias"} if getattr(mod, "bias", None) is not None else set())


def unsupported(mod: nn.Module, base: type) -> str | None:
    """Why module mod (of float type `base`) cannot be taken exactly, or None."""
    if type(mod) is not base and type(mod).forward is not base.forward:
        return f"a subclass of nn.{base.__name__} with its own forward"
    if parametrize.is_parametrized(mod):
        return "parametrized weights"
    params = dict(mod.named_parameters(recurse=False))
    if set(params) != _expected_parameters(mod, base):
        return f"weights not as nn.{base.__name__} holds them ({', '.join(sorted(params))}: weight_norm?)"
    bad = {p.dtype for p in params.values() if not p.dtype.is_floating_point or p.is_complex()}
    if bad:
        return f"unsupported dtype {', '.join(map(str, bad))}"
    if any(p.device.type != "cpu" for p in params.values()):
        return "not on the CPU"
    if getattr(mod, "max_norm", None) is not None:
        return "max_norm renormalises its weights at every lookup"
    return None


def _first_weight(mod: nn.Module) -> str:
    return (
        "weight_ih_l0" if isinstance(mod, nn.RNNBase) else "weight_ih" if isinstance(mod, nn.RNNCellBase) else "weight"
    )


def _quantizer(scheme: Scheme, prefix: str, base: type, rounder: Rounder | None, shared: dict) -> Quantizer:
    """How module `prefix` of float type `base` quantizes its weights under `scheme`."""
    part = PART.get(base, "rnn")
    fine = FINE_ACTIVATIONS[scheme.fine_activations]
    qualified = (prefix + ".") if prefix else ""

    def spec(name: str) -> QSpec:
        return scheme.plan.get(qualified + name, getattr(scheme, part))

    def fine_of(name: str) -> bool:
        return ("rnn.weight_ih" in fine and name.startswith("weight_ih")) or (part == "decoder" and "decoder" in fine)

    def round_weight(name, w, s):
        return (rounder or round_to_nearest)(qualified + name, w, s)

    float_dtype = getattr(torch, scheme.float_dtype)
    return Quantizer(spec=spec, rounder=round_weight, fine=fine_of, shared=shared, float_dtype=float_dtype)


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
