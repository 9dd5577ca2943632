"""Measuring and using a model through the engine contract: loss by the tutorial's protocol (`loss`)
and text generation (`generate`).

May import: wordlm.runtime (the Engine contract, sampling), wordlm.data, wordlm.errors. Engines are
passed in, never built here, so nothing here imports torch or onnxruntime.
"""

import sys
import types

from wordlm.evaluate.loss import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]


class _CallablePackage(types.ModuleType):
    """`wordlm.evaluate(engine, ids, ...)`, the README's API since before this package existed, keeps
    working: once the package is imported, `wordlm.evaluate` is this module rather than the function
    (wordlm's lazy names cannot shadow a subpackage), so the module itself calls `evaluate`."""

    def __call__(self, *args, **kwargs):
        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
