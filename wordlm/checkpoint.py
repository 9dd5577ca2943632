"""Checkpoint directories: config.json + model.safetensors + vocab.txt (see DESIGN.md).

Nothing is inferred from file names and nothing is pickled. Loading validates the format version,
the config, every tensor's name, shape and dtype, and the vocabulary's size and hash, and says in one
line what is wrong when something is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from wordlm.data import Vocab, load_corpus
from wordlm.errors import WordLMError
from wordlm.fileio import atomic_write_dir, settle_dir
from wordlm.model import LSTMLM, ModelConfig, expected_shapes

FORMAT_VERSION = 1
CONFIG, WEIGHTS, VOCAB = "config.json", "model.safetensors", "vocab.txt"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# name -> (shape, dtypes allowed)
TensorSpec = dict[str, tuple[tuple[int, ...], tuple[torch.dtype, ...]]]


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocab
    tensors: dict[str, torch.Tensor]
    quant: dict | None = None  # {"scheme", "version", "params"} or None for float weights
    meta: dict = field(default_factory=dict)  # training / provenance metadata
    path: Path | None = None

    @property
    def size_bytes(self) -> int:
        """Bytes of the weights file on disk (or as it would be written)."""
        if self.path is not None:
            return (self.path / WEIGHTS).stat().st_size
        return len(save(self.tensors))


def tensor_spec(config: ModelConfig, quant: dict | None) -> TensorSpec:
    """What model.safetensors must hold for this config and quantization."""
    if quant is not None:
        from wordlm.quant import scheme_from_dict

        return scheme_from_dict(quant).tensor_spec(config)
    return {name: (shape, FLOAT_DTYPES) for name, shape in expected_shapes(config).items()}


def validate_tensors(tensors: dict[str, torch.Tensor], spec: TensorSpec, where: str) -> None:
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


def save_checkpoint(ckpt: Checkpoint, out: str | Path) -> Path:
    """Validate, then write the checkpoint directory atomically (replacing an older checkpoint)."""
    validate_tensors(ckpt.tensors, tensor_spec(ckpt.config, ckpt.quant), "checkpoint")
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
        tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.tensors.items()}
        (tmp / WEIGHTS).write_bytes(save(tensors, metadata={"format": "wordlm"}))
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WordLMError(f"{path / CONFIG}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        version = config.get("format_version") if isinstance(config, dict) else None
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
    try:
        tensors = load_file(path / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise WordLMError(f"{path / WEIGHTS}: corrupt or truncated safetensors file ({e})") from None
    validate_tensors(tensors, tensor_spec(model_cfg, quant), str(path / WEIGHTS))
    return Checkpoint(config=model_cfg, vocab=vocab, tensors=tensors, quant=quant, meta=meta, path=path)


def read_vocab(path: Path) -> Vocab:
    """A vocab.txt (one word per line, in id order)."""
    try:
        return Vocab.from_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WordLMError(f"{path}: not UTF-8 text") from None


def build_model(ckpt: Checkpoint) -> LSTMLM:
    """The fp32 torch model of a float checkpoint (fp16/bf16 weights are upcast), in eval mode."""
    if ckpt.quant is not None:
        raise WordLMError(f"checkpoint is quantized ({ckpt.quant.get('scheme')}); run it with --engine wordlm")
    model = LSTMLM(ckpt.config)
    model.load_state_dict({k: v.float() for k, v in ckpt.tensors.items()})
    return model.eval()


def import_tutorial(state_dict_path: str | Path, data_dir: str | Path | None = None) -> Checkpoint:
    """A state_dict saved from the tutorial's `LSTMModel`, plus the corpus vocabulary, as a Checkpoint.

    Sizes come from the tensors' shapes; dropout is the tutorial's 0.5 (it does not change inference).
    """
    state_dict_path = Path(state_dict_path)
    if not state_dict_path.is_file():
        raise WordLMError(f"{state_dict_path}: no such file")
    try:
        sd = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same to the user
        raise WordLMError(f"{state_dict_path}: not a loadable torch state_dict ({type(e).__name__})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WordLMError(f"{state_dict_path}: expected a dict of tensors (a model.state_dict())")
    for key in ("encoder.weight", "rnn.weight_hh_l0", "decoder.weight"):
        if key not in sd:
            raise WordLMError(f"{state_dict_path}: not a tutorial LSTMModel state_dict (no {key})")
    vocab_size, emb_dim = sd["encoder.weight"].shape
    num_layers = sum(1 for k in sd if k.startswith("rnn.weight_ih_l"))
    config = ModelConfig(
        vocab_size=vocab_size,
        emb_dim=emb_dim,
        hidden_dim=sd["rnn.weight_hh_l0"].shape[1],
        num_layers=num_layers,
        dropout=0.5,
    )
    validate_tensors(sd, tensor_spec(config, None), str(state_dict_path))
    vocab = load_corpus(data_dir).vocab
    if len(vocab) != vocab_size:
        raise WordLMError(f"vocab size mismatch: the state_dict has {vocab_size} words, the corpus {len(vocab)}")
    meta = {"imported_from": state_dict_path.name, "source": "tutorial LSTMModel state_dict"}
    return Checkpoint(config=config, vocab=vocab, tensors=dict(sd), meta=meta)
