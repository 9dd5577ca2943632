"""wordlm: word-level recurrent language models, from text to a small, fast, quantized model.

Names are imported on first use (PEP 562), so that `import wordlm` and `wordlm --help` cost no
torch, and inference (wordlm.runtime) never loads it.
"""

from __future__ import annotations

from wordlm.lazy import lazy_getattr

__version__ = "0.1.0"

# name -> the module that defines it
_API = {
    "Checkpoint": "wordlm.checkpoint",
    "load_checkpoint": "wordlm.checkpoint",
    "save_checkpoint": "wordlm.checkpoint",
    "ModelConfig": "wordlm.config",
    "preset": "wordlm.config",
    "Corpus": "wordlm.data",
    "Vocab": "wordlm.data",
    "load_corpus": "wordlm.data",
    "load_split": "wordlm.data",
    "Engine": "wordlm.runtime",
    "load_engine": "wordlm.engines",
    "WordLMError": "wordlm.errors",
    "EvalResult": "wordlm.tasks",
    "evaluate": "wordlm.tasks",
    "import_state_dict": "wordlm.train.importer",
    "RecurrentLM": "wordlm.train.model",
    "build_model": "wordlm.train.model",
    "quantize_dynamic": "wordlm.nn",
    "quantize_checkpoint": "wordlm.quantize",
    "dequantize_checkpoint": "wordlm.quantize",
    "Runtime": "wordlm.runtime",
    "Sampling": "wordlm.runtime",
}

__all__ = sorted(_API)

__getattr__ = lazy_getattr("wordlm", _API)
