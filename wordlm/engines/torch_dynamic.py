"""`torch-dynamic`: the tutorial's `quantize_dynamic` int8 path (LSTM + Linear), the baseline to beat.

torch.ao.quantization is deprecated upstream; this engine exists to measure against, not to ship.
"""

from __future__ import annotations

import warnings

from wordlm.checkpoint import Checkpoint
from wordlm.engines.torch_fp32 import TorchEngine, torch
from wordlm.errors import WordLMError


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The tutorial's call: dynamic int8 (per-tensor) for every nn.LSTM and nn.Linear."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:
        raise WordLMError("this torch build has no torch.ao.quantization; torch-dynamic is unavailable") from None
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        raise WordLMError(
            f"this torch build has no quantized CPU backend (has {engines}); torch-dynamic is unavailable"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of torch.ao.quantization
        return quantize_dynamic(model, {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> TorchEngine:
    from wordlm.model import build_model

    torch.set_num_threads(threads)
    return TorchEngine(quantize_dynamic_int8(build_model(ckpt)), name="torch-dynamic", threads=threads)
