"""Loss and perplexity by the tutorial's protocol: bptt chunks, hidden state carried, no dropout."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from wordlm.data import batchify, bptt_batches
from wordlm.errors import WordLMError
from wordlm.progress import progress as progress_bar
from wordlm.runtime import Engine


@dataclass
class EvalResult:
    loss: float  # mean NLL per predicted token, nats
    ppl: float
    tokens: int  # predicted tokens
    seconds: float
    tokens_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    engine: Engine,
    ids: np.ndarray,
    bptt: int = 25,
    batch_size: int = 1,
    progress: bool = False,
    warmup: bool = False,
) -> EvalResult:
    """Mean NLL of every next token of `ids` (1-D), as the tutorial's `evaluate()` computes it.

    With batch_size 1 (the tutorial's), this is the sum of NLL over the len(ids) - 1 targets divided
    by their number; for larger batches the text is batchified first, as in training. `warmup` runs
    the first chunk once, untimed and from a fresh state, so that an engine's first-use setup (graph
    building, weight packing) is not charged to the timed pass.
    """
    if bptt < 1 or batch_size < 1:
        raise WordLMError("bptt and batch size must be at least 1")
    source = batchify(ids, batch_size)  # [n, batch]
    if len(source) < 2:
        raise WordLMError(f"{len(ids)} tokens are too few to evaluate at batch size {batch_size}")
    if warmup:
        engine.nll(*next(bptt_batches(source, bptt)), engine.init_state(batch_size))
    state = engine.init_state(batch_size)
    total, count = 0.0, 0
    n_chunks = math.ceil((len(source) - 1) / bptt)
    start = time.perf_counter()
    for chunk, targets in progress_bar(
        bptt_batches(source, bptt),
        total=n_chunks,
        disable=not progress,
        desc=f"eval {engine.name}",
        unit="chunk",
    ):
        nll, state = engine.nll(chunk, targets, state)
        total += nll
        count += targets.size
    seconds = time.perf_counter() - start
    loss = total / count
    if not math.isfinite(loss):
        raise WordLMError(f"engine {engine.name} computed a loss of {loss}: the model's outputs are not finite")
    return EvalResult(
        loss=loss,
        ppl=math.exp(loss),
        tokens=count,
        seconds=seconds,
        tokens_per_s=count / seconds if seconds > 0 else float("inf"),
    )
