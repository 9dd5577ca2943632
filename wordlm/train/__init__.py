"""The torch side: the model (`model`), the training loop (`loop`), training beyond one process
(`distributed`) and the import of pytorch/examples' and the tutorial's state_dicts (`importer`).

May import: torch, wordlm.checkpoint, wordlm.config, wordlm.data, wordlm.runtime (the Engine contract,
to validate through wordlm.evaluate), wordlm.evaluate. Nothing torch-free imports this package.
"""

from wordlm.train.loop import TrainConfig, cpu_bf16, reuse_freed_memory, train

__all__ = ["TrainConfig", "cpu_bf16", "reuse_freed_memory", "train"]
