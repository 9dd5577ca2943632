"""wordlm's torch-free inference: numpy, the checkpoint's memory-mapped arrays and the native kernels.

Nothing under wordlm.runtime imports torch, onnx or onnxruntime (tests/test_runtime.py runs it in a
process where they cannot be imported).
"""

from wordlm.runtime.model import Runtime, State, check_threads
from wordlm.runtime.sampling import Sampling, new_rng, sample

__all__ = ["Runtime", "Sampling", "State", "check_threads", "new_rng", "sample"]
