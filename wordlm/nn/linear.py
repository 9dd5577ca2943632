"""`wordlm.nn.Linear`: nn.Linear's forward on the native int8 GEMM (wordlm.native.linear_into)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordlm import native
from wordlm.nn.base import QuantizedModule, Quantizer, as_rows, check_inputs, pad_blocks, padded
from wordlm.quant.primitives import dequantize


class Linear(QuantizedModule):
    """y = x W^T + b with W as codes and per-row scales: the kernels' GEMM (7-bit activations per row,
    two codes each where `fine`), any leading dims, any float dtype in and out (computed in float32).

    Weights with several scales per row (a scheme's group sizes) are not what the kernels take: they
    run dequantized in float32 (torch's GEMM), the documented fallback for those schemes."""

    def __init__(self, in_features: int, out_features: int, threads: int | None = None) -> None:
        super().__init__(threads)
        self.in_features, self.out_features = in_features, out_features
        self.fine = False

    @classmethod
    def from_float(cls, mod: nn.Linear, q: Quantizer, threads: int | None = None) -> Linear:
        self = cls(mod.in_features, mod.out_features, threads)
        self.store("weight", mod.weight, q)
        self.store_bias("bias", mod.bias, q)
        self.fine = q.fine("weight")
        self._pack()
        return self

    def _pack(self) -> None:
        k, k_pad = self.in_features, padded(self.in_features)
        self._k_pad, self._dense, self._packed = k_pad, None, None
        scales = self.scales("weight")
        if scales.shape[1] > 1:  # group-wise: the float fallback
            self._dense = torch.from_numpy(dequantize(self.codes("weight"), scales))
            self._dense_bias = torch.from_numpy(self.bias_array("bias", self.out_features))
            return
        codes = pad_blocks(self.codes("weight"), (1, self.out_features, self.out_features), (1, k, k_pad))
        bias = self.bias_array("bias", self.out_features)
        nibbles = self._specs["weight"][0].bits <= 4  # int4 codes two a byte: half the weights' memory traffic
        self._packed = native.pack_linear(codes, scales[:, 0], bias, self.fine, nibbles=nibbles)
        self._kernel = native.kernel_index()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_inputs(self, x)
        if x.shape[-1] != self.in_features:
            raise RuntimeError(f"wordlm.nn.Linear: input has {x.shape[-1]} features, expected {self.in_features}")
        if self._dense is not None:
            return F.linear(x.float(), self._dense, self._dense_bias).to(x.dtype)
        rows = as_rows(x, self._k_pad)
        out = torch.empty(*x.shape[:-1], self.out_features)
        if m := rows.numel() // self._k_pad:
            native.linear_into(rows.data_ptr(), m, self._packed, out.data_ptr(), self._kernel, self._kernel_threads())
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    def extra_repr(self) -> str:
        fine = ", fine activations" if self.fine else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme_text()}{fine}"
