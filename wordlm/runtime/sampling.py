"""Choosing the next word: temperature, top-k and top-p (nucleus) sampling, in numpy.

Exact at the extremes, because users and fuzzers send them: a temperature of 0 or one below float32's
smallest normal number (where logits / T overflows) takes the most likely word; a top-p so small that
no word reaches it keeps the most likely word; the distribution is never NaN (the probabilities are
exp((z - max z) / T), whose largest term is exactly 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wordlm.errors import WordLMError
from wordlm.settings import integer, number, setting, validate

GREEDY_BELOW = float(np.finfo(np.float32).tiny)  # 1.2e-38


@dataclass(frozen=True)
class Sampling:
    temperature: float = setting(1.0, help="0: greedy (the most likely word), as in OpenAI's API", check=number(0))
    top_k: int | None = setting(None, help="keep the k most likely words (0: all)", check=integer(0))
    # keep the smallest set with probability >= p (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751)
    top_p: float | None = setting(None, help="nucleus sampling (1: all)", check=number(0, 1, lo_open=True))

    def check(self) -> None:
        validate(self)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW or self.top_k == 1

    @property
    def plain(self) -> bool:
        """A temperature and nothing else: what the native sampler draws from."""
        return not self.greedy and not self.top_k and (self.top_p is None or self.top_p >= 1)


def new_rng(seed: int | None = None) -> np.random.Generator:
    """The generator of one sampled text: PCG64 from `seed` (an integer >= 0, of any size), or from
    the OS's entropy when None."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise WordLMError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng(seed)


def per_row(
    sampling: Sampling | Sequence[Sampling], rng: np.random.Generator | Sequence[np.random.Generator], batch: int
) -> tuple[Sequence[Sampling], Sequence[np.random.Generator]]:
    """One setting and one generator per row of a batch of `batch` streams. A single setting or generator
    serves every row (one generator is then drawn from row after row, as a batch always drew); per-row
    ones let streams of different requests share one batched step, each drawing only from its own."""
    samplings = [sampling] * batch if isinstance(sampling, Sampling) else sampling
    # anything but a list or tuple is one generator (a numpy Generator, or any object with .random())
    rngs = rng if isinstance(rng, list | tuple) else [rng] * batch
    if len(samplings) != batch or len(rngs) != batch:
        raise WordLMError(f"{batch} rows need {batch} settings and generators, got {len(samplings)} and {len(rngs)}")
    return samplings, rngs


def sample(scores: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """Draw one word id from scores[vocab] (logits or log-probabilities: only differences matter),
    as the tutorial's `multinomial(exp(logits / T))`, with the filters of `s`."""
    if s.greedy:
        return int(np.argmax(scores))
    z = np.asarray(scores, np.float32)
    p = np.exp((z - z.max()) / np.float32(s.temperature))  # in [0, 1], the mode's exactly 1
    if s.top_k and s.top_k < p.size:
        kth = np.partition(p, p.size - s.top_k)[p.size - s.top_k]
        p = np.where(p >= kth, p, np.float32(0))
    if s.top_p is not None and s.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        sorted_p = p[order].astype(np.float64)
        before = np.cumsum(sorted_p) - sorted_p  # mass of the words strictly more likely
        drop = before >= s.top_p * sorted_p.sum()
        drop[0] = False  # the most likely word always stays
        p = p.copy()
        p[order[drop]] = 0
    return inverse_cdf(p, rng.random())


def inverse_cdf(p: np.ndarray, u: float, block: int = 256) -> int:
    """The index i with cdf[i-1] <= u * total < cdf[i], for weights p[V] >= 0 and u in [0, 1).

    Two levels (block sums, then one block) because np.cumsum over 33K words takes ~185 us, longer
    than the whole model step; this takes ~20 us.
    """
    full = p.size // block * block
    sums = np.append(p[:full].reshape(-1, block).sum(1, dtype=np.float64), p[full:].sum(dtype=np.float64))
    cum = np.cumsum(sums, dtype=np.float64)
    target = u * cum[-1]
    r = min(int(np.searchsorted(cum, target, side="right")), sums.size - 1)
    while sums[r] == 0 and r > 0:  # u * total landed on the edge of an empty tail
        r -= 1
    local = target - (cum[r - 1] if r else 0.0)
    j = int(np.searchsorted(np.cumsum(p[r * block : (r + 1) * block], dtype=np.float64), local, side="right"))
    i = min(r * block + j, p.size - 1)
    while p[i] == 0 and i > 0:  # never a word of probability 0 (rounding at a block's end)
        i -= 1
    return i
