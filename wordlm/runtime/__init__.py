"""wordlm's torch-free inference: numpy, the checkpoint's memory-mapped arrays and the native kernels.

Nothing under wordlm.runtime imports torch, onnx or onnxruntime (tests/test_runtime.py runs it in a
process where they cannot be imported).
"""

from wordlm.runtime.engine import Engine, State
from wordlm.runtime.model import Runtime, check_threads
from wordlm.runtime.sampling import Sampling, new_rng, sample
from wordlm.runtime.weights import FloatLinear, Recurrent  # the float forms: calibration runs the float model

__all__ = ["Engine", "FloatLinear", "Recurrent", "Runtime", "Sampling", "State", "check_threads", "new_rng", "sample"]
