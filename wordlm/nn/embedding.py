"""`wordlm.nn.Embedding`, `EmbeddingBag`: rows looked up from codes (the runtime's packed table: only
the rows a call reads are unpacked), as torch.ao's quantized embeddings do when asked (dtype=quint8)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordlm.nn.base import QuantizedModule, Quantizer
from wordlm.quant.primitives import code_count
from wordlm.runtime.weights import Embedding as _Table


class _EmbeddingBase(QuantizedModule):
    def __init__(self, num_embeddings: int, embedding_dim: int, threads: int | None = None) -> None:
        super().__init__(threads)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx: int | None = None
        self.dtype = torch.float32  # of the float module's output

    @classmethod
    def from_float(cls, mod: nn.Embedding | nn.EmbeddingBag, q: Quantizer, threads: int | None = None):
        self = cls(mod.num_embeddings, mod.embedding_dim, threads)
        self.padding_idx, self.dtype = mod.padding_idx, mod.weight.dtype
        self._copy_flags(mod)
        self.store("weight", mod.weight, q)
        self._pack()
        return self

    def _copy_flags(self, mod: nn.Module) -> None:
        """The float module's settings that change what forward computes (EmbeddingBag's)."""

    def _pack(self) -> None:
        spec, _ = self._specs["weight"]
        table = self.weight.numpy()  # rows of whole bytes: code_count codes, the last past embedding_dim
        self._table = _Table(table, self.scales("weight"), spec.bits, code_count(table.shape[1], spec.bits))

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The dequantized rows of ids (any shape) -> float32 [..., embedding_dim]."""
        out = torch.from_numpy(self._table(ids.numpy()))
        return out[..., : self.embedding_dim]  # rows padded to whole bytes (sub-8-bit widths)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}, {self.scheme_text()}"


class Embedding(_EmbeddingBase):
    """nn.Embedding's lookup (forward only: padding_idx matters to gradients alone)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self.rows(input)
        return out if self.dtype == torch.float32 else out.to(self.dtype)


class EmbeddingBag(_EmbeddingBase):
    """nn.EmbeddingBag's bags (sum, mean or max; offsets; per-sample weights; padding_idx): the rows of
    the distinct ids dequantized once, then torch's own embedding_bag over that small table."""

    def _copy_flags(self, mod: nn.EmbeddingBag) -> None:
        self.mode, self.include_last_offset = mod.mode, mod.include_last_offset

    def forward(
        self, input: torch.Tensor, offsets: torch.Tensor | None = None, per_sample_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        ids, inverse = torch.unique(input, return_inverse=True)
        padding = None
        if self.padding_idx is not None and bool((hit := ids == self.padding_idx).any()):
            padding = int(hit.nonzero()[0, 0])
        out = F.embedding_bag(
            inverse, self.rows(ids), offsets, mode=self.mode,
            per_sample_weights=None if per_sample_weights is None else per_sample_weights.float(),
            include_last_offset=self.include_last_offset, padding_idx=padding,
        )  # fmt: skip
        return out if self.dtype == torch.float32 else out.to(self.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", scheme=", f", mode={self.mode!r}, scheme=", 1)
