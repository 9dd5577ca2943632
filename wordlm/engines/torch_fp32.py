"""`torch`: the fp32 reference, the tutorial's model run as it is."""

from __future__ import annotations

import io
from functools import cached_property

import numpy as np

from wordlm.checkpoint import Checkpoint
from wordlm.errors import require
from wordlm.runtime import Engine, State

torch = require("torch", "torch")


def state_dict_bytes(module: torch.nn.Module) -> int:
    """Size of `torch.save(module.state_dict())`: the tutorial's `print_size_of_model` measure."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


class TorchEngine(Engine):
    """Runs an `nn.Module` with the tutorial's forward signature; also used for validation in training.

    Its numpy inputs and state cross into torch without copies (torch.from_numpy) on the CPU.
    """

    def __init__(self, model: torch.nn.Module, *, name: str = "torch", device: str = "cpu", threads: int = 1):
        self.model = model.eval()
        self.name, self.device, self.threads = name, device, threads
        self.vocab_size = model.cfg.vocab_size

    @cached_property
    def size_bytes(self) -> int:
        return state_dict_bytes(self.model)

    def init_state(self, batch_size: int) -> State:
        return tuple(np.zeros(shape, np.float32) for shape in self.model.cfg.state_shapes(batch_size))

    @torch.no_grad()
    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, state = self.forward_torch(torch.as_tensor(ids), tuple(torch.as_tensor(s) for s in state))
        return logits.cpu().numpy(), tuple(s.float().cpu().numpy() for s in state)

    @torch.no_grad()
    def forward_torch(self, ids: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """The same in torch tensors on the model's device (training's validation stays on its GPU)."""
        state = tuple(s.to(self.device) for s in state)
        logits, state = self.model(ids.to(self.device), state)
        return logits.float(), state


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> TorchEngine:
    from wordlm.train.model import build_model

    torch.set_num_threads(threads)
    return TorchEngine(build_model(ckpt), threads=threads)
