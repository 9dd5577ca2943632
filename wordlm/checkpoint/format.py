"""Checkpoint directories: config.json + model.safetensors + vocab.txt (docs/design.md, "The checkpoint format").

Nothing is inferred from file names and nothing is pickled. Loading validates the format version,
the config, every tensor's name, shape and dtype, and the vocabulary's size and hash, and says in one
line what is wrong when something is. Tensors are numpy arrays (memory-mapped on load) and the
quantization plan is parsed once, into `Checkpoint.scheme`: nothing here needs torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wordlm.checkpoint.fileio import atomic_write_dir, settle_dir
from wordlm.checkpoint.tensorfile import read_tensors, tensors_bytes
from wordlm.config import ModelConfig, expected_shapes
from wordlm.data import Vocab
from wordlm.errors import WordLMError
from wordlm.quant import Scheme, scheme_from_dict

FORMAT_VERSION = 1
CONFIG, WEIGHTS, VOCAB = "config.json", "model.safetensors", "vocab.txt"
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # bfloat16 files are read as float32

# name -> (shape, dtypes allowed)
TensorSpec = dict[str, tuple[tuple[int, ...], tuple[np.dtype, ...]]]


METADATA = {"format": "wordlm"}  # the safetensors header metadata of model.safetensors


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocab
    tensors: dict[str, np.ndarray]
    scheme: Scheme | None = None  # the quantization plan, or None for float weights
    meta: dict = field(default_factory=dict)  # training / provenance metadata
    path: Path | None = None

    @property
    def quant(self) -> dict | None:
        """The plan as config.json records it ({"scheme", "version", "params"}), or None."""
        return None if self.scheme is None else self.scheme.to_dict()

    @property
    def size_bytes(self) -> int:
        """Bytes of the weights file on disk (or as it would be written)."""
        if self.path is not None:
            return (self.path / WEIGHTS).stat().st_size
        return len(tensors_bytes(self.tensors, metadata=METADATA))


def tensor_spec(config: ModelConfig, scheme: Scheme | None) -> TensorSpec:
    """What model.safetensors must hold for this config and quantization."""
    if scheme is not None:
        return scheme.tensor_spec(config)
    return {name: (shape, FLOAT_DTYPES) for name, shape in expected_shapes(config).items()}


def validate_tensors(tensors: dict[str, np.ndarray], spec: TensorSpec, where: str) -> None:
    missing = sorted(spec.keys() - tensors.keys())
    unknown = sorted(tensors.keys() - spec.keys())
    if missing:
        raise WordLMError(f"{where}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if unknown:
        raise WordLMError(f"{where}: unexpected tensors {unknown[:4]}{' ...' if len(unknown) > 4 else ''}")
    for name, (shape, dtypes) in spec.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise WordLMError(f"{where}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if t.dtype not in dtypes:
            raise WordLMError(f"{where}: {name} has dtype {t.dtype}, expected one of {dtypes}")
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise WordLMError(f"{where}: {name} holds NaN or infinite values; the model cannot be run")


def save_checkpoint(ckpt: Checkpoint, out: str | Path) -> Path:
    """Validate, then write the checkpoint directory atomically (replacing an older checkpoint)."""
    validate_tensors(ckpt.tensors, tensor_spec(ckpt.config, ckpt.scheme), "checkpoint")
    if len(ckpt.vocab) != ckpt.config.vocab_size:
        raise WordLMError(f"vocab has {len(ckpt.vocab)} words but the model has {ckpt.config.vocab_size}")
    config = {
        "format_version": FORMAT_VERSION,
        "model": ckpt.config.to_dict(),
        "quantization": ckpt.quant,
        "vocab": {"size": len(ckpt.vocab), "sha256": ckpt.vocab.sha256},
        "meta": ckpt.meta,
    }

    def fill(tmp: Path) -> None:
        (tmp / WEIGHTS).write_bytes(tensors_bytes(ckpt.tensors, metadata=METADATA))
        (tmp / VOCAB).write_text(ckpt.vocab.to_text(), encoding="utf-8")
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    path = atomic_write_dir(out, fill, marker=CONFIG)
    ckpt.path = path
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = settle_dir(path)
    if not path.is_dir():
        raise WordLMError(f"{path}: no such checkpoint directory")
    for name in (CONFIG, WEIGHTS, VOCAB):
        if not (path / name).is_file():
            raise WordLMError(f"{path}: not a wordlm checkpoint (no {name})")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except RecursionError:
        raise WordLMError(f"{path / CONFIG}: nested too deeply to be a wordlm config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WordLMError(f"{path / CONFIG}: not valid JSON ({e})") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if isinstance(version, bool) or version != FORMAT_VERSION or type(version) is not int:
        raise WordLMError(f"{path / CONFIG}: format_version {version!r}, this wordlm reads {FORMAT_VERSION}")
    try:
        model_cfg = ModelConfig.from_dict(config["model"])
        vocab_info, quant, meta = config["vocab"], config["quantization"], config.get("meta", {})
        if not isinstance(vocab_info, dict) or not isinstance(quant, dict | None):
            raise TypeError("vocab must be an object, quantization an object or null")
    except (KeyError, TypeError, AttributeError) as e:
        raise WordLMError(f"{path / CONFIG}: malformed ({e})") from None
    vocab = read_vocab(path / VOCAB)
    if len(vocab) != vocab_info.get("size") or vocab.sha256 != vocab_info.get("sha256"):
        raise WordLMError(
            f"{path / VOCAB}: vocabulary mismatch ({len(vocab)} words, config says {vocab_info.get('size')};"
            " sha256 differs)"
            if len(vocab) != vocab_info.get("size")
            else f"{path / VOCAB}: vocabulary mismatch (sha256 differs from config.json)"
        )
    if len(vocab) != model_cfg.vocab_size:
        raise WordLMError(f"{path}: vocab has {len(vocab)} words, model expects {model_cfg.vocab_size}")
    scheme = None if quant is None else scheme_from_dict(quant)
    tensors = read_tensors(path / WEIGHTS)
    validate_tensors(tensors, tensor_spec(model_cfg, scheme), str(path / WEIGHTS))
    return Checkpoint(config=model_cfg, vocab=vocab, tensors=tensors, scheme=scheme, meta=meta, path=path)


def read_vocab(path: Path) -> Vocab:
    """A vocab.txt (one word per line, in id order)."""
    try:
        return Vocab.from_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WordLMError(f"{path}: not UTF-8 text") from None
