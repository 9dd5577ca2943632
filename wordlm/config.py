"""The model's sizes (`ModelConfig`) and named presets: plain data, shared by training and inference.

Torch-free on purpose (DESIGN.md, the torch boundary): the runtime reads the same config as the
torch model without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from wordlm.errors import WordLMError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    emb_dim: int = 512
    hidden_dim: int = 256
    num_layers: int = 5
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WordLMError(f"model config: {name} must be a positive integer, got {value!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or not 0 <= d < 1:
            raise WordLMError(f"model config: dropout must be a number in [0, 1), got {d!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, dict):
            raise WordLMError(f"model config must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        missing = names - d.keys()
        unknown = d.keys() - names
        if missing or unknown:
            raise WordLMError(
                f"model config: missing {sorted(missing)}, unknown {sorted(unknown)}"
                if missing and unknown
                else f"model config: {'missing' if missing else 'unknown'} keys {sorted(missing or unknown)}"
            )
        return cls(**d)


# Sizes only; the vocabulary size always comes from the data.
PRESETS: dict[str, dict] = {
    # Embedding(V, 512) -> 5 x LSTM 256 -> Linear(256, V), dropout 0.5: the tutorial's model.
    "tutorial": dict(emb_dim=512, hidden_dim=256, num_layers=5, dropout=0.5),
    # For tests and quick experiments.
    "tiny": dict(emb_dim=16, hidden_dim=16, num_layers=2, dropout=0.1),
}


def preset(name: str, vocab_size: int, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise WordLMError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    sizes = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return ModelConfig(vocab_size=vocab_size, **sizes)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every fp32 parameter name and shape of the model: what a checkpoint must hold."""
    shapes = {"encoder.weight": (cfg.vocab_size, cfg.emb_dim)}
    for layer in range(cfg.num_layers):
        in_dim = cfg.emb_dim if layer == 0 else cfg.hidden_dim
        shapes[f"rnn.weight_ih_l{layer}"] = (4 * cfg.hidden_dim, in_dim)
        shapes[f"rnn.weight_hh_l{layer}"] = (4 * cfg.hidden_dim, cfg.hidden_dim)
        shapes[f"rnn.bias_ih_l{layer}"] = (4 * cfg.hidden_dim,)
        shapes[f"rnn.bias_hh_l{layer}"] = (4 * cfg.hidden_dim,)
    shapes["decoder.weight"] = (cfg.vocab_size, cfg.hidden_dim)
    shapes["decoder.bias"] = (cfg.vocab_size,)
    return shapes
