"""The torch side: the model (`model`), the training loop (`loop`), its settings (`config`, torch-free),
training beyond one process (`distributed`) and the import of pytorch/examples' and the tutorial's
state_dicts (`importer`).

May import: torch, wordlm.checkpoint, wordlm.config, wordlm.data, wordlm.runtime (the Engine contract,
to validate through wordlm.tasks), wordlm.tasks. Nothing torch-free imports this package but
its torch-free `config`; names load on first use (PEP 562), so that importing `config` costs no torch.
"""

from __future__ import annotations

from wordlm.lazy import lazy_getattr

_API = {
    "TrainConfig": "wordlm.train.config",
    "cpu_bf16": "wordlm.train.loop",
    "reuse_freed_memory": "wordlm.train.loop",
    "train": "wordlm.train.loop",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr("wordlm.train", _API)
