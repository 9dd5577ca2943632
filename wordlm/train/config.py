"""A training run's settings (`TrainConfig`): torch-free, so that `wordlm train --help` and a
launcher can read and check them without importing torch; `wordlm train`'s flags are made from its
fields (wordlm.settings)."""

from __future__ import annotations

from dataclasses import dataclass

from wordlm import cells
from wordlm.config import PRESETS, ModelConfig, preset
from wordlm.errors import WordLMError
from wordlm.settings import SEED_MAX, integer, number, one_of, setting, validate


def _cell(value: object) -> None:  # the registry as it is now (tests add cells to it)
    if value not in cells.CELLS:
        raise ValueError(f"must be one of {', '.join(cells.CELLS)}")


@dataclass
class TrainConfig:
    """A run's settings; `wordlm train`'s flags are made from these fields (wordlm.settings)."""

    preset: str = setting("tutorial", help="the model's sizes", check=one_of(*PRESETS))
    emb_dim: int | None = setting(None, help="embedding size (default: the preset's)", check=integer(1))
    hidden_dim: int | None = setting(None, help="hidden units per layer (default: the preset's)", check=integer(1))
    num_layers: int | None = setting(None, help="recurrent layers (default: the preset's)", check=integer(1))
    dropout: float | None = setting(None, help="dropout (default: the preset's)", check=number(0, 0.99))
    cell: str | None = setting(None, help="recurrent cell, one of wordlm.cells (default: lstm)", check=_cell)
    tied: bool | None = setting(None, help="one matrix for the embedding and the decoder (Press & Wolf)")
    proj_size: int | None = setting(
        None, help="LSTM only: project h to this size (torch's proj_size)", check=integer(1)
    )
    init: str = setting("scaled", help="weight init (see RecurrentLM.init_weights)", check=one_of("scaled", "tutorial"))
    lr: float = setting(20.0, help="learning rate", check=number(0, lo_open=True))
    clip: float = setting(0.25, help="gradient norm clipping", check=number(0, lo_open=True))
    batch_size: int = setting(20, help="streams per batch (split among ranks)", check=integer(1))
    bptt: int = setting(35, help="steps of truncated backpropagation", check=integer(1))
    epochs: int = setting(6, help="epochs; may be raised on --resume", check=integer(1))
    lr_decay: float = setting(4.0, help="divide the learning rate by this on a plateau", check=number(1, lo_open=True))
    # nats; 0 is the reference recipe (decay only when validation gets worse). A positive value anneals
    # sooner, which pays off when the epochs are counted: lr 20 keeps improving, by ever less, for a
    # long time (cf. the `threshold` of torch's ReduceLROnPlateau)
    min_improvement: float = setting(
        0.0,
        help="a plateau: validation loss improved by less than this (nats) in an epoch; 0: did not improve "
        "(the reference recipe); may be changed on --resume",
        check=number(0),
    )
    seed: int = setting(1111, help="the run's random seed", check=integer(0, SEED_MAX))
    eval_batch_size: int = 10  # validation streams (not a flag)
    save_every: int = setting(200, help="batches between resumable saves", check=integer(1))
    # "bf16": forward and loss under bfloat16 autocast (weights, gradients and the optimizer stay fp32);
    # measured 1.4x faster per step on an AVX-512 BF16 CPU; a CPU without bf16 support trains in fp32
    # with a warning (see `cpu_bf16`); "fp32": the tutorial's arithmetic
    precision: str = setting(
        "fp32",
        help="bf16: bfloat16 autocast for forward and loss, weights and optimizer fp32 (faster where the CPU or "
        "GPU has bf16 units; may be switched on --resume)",
        check=one_of("fp32", "bf16"),
    )

    def model_config(self, vocab_size: int) -> ModelConfig:
        return preset(
            self.preset,
            vocab_size,
            emb_dim=self.emb_dim,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            dropout=self.dropout,
            cell=self.cell,
            tied=self.tied,
            proj_size=self.proj_size,
        )

    def check(self, world_size: int = 1) -> None:
        """One-line errors for impossible settings; `world_size`: the ranks that will share the batch."""
        validate(self)
        if not 0 < self.eval_batch_size:
            raise WordLMError(f"eval_batch_size must be positive, got {self.eval_batch_size}")
        self.model_config(vocab_size=1)  # the model's own checks (proj_size on a GRU, tying unequal sizes)
        if self.batch_size % world_size:
            raise WordLMError(
                f"--batch-size {self.batch_size} does not split into {world_size} ranks' streams; "
                f"use a multiple of {world_size}"
            )
