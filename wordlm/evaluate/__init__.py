"""Measuring and using a model through the engine contract: loss by the tutorial's protocol (`loss`)
and text generation (`generate`).

May import: wordlm.runtime (the Engine contract, sampling), wordlm.data, wordlm.errors. Engines are
passed in, never built here, so nothing here imports torch or onnxruntime.
"""

from wordlm.evaluate.loss import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
