"""Whole checkpoints in and out of a quantization scheme: above both `checkpoint` and `quant`.

`quantize_checkpoint` is the offline step (gpt-fast's "quantize the state dict, swap at load"), with
round to nearest or GPTQ calibrated on training text (wordlm.quantize.calibrate); `dequantize_checkpoint` is
the slow reference every engine is held to: dequantize, then run in fp32.
"""

from __future__ import annotations

from wordlm.checkpoint import Checkpoint
from wordlm.errors import WordLMError
from wordlm.quant import Rounder, Scheme, round_to_nearest
from wordlm.quantize.calibrate import CALIB_TOKENS, calibrated_rounder, calibration_ids

METHODS = ("rtn", "gptq")  # round to nearest; GPTQ from a calibration sample (wordlm.quantize.calibrate)


def make_rounder(
    ckpt: Checkpoint, method: str = "rtn", calib_tokens: int | None = None, data_dir: str | None = None
) -> tuple[Rounder, dict]:
    """(the rounder of `method`, what the quantized checkpoint's meta records about it).

    "gptq" calibrates on the first `calib_tokens` (default CALIB_TOKENS) of the training split of
    `data_dir` (default WikiText-2); "rtn" needs no data."""
    if method not in METHODS:
        raise WordLMError(f"unknown quantization method {method!r}; choose one of {', '.join(METHODS)}")
    if calib_tokens is not None and method == "rtn":
        raise WordLMError("--calib-tokens applies to --method gptq only")
    if method == "rtn":
        return round_to_nearest, {"quantization_method": method}
    ids = calibration_ids(ckpt, calib_tokens or CALIB_TOKENS, data_dir)
    return calibrated_rounder(ckpt, ids), {"quantization_method": method, "calib_tokens": len(ids)}


def quantize_checkpoint(
    ckpt: Checkpoint, scheme: Scheme, rounder: Rounder = round_to_nearest, provenance: dict | None = None
) -> Checkpoint:
    """A float checkpoint -> the same model quantized by `scheme` (a new, unsaved Checkpoint), each
    weight rounded by `rounder` (see make_rounder). The stored format does not depend on the rounder;
    `provenance` (how it rounded) goes into the meta."""
    if ckpt.scheme is not None:
        raise WordLMError(f"checkpoint is already quantized ({ckpt.scheme.name}); quantize a float one")
    scheme.check()
    meta = {**ckpt.meta, "quantized_from": str(ckpt.path) if ckpt.path else None, **(provenance or {})}
    tensors = scheme.quantize(ckpt.tensors, rounder)
    return Checkpoint(ckpt.config, ckpt.vocab, tensors, scheme=scheme, meta=meta)


def dequantize_checkpoint(ckpt: Checkpoint) -> Checkpoint:
    """The reference: a quantized checkpoint's weights dequantized to fp32 (a float Checkpoint)."""
    if ckpt.scheme is None:
        return ckpt
    tensors = ckpt.scheme.dequantize(ckpt.tensors, ckpt.config)
    return Checkpoint(ckpt.config, ckpt.vocab, tensors, meta=ckpt.meta)
