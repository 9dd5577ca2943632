"""`torch`: the fp32 reference, the tutorial's model run as it is."""

from __future__ import annotations

import io
from functools import cached_property

import torch

from wordlm.checkpoint import Checkpoint, build_model
from wordlm.engines import Engine, State


def state_dict_bytes(module: torch.nn.Module) -> int:
    """Size of `torch.save(module.state_dict())`: the tutorial's `print_size_of_model` measure."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


class TorchEngine(Engine):
    """Runs an `nn.Module` with the tutorial's forward signature; also used for validation in training."""

    def __init__(self, model: torch.nn.Module, *, name: str = "torch", device: str = "cpu", threads: int = 1):
        self.model = model.eval()
        self.name, self.device, self.threads = name, device, threads
        self.vocab_size = model.cfg.vocab_size

    @cached_property
    def size_bytes(self) -> int:
        return state_dict_bytes(self.model)

    def init_state(self, batch_size: int) -> State:
        return self.model.init_hidden(batch_size)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logits, state = self.model(ids.to(self.device), state)
        return logits.float(), state


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> TorchEngine:
    return TorchEngine(build_model(ckpt), threads=threads)
