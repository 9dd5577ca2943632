"""The runtime: a checkpoint run on wordlm's native kernels with numpy around them, and no torch.

Every inference operation the CLI, the server and the Python API need, for a batch of B independent
streams, with the recurrent state as arrays (h, c: float32 [layers, B, size]) that go in and come
out, as rwkv.cpp's C API passes its state: the caller owns it, calls never modify it, and a state can
be kept, copied or dropped freely. ids and targets are int64 [seq, B]. A GRU or RNN has (h,) only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from wordlm import native
from wordlm.checkpoint import Checkpoint
from wordlm.errors import WordLMError
from wordlm.runtime.engine import Engine, State
from wordlm.runtime.sampling import Sampling, per_row, sample
from wordlm.runtime.weights import NativeRecurrent, Weights, pack
from wordlm.settings import check_threads


class _Step:
    """Generation's step at batch 1 for a model native in every part: feed one word, draw the next at a
    temperature, in five C calls on buffers of this thread (made once). The general path's numpy and
    wrappers between the kernels run with caches that the weights' stream has just evicted, and took
    ~20% of a word (benchmarks/generation.md). The same kernels on the same inputs: the same word and
    state, bit for bit."""

    def __init__(self, weights: Weights, threads: int) -> None:
        self.emb, self.rec, self.dec = weights.embedding.packed, weights.recurrent.packed, weights.decoder.packed
        self.threads, self.local = threads, threading.local()

    def buffers(self) -> threading.local:
        b = self.local
        if not hasattr(b, "ids"):  # this thread's first step
            n, f32 = self.dec.n, np.float32  # the word; x, y, the logits; the sampler's scratch
            sizes = ((1, np.int64), (self.emb.dim, f32), (self.rec.out_dim, f32), (n, f32), (n, f32))
            sizes += ((n // 256 + 1, np.float64),)
            b.arrays = tuple(np.zeros(size, dtype) for size, dtype in sizes)
            b.ids, b.x, b.y, b.z, b.w, b.sums = (a.ctypes.data for a in b.arrays)
        return b

    def __call__(self, word: int, state: State, temperature: float, u: float) -> tuple[int, State]:
        b, kernel = self.buffers(), native.kernel_index()
        new = tuple(np.array(s, np.float32, order="C") for s in state)  # the caller's is never modified
        b.arrays[0][0] = word
        native.embed_into(self.emb, b.ids, 1, b.x)
        c = new[1].ctypes.data if len(new) > 1 else None
        native.recurrent_into(b.x, 1, 1, self.rec, new[0].ctypes.data, c, b.y, kernel, self.threads)
        native.linear_into(b.y, 1, self.dec, b.z, kernel, self.threads)
        return native.sample_into(b.z, self.dec.n, temperature, u, b.w, b.sums, kernel), new


class Runtime(Engine):
    """A checkpoint on the native kernels: the `wordlm` engine itself (no adapter between them)."""

    def __init__(self, ckpt: Checkpoint, threads: int = 1) -> None:
        self.threads = check_threads(threads)
        self.config, self.vocab_size = ckpt.config, ckpt.config.vocab_size
        self.name = "wordlm" if ckpt.scheme is None else f"wordlm-{ckpt.scheme.name}"
        self._size_bytes = ckpt.size_bytes
        t = time.perf_counter()
        self.weights = pack(ckpt)
        self.pack_seconds = time.perf_counter() - t
        # the native kernels quantize each row's activations on their own and sum in integers: a row's
        # bits never depend on its batch or its chunks (tests/test_serve_batching.py holds them to it)
        self.row_exact = isinstance(self.weights.recurrent, NativeRecurrent) and self.weights.decoder.packed is not None
        native_all = self.row_exact and self.weights.embedding.packed is not None
        self._step = _Step(self.weights, self.threads) if native_all else None

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def kernels(self) -> str:
        return self.weights.kernels

    def init_state(self, batch_size: int = 1) -> State:
        return tuple(np.zeros(shape, np.float32) for shape in self.config.state_shapes(batch_size))

    def _check(self, ids: np.ndarray, state: State) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.dtype.kind not in "iu":
            raise WordLMError(f"ids must be integers [seq >= 1, batch], got {ids.dtype} {list(ids.shape)}")
        want = self.config.state_shapes(ids.shape[1])
        if len(state) != len(want) or any(np.shape(s) != w for s, w in zip(state, want, strict=False)):
            raise WordLMError(f"state must be arrays of shapes {[list(w) for w in want]} for a batch of {ids.shape[1]}")
        return ids.astype(np.int64, copy=False)

    def hidden(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """The top recurrent layer's output [seq, B, out_dim] and the new state."""
        ids = self._check(ids, state)
        w = self.weights
        y, *state = w.recurrent(w.embedding(ids), *state, threads=self.threads)
        return y, tuple(state)

    def advance(self, ids: np.ndarray, state: State) -> State:
        """The state after ids[seq, B]; the decoder does not run."""
        return self.hidden(ids, state)[1]

    def token_nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """NLL (nats, float32) of each of targets[seq, B] given ids[seq, B]; the logits never reach memory."""
        y, state = self.hidden(ids, state)
        targets = np.asarray(targets)
        if targets.shape != y.shape[:2]:
            raise WordLMError(f"targets {list(targets.shape)} must match ids {list(y.shape[:2])}")
        if targets.min() < 0 or targets.max() >= self.vocab_size:
            raise WordLMError(f"targets must lie in [0, {self.vocab_size})")
        nll = self.weights.decoder.nll(y.reshape(-1, y.shape[-1]), targets.reshape(-1).astype(np.int64), self.threads)
        return nll.reshape(targets.shape), state

    def nll(self, ids: np.ndarray, targets: np.ndarray, state: State) -> tuple[float, State]:
        """Summed NLL (nats) of targets[seq, B]; summed in float64 (float32 would round over a long text)."""
        nll, state = self.token_nll(ids, targets, state)
        return float(nll.sum(dtype=np.float64)), state

    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        return self.logits(ids, state)

    def logits(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Logits float32 [seq, B, vocab] of every position."""
        y, state = self.hidden(ids, state)
        z = self.weights.decoder.logits(y.reshape(-1, y.shape[-1]), self.threads)
        return z.reshape(*y.shape[:2], -1), state

    def next_logprobs(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Log-probabilities float32 [B, vocab] of the word after the last position of ids[seq, B]."""
        y, state = self.hidden(ids, state)
        return self.weights.decoder.logprobs(y[-1], self.threads), state

    def top_k(self, ids: np.ndarray, state: State, k: int) -> tuple[np.ndarray, np.ndarray, State]:
        """The k most likely next words per stream: (word ids int64 [B, k], log-probs [B, k]), best first."""
        lp, state = self.next_logprobs(ids, state)
        k = min(k, lp.shape[1])
        part = np.argpartition(-lp, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(-lp, part, 1).argsort(1, kind="stable")
        words = np.take_along_axis(part, order, 1)
        return words, np.take_along_axis(lp, words, 1), state

    def sample_next(
        self,
        ids: np.ndarray,
        state: State,
        sampling: Sampling | Sequence[Sampling],
        rng: np.random.Generator | Sequence[np.random.Generator],
    ) -> tuple[np.ndarray, State]:
        """Feed ids[seq, B] and draw each stream's next word (int64 [B]) from the logits, row i with
        sampling[i] from rng[i] (see Engine.sample_next).

        Plain temperature sampling draws natively (native.sample: the same inverse CDF at the same
        uniform number as wordlm.runtime.sample, ~5x faster than numpy's exp); filters run in numpy. One
        stream and one word of a model native in every part take _Step's lean path: the same numbers."""
        if self._step is not None and np.shape(ids) == (1, 1):
            (s,), (r,) = per_row(sampling, rng, 1)
            if s.plain:
                ids = self._check(ids, state)
                word, state = self._step(int(ids[0, 0]), state, s.temperature, r.random())
                return np.array([word], np.int64), state
        y, state = self.hidden(ids, state)
        z = self.weights.decoder.logits(y[-1], self.threads)  # [B, V]: sampling needs no normalisation
        samplings, rngs = per_row(sampling, rng, len(z))
        words = [
            native.sample(row, s.temperature, r.random()) if s.plain else sample(row, s, r)
            for row, s, r in zip(z, samplings, rngs, strict=True)
        ]
        return np.array(words, np.int64), state
