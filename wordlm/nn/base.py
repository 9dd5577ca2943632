"""What every wordlm.nn module shares: weights held as codes and scales, and the call conventions.

A quantized weight is two buffers, `name` (the codes as `wordlm quantize` stores them: int8 at 8 bits,
densely packed uint8 below) and `name_scale` (fp16, one per row or per group), so that `state_dict()`
and `torch.save` hold the real size and load into `quantize_dynamic(fresh_float_model)`. The kernels'
packed copies are built from the buffers (`_pack`), at conversion and after every `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from wordlm import native
from wordlm.errors import WordLMError
from wordlm.quant import QSpec
from wordlm.quant.primitives import pack_bits, row_unit, unpack_bits

# (weight name in its module, float weight [N, K], spec) -> (codes int8 [N, K], scales fp16 [N, G])
Rounder = Callable[[str, np.ndarray, QSpec], tuple[np.ndarray, np.ndarray]]


@dataclass
class Quantizer:
    """What `quantize_dynamic` hands a module's `from_float`: the spec of each of its weights and how
    to round them. `spec` maps a weight's name in its module to its QSpec (bits None: keep float);
    `fine` says whether a matrix's inputs go through the kernels as two 7-bit codes (Scheme); `shared`
    memoises the codes of a float tensor that several modules hold (a tied embedding and decoder), so
    that they are quantized and saved once."""

    spec: Callable[[str], QSpec]
    rounder: Rounder
    fine: Callable[[str], bool]
    shared: dict
    float_dtype: torch.dtype = torch.float32  # biases' storage (the scheme's float_dtype); run in float32


def spec_text(spec: QSpec, k: int) -> str:
    """A weight's scheme for people: 'int8 per row', 'int4 groups of 64'."""
    group = spec.group(k)
    return f"int{spec.bits} " + ("per row" if group == k else f"groups of {group}")


PACKED = ("_packed", "_stacks", "_stack", "_table", "_dense", "_dense_bias")  # what _pack builds


class QuantizedModule(nn.Module):
    """A module whose weights are codes and scales (buffers) and whose work runs on the native kernels.

    `threads`: the kernels' threads; None follows torch.get_num_threads() at each call."""

    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = threads
        self._specs: dict[str, tuple[QSpec, int]] = {}  # weight name -> (spec, its K)

    def _kernel_threads(self) -> int:
        return self.threads or torch.get_num_threads()

    def store(self, name: str, w: torch.Tensor, q: Quantizer) -> None:
        """Quantize float weight `w` [N, K] into the buffers `name` and `name_scale` (shared where another
        module holds the same tensor under the same spec)."""
        spec = q.spec(name)
        if spec.bits is None:
            raise WordLMError(f"the plan keeps {name} float, and a module is quantized whole")
        key = (w.data_ptr(), tuple(w.shape), w.stride(), spec)
        if key not in q.shared:
            k = w.shape[1]
            codes, scales = q.rounder(name, w.detach().float().numpy(), spec)
            pad = -k % row_unit(spec.bits)  # dense rows fill whole bytes: pad with zero codes
            codes = np.pad(codes, ((0, 0), (0, pad))) if pad else codes
            # w is kept with its codes: its address is the key, and must not be reused while it is one
            q.shared[key] = (w, torch.from_numpy(pack_bits(codes, spec.bits)), torch.from_numpy(scales))
        _, codes_t, scales_t = q.shared[key]
        self.register_buffer(name, codes_t)
        self.register_buffer(f"{name}_scale", scales_t)
        self._specs[name] = (spec, w.shape[1])

    def store_bias(self, name: str, b: torch.Tensor | None, q: Quantizer) -> None:
        """A bias as a buffer of the scheme's float dtype (None where the float module has none)."""
        self.register_buffer(name, None if b is None else b.detach().to(q.float_dtype, copy=True))

    def bias_array(self, name: str, n: int) -> np.ndarray:
        """Bias `name` as float32 [n] for the kernels, which always add one: zeros where there is none."""
        b = getattr(self, name)
        return np.zeros(n, np.float32) if b is None else b.float().numpy()

    def codes(self, name: str) -> np.ndarray:
        """The int8 codes [N, K] of weight `name`."""
        spec, k = self._specs[name]
        return unpack_bits(getattr(self, name).numpy(), spec.bits)[:, :k]

    def scales(self, name: str) -> np.ndarray:
        """Weight `name`'s scales as float32 [N, G]."""
        return getattr(self, f"{name}_scale").float().numpy()

    def scheme_text(self) -> str:
        texts = sorted({spec_text(spec, k) for spec, k in self._specs.values()})
        return f"scheme={'/'.join(texts)}, kernels={native.active_isa()}"

    def _pack(self) -> None:
        """Build the kernels' packed weights from the buffers."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        """Without the packed copies: they hold raw addresses, which a deep copy or a pickle would carry
        to memory the copy does not own. __setstate__ packs the copy's own."""
        return {k: v for k, v in self.__dict__.items() if k not in PACKED}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._pack()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._pack()  # the packed copies follow the loaded codes


def check_inputs(module: nn.Module, *tensors: torch.Tensor | None) -> None:
    """Refuse, in one line, a call whose result would need a gradient (the kernels have none), and
    tensors the kernels cannot read (not in the CPU's memory)."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"wordlm.nn.{type(module).__name__} is inference-only (int8 kernels, no autograd): "
            "call it under torch.no_grad() or on inputs that do not require grad"
        )
    if not all(t is None or t.is_cpu for t in tensors):
        raise RuntimeError(f"wordlm.nn.{type(module).__name__} runs on the CPU: its inputs must be CPU tensors")


def as_rows(x: torch.Tensor, k_pad: int) -> torch.Tensor:
    """x [..., K] of any float dtype and strides -> float32 [..., k_pad], C-contiguous, zero columns past
    K: the kernels' input. x itself where it already is that (not even a view: each torch call costs
    ~1.5 us, a one-token call's budget), else one copy (two for another dtype to pad)."""
    k = x.shape[-1]
    if k != k_pad:
        return F.pad(x.float(), (0, k_pad - k)).contiguous()
    if x.dtype == torch.float32 and x.is_contiguous():
        return x
    return x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # (without copy: x if fp32)


def owned_copy(t: torch.Tensor, width: int) -> torch.Tensor:
    """A new float32 C-contiguous copy of t [..., real], zero columns up to `width`: a state the kernels
    update in place, without touching the caller's."""
    if t.shape[-1] != width:
        return F.pad(t.float(), (0, width - t.shape[-1])).contiguous()
    return t.to(torch.float32, memory_format=torch.contiguous_format, copy=True)


Blocks = tuple[int, int, int]  # (count, real size, padded size): a matrix dimension as blocks of padding


def pad_blocks(a: np.ndarray, rows: Blocks, cols: Blocks | None = None, fill: float = 0) -> np.ndarray:
    """a [count * real rows (, count * real cols)] -> the same with each block padded to its padded
    size by `fill`: the gates of a hidden size that is not a multiple of 4, a layer's input that is the
    two directions' padded outputs side by side."""
    (rc, rr, rp), (cc, cr, cp) = rows, cols or (1, 1, 1)
    out = np.full((rc, rp, cc, cp), fill, a.dtype)
    out[:, :rr, :, :cr] = a.reshape(rc, rr, cc, cr)
    return out.reshape(rc * rp, cc * cp) if cols else out.reshape(rc * rp)


def padded(n: int) -> int:
    """n rounded up to the kernels' multiple of 4."""
    return -(-n // 4) * 4
