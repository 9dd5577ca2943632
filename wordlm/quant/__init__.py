"""Quantization schemes: versioned configs in a registry, over the pure primitives.

The flow is gpt-fast's: quantize the state dict offline (wordlm.quantize, written as a normal
checkpoint directory whose config.json names the scheme, its version and parameters), then let the
runtime build its kernels from the stored codes at load. Every parameter group (embedding, LSTM,
decoder) has its own `QSpec`, and a scheme's `plan` can override it for any single weight (mixed
precision: a config, not a new code path); `Scheme.spec_for` is the one place that decides. Tensors
are numpy arrays; nothing here knows about checkpoints (they know about schemes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from wordlm.config import ModelConfig, expected_shapes
from wordlm.errors import WordLMError
from wordlm.quant.primitives import WIDTHS, dequantize, pack_bits, packed_width, quantize, row_unit, unpack_bits

PARTS = ("encoder", "rnn", "decoder")
# where the runtime's GEMM inputs are two 7-bit codes (Scheme.fine_activations): the parts by setting
FINE_ACTIVATIONS = {"none": (), "inputs": ("rnn.weight_ih",), "all": ("rnn.weight_ih", "decoder")}


@dataclass(frozen=True)
class QSpec:
    """How one weight is stored: `bits` None keeps it float; `group_size` None is one scale per row
    (per output channel)."""

    bits: int | None = 8
    group_size: int | None = None

    def group(self, k: int) -> int:
        """Inputs per scale for a row of k inputs (a group size above k means one scale per row)."""
        return min(self.group_size or k, k)

    def check(self, where: str) -> None:
        if self.bits is not None and (type(self.bits) is not int or self.bits not in WIDTHS):
            raise WordLMError(f"{where}: bits must be one of {', '.join(map(str, WIDTHS))} or null, got {self.bits!r}")
        g = self.group_size
        if g is not None and (type(g) is not int or g < 16 or g & (g - 1)):
            # what ONNX Runtime's block-wise kernels take (MatMulNBits: a power of two >= 16)
            raise WordLMError(f"{where}: group size must be a power of two >= 16, got {g!r}")


def plan_from_dict(d: object) -> dict[str, QSpec]:
    """A plan as config.json (or a --plan file) writes it: {weight name: {"bits", "group_size"}}."""
    if not isinstance(d, dict):
        raise WordLMError(f"a quantization plan must be an object of weight name -> spec, got {type(d).__name__}")
    try:
        return {name: QSpec(**spec) for name, spec in d.items()}
    except TypeError as e:
        raise WordLMError(f"malformed quantization plan ({e})") from None


Rounder = Callable[[str, np.ndarray, QSpec], tuple[np.ndarray, np.ndarray]]  # (name, W, spec) -> (codes, scales)


def round_to_nearest(name: str, w: np.ndarray, spec: QSpec) -> tuple[np.ndarray, np.ndarray]:
    """The default `Rounder`: each weight on its own, round to nearest under MSE-searched scales."""
    return quantize(w, spec.bits, spec.group(w.shape[1]))


@dataclass(frozen=True)
class Scheme:
    """A quantization plan: a QSpec per parameter group, and per-weight overrides in `plan`.

    Version 1 (wordlm before issue 14): 4- and 8-bit parts, per-row int8 or float LSTM, no plan.
    Version 2 adds the widths 2, 3, 5 and 6, any width with one scale per row for the LSTM, and the
    plan; a version 1 config reads as it always did.

    `fine_activations` is the runtime's, not the weights': where GEMM inputs go through the kernels as
    two 7-bit codes (~14 bits; wordlm.native.PackedLinear) instead of one, each such GEMM twice the
    work. "inputs": the input projections (W_ih), most of what 7-bit activations cost for 5-13% more
    time; "all": the decoder too, nearly all of it for ~1.6x the time (FINE_ACTIVATIONS;
    benchmarks/activations.md). Written to config.json only when not "none"."""

    name: str
    version: int
    encoder: QSpec  # embedding rows
    rnn: QSpec  # recurrent weights: one scale per row (codes of any width are int8 codes to the kernels)
    decoder: QSpec  # output projection
    float_dtype: str = "float32"  # storage of what stays float (biases, float parts); run in fp32
    plan: dict[str, QSpec] = field(default_factory=dict)  # weight name -> its QSpec, over its part's
    fine_activations: str = "none"  # one of FINE_ACTIVATIONS

    def check(self) -> None:
        for part in PARTS:
            getattr(self, part).check(f"scheme {self.name}, {part}")
        for name, spec in self.plan.items():
            spec.check(f"scheme {self.name}, plan for {name}")
        if self.fine_activations not in FINE_ACTIVATIONS:
            raise WordLMError(f"scheme {self.name}: fine_activations must be one of {', '.join(FINE_ACTIVATIONS)}")
        if self.float_dtype not in ("float32", "float16"):
            raise WordLMError(f"scheme {self.name}: float_dtype must be float32 or float16")
        rnn = [self.rnn, *(s for n, s in self.plan.items() if n.startswith("rnn."))]
        if any(s.group_size is not None for s in rnn):
            raise WordLMError(f"scheme {self.name}: recurrent weights take one scale per row (group_size null)")
        widths = {s.bits for s in (self.encoder, self.decoder, *self.plan.values())}
        if self.version == 1 and (self.plan or not widths <= {None, 4, 8} or self.rnn.bits not in (None, 8)):
            raise WordLMError(f"scheme {self.name} version 1 has no plan and only 4- or 8-bit parts (int8 LSTM)")

    def check_names(self, names: Iterable[str]) -> None:
        """Every plan entry must name a weight (not a bias) of the model it quantizes."""
        weights = {n for n in names if "weight" in n}
        unknown = sorted(self.plan.keys() - weights)
        if unknown:
            raise WordLMError(f"scheme {self.name}: the plan names {unknown[:4]}, not weights of this model")

    def to_dict(self) -> dict:
        params = {p: asdict(getattr(self, p)) for p in PARTS}
        params["float_dtype"] = self.float_dtype
        if self.plan:
            params["plan"] = {name: asdict(spec) for name, spec in sorted(self.plan.items())}
        if self.fine_activations != "none":
            params["fine_activations"] = self.fine_activations
        return {"scheme": self.name, "version": self.version, "params": params}

    def spec_for(self, name: str) -> QSpec | None:
        """The QSpec of a parameter (its plan entry, else its part's), or None where it stays float."""
        if name in self.plan:
            spec = self.plan[name]
        elif name == "encoder.weight":
            spec = self.encoder
        elif name.startswith("rnn.weight_"):
            spec = self.rnn
        elif name == "decoder.weight":
            spec = self.decoder
        else:
            return None
        return spec if spec.bits is not None else None

    def tensor_spec(self, cfg: ModelConfig) -> dict:
        shapes = expected_shapes(cfg)
        self.check_names(shapes)
        out = {}
        for name, shape in shapes.items():
            spec = self.spec_for(name)
            if spec is None:
                out[name] = (shape, (np.dtype(self.float_dtype),))
                continue
            n, k = shape
            group = spec.group(k)
            if k % group:
                raise WordLMError(f"scheme {self.name}: group size {group} does not divide {name}'s {k} columns")
            if k % row_unit(spec.bits):
                raise WordLMError(
                    f"scheme {self.name}: {spec.bits}-bit rows of {name} need a multiple of {row_unit(spec.bits)} "
                    f"columns, it has {k}"
                )
            dtype = np.dtype(np.int8 if spec.bits == 8 else np.uint8)
            out[f"{name}.qweight"] = ((n, packed_width(k, spec.bits)), (dtype,))
            out[f"{name}.scales"] = ((n, k // group), (np.dtype(np.float16),))
        return out

    def quantize(self, tensors: dict[str, np.ndarray], rounder: Rounder = round_to_nearest) -> dict[str, np.ndarray]:
        """Float tensors -> stored ones: codes packed densely and fp16 scales for every quantized weight
        (rounded by `rounder`: round to nearest, or wordlm.quantize.calibrate's error compensation)."""
        self.check_names(tensors)
        out = {}
        for name, w in tensors.items():
            spec = self.spec_for(name)
            if spec is None:
                out[name] = np.asarray(w, self.float_dtype)
                continue
            q, s = rounder(name, np.asarray(w, np.float32), spec)
            out[f"{name}.qweight"] = pack_bits(q, spec.bits)
            out[f"{name}.scales"] = s
        return out

    def dequantize(self, tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
        out = {}
        for name in expected_shapes(cfg):
            spec = self.spec_for(name)
            if spec is None:
                out[name] = np.asarray(tensors[name], np.float32)
            else:
                out[name] = dequantize(codes(tensors, name, spec), tensors[f"{name}.scales"])
        return out


def codes(tensors: dict[str, np.ndarray], name: str, spec: QSpec) -> np.ndarray:
    """The int8 codes [N, K] of a quantized parameter (unpacked from their dense storage)."""
    return unpack_bits(tensors[f"{name}.qweight"], spec.bits)


# The registry. Bump a scheme's version whenever what it writes changes meaning; every earlier version
# stays readable (scheme_from_dict).
SCHEMES: dict[str, Scheme] = {
    # everything int8, one scale per row: 28.8 MB for the tutorial model (vs 79.7 MB for torch.ao's)
    "int8": Scheme("int8", 2, encoder=QSpec(8), rnn=QSpec(8), decoder=QSpec(8)),
    # embedding and decoder 4-bit in groups of 256 inputs (chosen by measurement, benchmarks/quant.md),
    # LSTM int8, biases stored fp16: 15.99 MB for the tutorial model
    "int4": Scheme("int4", 2, encoder=QSpec(4, 256), rnn=QSpec(8), decoder=QSpec(4, 256), float_dtype="float16"),
    # a plan per weight, as `wordlm quantize --budget` chooses it (wordlm.quantize.budget); int8 where it is silent
    "mixed": Scheme("mixed", 2, encoder=QSpec(8), rnn=QSpec(8), decoder=QSpec(8)),
}


def get_scheme(
    name: str, group_size: int | None = None, plan: dict[str, QSpec] | None = None, fine_activations: str = "none"
) -> Scheme:
    """A registered scheme; `group_size` overrides the group size of its sub-8-bit parts, `plan` adds
    per-weight overrides, `fine_activations` sets the runtime's (Scheme)."""
    if name not in SCHEMES:
        raise WordLMError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    scheme = SCHEMES[name]
    if group_size is not None:
        parts = {
            p: replace(getattr(scheme, p), group_size=group_size)
            for p in ("encoder", "decoder")
            if getattr(scheme, p).bits not in (None, 8)
        }
        if not parts:
            raise WordLMError(f"scheme {name} has no group-wise part; --group-size does not apply")
        scheme = replace(scheme, **parts)
    if plan:
        scheme = replace(scheme, plan=dict(plan))
    if fine_activations != "none":
        scheme = replace(scheme, fine_activations=fine_activations)
    scheme.check()
    return scheme


def scheme_from_dict(d: dict) -> Scheme:
    """The scheme recorded in a checkpoint's config.json, checked against this wordlm's registry."""
    try:
        name, version, params = d["scheme"], d["version"], d["params"]
        parts = {p: QSpec(**params[p]) for p in PARTS}
        plan = plan_from_dict(params.get("plan", {}))
        fine = params.get("fine_activations", "none")
        scheme = Scheme(name, version, **parts, float_dtype=params["float_dtype"], plan=plan, fine_activations=fine)
    except (KeyError, TypeError, AttributeError) as e:
        raise WordLMError(f"malformed quantization config ({e!r})") from None
    if not isinstance(name, str) or name not in SCHEMES:
        raise WordLMError(f"unknown quantization scheme {name!r}")
    newest = SCHEMES[name].version
    if type(version) is not int or not 1 <= version <= newest:
        raise WordLMError(f"scheme {name} version {version!r}; this wordlm reads versions 1 to {newest}")
    scheme.check()
    return scheme
