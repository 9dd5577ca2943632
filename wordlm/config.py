"""The model's shape (`ModelConfig`) and named presets: plain data, shared by training and inference.

Every recurrent LM of pytorch/examples' word_language_model: the cell (`lstm`, `gru`, `rnn_tanh`,
`rnn_relu`), optionally tied embedding and decoder (one matrix, Press & Wolf 2017,
https://arxiv.org/abs/1608.05859), and an LSTM projection (`proj_size`, torch's meaning: h is
W_hr (o * tanh(c)), Sak et al. 2014, https://arxiv.org/abs/1402.1128). Fields added after format 1
are optional in config.json, with today's meaning as default: old checkpoints load unchanged.

Torch-free on purpose (docs/design.md, "The torch boundary"): the runtime reads the same config as the
torch model without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from wordlm import cells
from wordlm.errors import WordLMError

OPTIONAL = {"cell": "lstm", "tied": False, "proj_size": 0}  # absent from older config.json files


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    emb_dim: int = 512
    hidden_dim: int = 256
    num_layers: int = 5
    dropout: float = 0.5
    cell: str = "lstm"
    tied: bool = False  # the decoder's weight is the embedding matrix (stored once)
    proj_size: int = 0  # LSTM only: > 0 projects h to this size (torch's nn.LSTM(proj_size=...))

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise WordLMError(f"model config: {name} must be a positive integer, got {value!r}")
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or not 0 <= d < 1:
            raise WordLMError(f"model config: dropout must be a number in [0, 1), got {d!r}")
        try:
            cell = cells.get(self.cell)
        except WordLMError as e:
            raise WordLMError(f"model config: {e}") from None
        if not isinstance(self.tied, bool):
            raise WordLMError(f"model config: tied must be true or false, got {self.tied!r}")
        p = self.proj_size
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise WordLMError(f"model config: proj_size must be an integer >= 0, got {p!r}")
        if p and not cell.projection:
            raise WordLMError(f"model config: proj_size applies to LSTM cells only, not {self.cell}")
        if p >= self.hidden_dim:
            raise WordLMError(f"model config: proj_size ({p}) must be smaller than hidden_dim ({self.hidden_dim})")
        if self.tied and self.out_dim != self.emb_dim:
            raise WordLMError(
                f"model config: tying the embedding and the decoder needs emb_dim ({self.emb_dim}) equal to the "
                f"{'proj_size' if p else 'hidden_dim'} ({self.out_dim})"
            )

    @property
    def cell_spec(self) -> cells.Cell:
        """The cell's registry entry (wordlm.cells)."""
        return cells.CELLS[self.cell]

    @property
    def gates(self) -> int:
        return self.cell_spec.gates

    @property
    def out_dim(self) -> int:
        """The size of h: what each layer passes on and what the decoder reads."""
        return self.proj_size or self.hidden_dim

    def state_shapes(self, batch: int) -> tuple[tuple[int, int, int], ...]:
        """The recurrent state: (h, c) for an LSTM (h of out_dim, c of hidden_dim), (h,) otherwise."""
        return self.cell_spec.state_shapes(self.num_layers, batch, self.hidden_dim, self.out_dim)

    def to_dict(self) -> dict:
        """The config.json form; optional fields at their default are left out, so that an untied,
        unprojected LSTM's config stays what every wordlm version reads."""
        return {k: v for k, v in asdict(self).items() if k not in OPTIONAL or v != OPTIONAL[k]}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        if not isinstance(d, dict):
            raise WordLMError(f"model config must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        missing = names - d.keys() - OPTIONAL.keys()
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
    """Every float parameter name and shape of the model (torch's names): what a checkpoint holds.

    A tied model has no `decoder.weight`: the decoder reads `encoder.weight`."""
    g, h = cfg.gates * cfg.hidden_dim, cfg.hidden_dim
    shapes = {"encoder.weight": (cfg.vocab_size, cfg.emb_dim)}
    for layer in range(cfg.num_layers):
        shapes[f"rnn.weight_ih_l{layer}"] = (g, cfg.emb_dim if layer == 0 else cfg.out_dim)
        shapes[f"rnn.weight_hh_l{layer}"] = (g, cfg.out_dim)
        shapes[f"rnn.bias_ih_l{layer}"] = (g,)
        shapes[f"rnn.bias_hh_l{layer}"] = (g,)
        if cfg.proj_size:
            shapes[f"rnn.weight_hr_l{layer}"] = (cfg.proj_size, h)
    if not cfg.tied:
        shapes["decoder.weight"] = (cfg.vocab_size, cfg.out_dim)
    shapes["decoder.bias"] = (cfg.vocab_size,)
    return shapes
