"""`wordlm`: wordlm's own runtime (wordlm.runtime) behind the Engine interface, nothing more."""

from __future__ import annotations

import numpy as np

from wordlm.checkpoint import Checkpoint
from wordlm.engines.base import Engine
from wordlm.runtime import Runtime, Sampling, State


class WordLMEngine(Engine):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.name, self.threads, self.vocab_size = runtime.name, runtime.threads, runtime.vocab_size

    @property
    def size_bytes(self) -> int:
        return self.runtime.size_bytes

    @property
    def kernels(self) -> str:
        return self.runtime.kernels

    def init_state(self, batch_size: int) -> State:
        return self.runtime.init_state(batch_size)

    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        return self.runtime.logits(ids, state)

    def token_nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        return self.runtime.token_nll(ids, targets, state)

    def next_logprobs(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        return self.runtime.next_logprobs(ids, state)

    def sample_next(self, ids: np.ndarray, state: State, sampling: Sampling, rng: np.random.Generator):
        return self.runtime.sample_next(ids, state, sampling, rng)


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> WordLMEngine:
    return WordLMEngine(Runtime(ckpt, threads))
