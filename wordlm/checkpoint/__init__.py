"""The on-disk formats: checkpoint directories, tensor files, atomic writes. Torch-free.

Owns: `format` (config.json + model.safetensors + vocab.txt, validated on load), `tensorfile`
(safetensors without torch), `fileio` (atomic files and directories: a killed write never leaves a
half-written checkpoint). May import: wordlm.errors, wordlm.config, wordlm.data, wordlm.quant (a
checkpoint's scheme is part of its format). Never torch.
"""

from wordlm.checkpoint.format import (
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    read_vocab,
    save_checkpoint,
    tensor_spec,
    validate_tensors,
)

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "load_checkpoint",
    "read_vocab",
    "save_checkpoint",
    "tensor_spec",
    "validate_tensors",
]
