"""Inference engines, by name: the registry, and the choice of a default.

The registry imports nothing heavy (`wordlm --help` lists the names without loading numpy); each
engine's module, and the runtime it needs (torch, onnxruntime, wordlm's kernels), loads when that
engine is built. The interface they share is wordlm.runtime.engine.Engine.
"""

from __future__ import annotations

import importlib
import importlib.util

from wordlm.errors import WordLMError

# name -> "module:factory"; factories take (checkpoint, threads) and import their runtime lazily, so a
# missing optional runtime (torch, onnxruntime) only matters to the engine that needs it.
ENGINES: dict[str, str] = {
    "torch": "wordlm.engines.torch_fp32:from_checkpoint",
    "torch-dynamic": "wordlm.engines.torch_dynamic:from_checkpoint",
    "wordlm": "wordlm.engines.wordlm:from_checkpoint",
    "onnxruntime": "wordlm.engines.ort:fp32_from_checkpoint",
    "onnxruntime-int8": "wordlm.engines.ort:int8_from_checkpoint",
}


def default_engine(ckpt) -> str:
    """wordlm's runtime for quantized checkpoints; the torch fp32 reference for float ones, or the
    runtime when torch is not installed."""
    if ckpt.scheme is not None:
        return "wordlm"
    try:
        has_torch = importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook that refuses it, or a None entry in sys.modules
        has_torch = False
    return "torch" if has_torch else "wordlm"


def load_engine(name: str, ckpt, threads: int = 1):
    """Build engine `name` for a loaded checkpoint, using `threads` CPU threads."""
    if name not in ENGINES:
        raise WordLMError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    from wordlm.runtime import check_threads

    check_threads(threads)
    module, factory = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), factory)(ckpt, threads)
