"""The quantization workflow: float checkpoint in, quantized checkpoint out.

Owns: `convert` (whole checkpoints in and out of a scheme), `calibrate` (GPTQ's input statistics from
the float model run on training text) and `budget` (the smallest per-weight plan within a loss budget).
The number formats themselves (schemes, codes, GPTQ's rounding) are wordlm.quant's, below the
checkpoint format. May import: wordlm.quant, wordlm.checkpoint, wordlm.runtime, wordlm.tasks,
wordlm.engines (the budget measures plans on an engine). Never torch.
"""

from wordlm.quantize.convert import METHODS, dequantize_checkpoint, make_rounder, quantize_checkpoint

__all__ = ["METHODS", "dequantize_checkpoint", "make_rounder", "quantize_checkpoint"]
