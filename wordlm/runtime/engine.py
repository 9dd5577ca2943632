"""The Engine base class: one small numpy interface over every way of running a model.

evaluate, generate, bench and serve talk only to `Engine`, so that the torch fp32 reference, the
tutorial's torch.ao int8 path, ONNX Runtime and wordlm's runtime run the very same loop. The interface
is numpy's (ids int64 [seq, batch]; state (h, c) float32 [layers, batch, hidden]; scores float32), so
that nothing but the torch engines needs torch.
"""

from __future__ import annotations

import numpy as np

from wordlm.runtime.sampling import Sampling, sample
from wordlm.runtime.weights import logsumexp

State = tuple[np.ndarray, ...]  # float32 (h, c) for an LSTM, (h,) otherwise: ModelConfig.state_shapes

__all__ = ["Engine", "State"]


class Engine:
    """Base class. Subclasses set `name` and implement `init_state`, `forward` and `size_bytes`.

    `token_nll`, `next_logprobs` and `sample_next` have plain defaults over `forward`; an engine
    overrides them where it can avoid materialising full logits (the wordlm runtime does).
    """

    name: str = "?"
    threads: int = 1
    vocab_size: int

    @property
    def size_bytes(self) -> int:
        """Bytes of what this engine loads (on disk, or the tutorial's serialized state_dict)."""
        raise NotImplementedError

    def init_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Logits float32 [seq, batch, vocab] of ids int64 [seq, batch]."""
        raise NotImplementedError

    def token_nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Negative log-likelihood (nats) of each of targets[seq, batch] given ids[seq, batch]."""
        logits, state = self.forward(ids, state)
        z = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
        nll = logsumexp(z) - z[np.arange(len(z)), np.asarray(targets).reshape(-1)]
        return nll.reshape(np.shape(targets)).astype(np.float32), state

    def nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[float, State]:
        """Summed negative log-likelihood (nats) of targets[seq, batch] given ids[seq, batch]."""
        nll, state = self.token_nll(ids, targets, state)
        return float(nll.sum(dtype=np.float64)), state  # an fp64 sum: fp32 would round over a long text

    def next_logprobs(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Log-probabilities float32 [batch, vocab] of the word after the last position of ids[seq, batch]."""
        logits, state = self.forward(ids, state)
        z = logits[-1].astype(np.float64)
        return (z - logsumexp(z)[:, None]).astype(np.float32), state

    def sample_next(
        self, ids: np.ndarray, state: State, sampling: Sampling, rng: np.random.Generator
    ) -> tuple[np.ndarray, State]:
        """Feed ids[seq, batch] and draw the next word of each stream (int64 [batch])."""
        logprobs, state = self.next_logprobs(ids, state)
        return np.array([sample(row, sampling, rng) for row in logprobs], np.int64), state
