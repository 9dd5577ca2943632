"""Whole checkpoints in and out of a quantization scheme: above both `checkpoint` and `quant`.

`quantize_checkpoint` is the offline step (gpt-fast's "quantize the state dict, swap at load");
`dequantize_checkpoint` is the slow reference every engine is held to: dequantize, then run in fp32.
"""

from __future__ import annotations

from wordlm.checkpoint import Checkpoint
from wordlm.errors import WordLMError
from wordlm.quant import Scheme


def quantize_checkpoint(ckpt: Checkpoint, scheme: Scheme) -> Checkpoint:
    """A float checkpoint -> the same model quantized by `scheme` (a new, unsaved Checkpoint)."""
    if ckpt.scheme is not None:
        raise WordLMError(f"checkpoint is already quantized ({ckpt.scheme.name}); quantize a float one")
    scheme.check()
    tensors = scheme.quantize(ckpt.tensors)
    meta = {**ckpt.meta, "quantized_from": str(ckpt.path) if ckpt.path else None}
    return Checkpoint(ckpt.config, ckpt.vocab, tensors, scheme=scheme, meta=meta)


def dequantize_checkpoint(ckpt: Checkpoint) -> Checkpoint:
    """The reference: a quantized checkpoint's weights dequantized to fp32 (a float Checkpoint)."""
    if ckpt.scheme is None:
        return ckpt
    tensors = ckpt.scheme.dequantize(ckpt.tensors, ckpt.config)
    return Checkpoint(ckpt.config, ckpt.vocab, tensors, meta=ckpt.meta)
