"""What one does with a model, over any Engine: its loss by the tutorial's protocol (`loss`) and text
(`generate`).

May import: wordlm.runtime (the Engine contract, sampling), wordlm.data, wordlm.errors. Engines are
passed in, never built here, so nothing here imports torch or onnxruntime. (Named `tasks`, not
`evaluate`: a subpackage of that name would hide the function `wordlm.evaluate` once imported.)
"""

from wordlm.tasks.loss import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
