"""Quantization schemes: versioned configs in a registry, over the pure primitives.

The flow is gpt-fast's: quantize the state dict offline (wordlm.quantize, written as a normal
checkpoint directory whose config.json names the scheme, its version and parameters), then let the
runtime build its kernels from the stored codes at load. Every parameter group (embedding, LSTM,
decoder) has its own `QSpec`, so per-layer (mixed) precision is a config, not a new code path.
Tensors are numpy arrays; nothing here knows about checkpoints (they know about schemes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from wordlm.config import ModelConfig, expected_shapes
from wordlm.errors import WordLMError
from wordlm.quant.primitives import dequantize, pack_int4, quantize, unpack_int4


@dataclass(frozen=True)
class QSpec:
    """How one parameter group is stored: `bits` None keeps it float; `group_size` None is one scale
    per row (per output channel)."""

    bits: int | None = 8
    group_size: int | None = None

    def group(self, k: int) -> int:
        """Inputs per scale for a row of k inputs (a group size above k means one scale per row)."""
        return min(self.group_size or k, k)

    def check(self, where: str) -> None:
        if self.bits not in (None, 4, 8):
            raise WordLMError(f"{where}: bits must be 4, 8 or null (float), got {self.bits}")
        g = self.group_size
        if g is not None and (not isinstance(g, int) or g < 16 or g & (g - 1)):
            # what ONNX Runtime's block-wise kernels take (MatMulNBits: a power of two >= 16)
            raise WordLMError(f"{where}: group size must be a power of two >= 16, got {g!r}")


@dataclass(frozen=True)
class Scheme:
    name: str
    version: int
    encoder: QSpec  # embedding rows
    rnn: QSpec  # LSTM input and recurrent weights (per-row int8 or float: what the LSTM kernel takes)
    decoder: QSpec  # output projection
    float_dtype: str = "float32"  # storage of what stays float (biases, float parts); run in fp32

    def check(self) -> None:
        for part in ("encoder", "rnn", "decoder"):
            getattr(self, part).check(f"scheme {self.name}, {part}")
        if self.float_dtype not in ("float32", "float16"):
            raise WordLMError(f"scheme {self.name}: float_dtype must be float32 or float16")
        if self.rnn.bits not in (None, 8) or self.rnn.group_size is not None:
            raise WordLMError(f"scheme {self.name}: LSTM weights must be per-row int8 or float")

    def to_dict(self) -> dict:
        params = {p: asdict(getattr(self, p)) for p in ("encoder", "rnn", "decoder")}
        params["float_dtype"] = self.float_dtype
        return {"scheme": self.name, "version": self.version, "params": params}

    def spec_for(self, name: str) -> QSpec | None:
        """The QSpec of a parameter, or None for parameters kept float (biases)."""
        if name == "encoder.weight":
            spec = self.encoder
        elif name.startswith("rnn.weight_"):
            spec = self.rnn
        elif name == "decoder.weight":
            spec = self.decoder
        else:
            return None
        return spec if spec.bits is not None else None

    def tensor_spec(self, cfg: ModelConfig) -> dict:
        out = {}
        for name, shape in expected_shapes(cfg).items():
            spec = self.spec_for(name)
            if spec is None:
                out[name] = (shape, (np.dtype(self.float_dtype),))
                continue
            n, k = shape
            group = spec.group(k)
            if k % group:
                raise WordLMError(f"scheme {self.name}: group size {group} does not divide {name}'s {k} columns")
            codes = ((n, k // 2), (np.dtype(np.uint8),)) if spec.bits == 4 else ((n, k), (np.dtype(np.int8),))
            out[f"{name}.qweight"] = codes
            out[f"{name}.scales"] = ((n, k // group), (np.dtype(np.float16),))
        return out

    def quantize(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, w in tensors.items():
            spec = self.spec_for(name)
            if spec is None:
                out[name] = np.asarray(w, self.float_dtype)
                continue
            q, s = quantize(w, spec.bits, spec.group(w.shape[1]))
            out[f"{name}.qweight"] = pack_int4(q) if spec.bits == 4 else q
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
    """The int8 codes [N, K] of a quantized parameter (unpacked when stored as int4)."""
    q = tensors[f"{name}.qweight"]
    return unpack_int4(q) if spec.bits == 4 else q


# The registry. Bump a scheme's version whenever what it writes changes meaning.
SCHEMES: dict[str, Scheme] = {
    # everything int8, one scale per row: 28.8 MB for the tutorial model (vs 79.7 MB for torch.ao's)
    "int8": Scheme("int8", 1, encoder=QSpec(8), rnn=QSpec(8), decoder=QSpec(8)),
    # embedding and decoder 4-bit in groups of 256 inputs (chosen by measurement, benchmarks/quant.md),
    # LSTM int8, biases stored fp16: 15.99 MB for the tutorial model
    "int4": Scheme("int4", 1, encoder=QSpec(4, 256), rnn=QSpec(8), decoder=QSpec(4, 256), float_dtype="float16"),
}


def get_scheme(name: str, group_size: int | None = None) -> Scheme:
    """A registered scheme; `group_size` overrides the group size of its 4-bit parts."""
    if name not in SCHEMES:
        raise WordLMError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    scheme = SCHEMES[name]
    if group_size is not None:
        parts = {
            p: replace(getattr(scheme, p), group_size=group_size)
            for p in ("encoder", "decoder")
            if getattr(scheme, p).bits == 4
        }
        if not parts:
            raise WordLMError(f"scheme {name} has no group-wise part; --group-size does not apply")
        scheme = replace(scheme, **parts)
    scheme.check()
    return scheme


def scheme_from_dict(d: dict) -> Scheme:
    """The scheme recorded in a checkpoint's config.json, checked against this wordlm's registry."""
    try:
        name, version, params = d["scheme"], d["version"], d["params"]
        parts = {p: QSpec(**params[p]) for p in ("encoder", "rnn", "decoder")}
        scheme = Scheme(name, version, **parts, float_dtype=params["float_dtype"])
    except (KeyError, TypeError) as e:
        raise WordLMError(f"malformed quantization config ({e!r})") from None
    if not isinstance(name, str) or name not in SCHEMES:
        raise WordLMError(f"unknown quantization scheme {name!r}")
    if type(version) is not int or version != SCHEMES[name].version:
        raise WordLMError(f"scheme {name} version {version!r}; this wordlm reads version {SCHEMES[name].version}")
    scheme.check()
    return scheme
