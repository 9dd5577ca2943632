"""`torch-dynamic`: the tutorial's `quantize_dynamic` int8 path (LSTM or GRU, and Linear), the baseline to beat.

torch.ao.quantization is deprecated upstream; this engine exists to measure against, not to ship.
"""

from __future__ import annotations

import warnings

from wordlm import cells
from wordlm.checkpoint import Checkpoint
from wordlm.engines.torch_fp32 import torch
from wordlm.errors import WordLMError
from wordlm.train.model import TorchEngine


def quantize_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """The tutorial's call: dynamic int8 (per-tensor) for every nn.LSTM, nn.GRU and nn.Linear."""
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
        modules = {getattr(torch.nn, c.torch_module) for c in cells.CELLS.values() if c.torch_dynamic}
        return quantize_dynamic(model, {*modules, torch.nn.Linear}, dtype=torch.qint8)


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> TorchEngine:
    from wordlm.train.model import build_model

    cfg = ckpt.config
    # torch.ao has no dynamic nn.RNN (it would stay float), and its LSTM fails on proj_size (pytorch
    # issues 60008, 74953): refused rather than measured as something it is not
    if not cfg.cell_spec.torch_dynamic:
        takes = ", ".join(c.name for c in cells.CELLS.values() if c.torch_dynamic)
        raise WordLMError(f"torch.ao.quantization has no dynamic int8 {cfg.cell} cell; torch-dynamic takes {takes}")
    if cfg.proj_size:
        raise WordLMError("torch.ao.quantization's dynamic LSTM cannot run a projection (proj_size)")
    torch.set_num_threads(threads)
    return TorchEngine(quantize_dynamic_int8(build_model(ckpt)), name="torch-dynamic", threads=threads)
