"""The scheduler: one thread that owns the engine and serves every request in steps (continuous batching).

At each step every live request moves on: prompts are read (`Engine.advance`, or `token_nll` for a
score) a chunk of `chunk` words at a time, so that a long one cannot stall the others; then every
stream that predicts (each choice of each completion, and each next-words request once its text is
read) takes one word in one batched `sample_next` (or `next_logprobs`) call. Requests join at the
next step and leave when done or cancelled (their client has gone). Admission is FIFO and bounded by
`max_rows` live streams, so no request waits behind later ones, and the wait is what the ones ahead
of it have left to do.

An engine whose rows are not `row_exact` (float BLAS: torch, ONNX Runtime) keeps working, one stream per
call, each prompt read in one call and nothing cached: what it computes then is `wordlm generate`'s
own sequence of calls, so that its seeded texts stay the CLI's.

With a cache, the state after each prompt read (its last word aside) is kept, and so is the state at
the end of each completion's choice (prompt and text): a repeated prompt, or a chat's next turn, reads
only its new words.

Everything a request learns comes back through its callbacks, called in this thread; the server turns
them into asyncio futures and queues (`loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wordlm.runtime import Engine, Sampling, State
from wordlm.serve.cache import PrefixCache
from wordlm.serve.metrics import ROWS, SECONDS, Metrics

log = logging.getLogger(__name__)
CHUNK = 32  # prompt words read per step: ~5 ms of the shipped model's LSTM at batch 1
MAX_BATCH = 64  # streams per engine call
MAX_ROWS = 256  # live streams; the next request waits (FIFO) until its streams fit


@dataclass(eq=False)
class Row:
    """One stream that predicts: a completion's choice (`sampling`) or a next-words request (None)."""

    job: Job
    index: int
    state: State
    next_id: int
    sampling: Sampling | None = None
    rng: np.random.Generator | None = None
    live: bool = True
    fed: list[int] = field(default_factory=list)  # ids read after the job's prefix: `state` follows them


@dataclass(eq=False)
class Job:
    """One request: read `prefix` (with `targets`: score each), then run one row per `firsts` id.

    `done` gets, once: a score's NLLs float32 [len(prefix)], a next-words request's log-probabilities
    [vocab], None for a completion (its words went to `on_word`) or a cancelled request, or the
    exception that failed it. `on_word(choice, word)` says whether that choice goes on; `on_step` runs
    after each step that gave the job words (to send them in one hop)."""

    prefix: Sequence[int]
    cancel: threading.Event
    done: Callable[[Any], None]
    targets: Sequence[int] | None = None
    firsts: Sequence[int] = ()
    samplings: Sequence[Sampling] = ()
    rngs: Sequence[np.random.Generator] = ()
    on_word: Callable[[int, int], bool] | None = None
    on_step: Callable[[], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    pos: int = 0
    state: State = ()
    nll: list[np.ndarray] = field(default_factory=list)
    rows: list[Row] | None = None  # made once the prefix is read
    words: int = 0

    @property
    def width(self) -> int:
        """Live streams it takes while it runs."""
        return max(len(self.firsts), 1)

    def rows_from(self, state: State) -> list[Row]:
        if not self.samplings:
            return [Row(self, 0, state, self.firsts[0])]
        made = zip(self.firsts, self.samplings, self.rngs, strict=True)
        return [Row(self, i, state, first, s, r) for i, (first, s, r) in enumerate(made)]


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def join(states: Sequence[State]) -> State:
    """One-stream states -> one state of a batch (axis 1 is the batch's)."""
    return tuple(np.concatenate(parts, axis=1) for parts in zip(*states, strict=True))


def split(state: State, batch: int) -> list[State]:
    return [tuple(s[:, b : b + 1] for s in state) for b in range(batch)]


class Scheduler:
    """The thread that owns `engine`: `submit` jobs from any thread; `close` stops it."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        cache: PrefixCache | None = None,
        max_batch: int = MAX_BATCH,
        max_rows: int = MAX_ROWS,
        chunk: int = CHUNK,
    ) -> None:
        if min(max_batch, max_rows, chunk) < 1:
            raise ValueError(f"max_batch, max_rows and chunk must be >= 1, got {max_batch}, {max_rows}, {chunk}")
        exact = engine.row_exact
        self.engine, self.metrics = engine, metrics
        self.cache = cache if exact else None
        self.max_batch, self.max_rows = (max_batch if exact else 1), max_rows
        self.chunk = chunk if exact else None  # None: a prompt in one call
        self._cond = threading.Condition()
        self._incoming: deque[Job] = deque()
        self._waiting: deque[Job] = deque()
        self._live: list[Job] = []
        self._closed = False
        self._describe(metrics)
        self._thread = threading.Thread(target=self._run, name="wordlm-scheduler", daemon=True)
        self._thread.start()

    def _describe(self, m: Metrics) -> None:
        m.histogram("wordlm_first_word_seconds", "time from a completion's submission to its first word", SECONDS)
        m.counter("wordlm_tokens_total", "words read from prompts (prompt), scored (scored), generated (generated)")
        m.histogram("wordlm_batch_rows", "streams per engine call, by stage (prefill: prompts; decode: words)", ROWS)
        m.histogram("wordlm_step_seconds", "time of one scheduler step (every live request moves on)", SECONDS)
        m.gauge("wordlm_queue_depth", "requests waiting for the scheduler", lambda: self.queue_depth)
        m.gauge("wordlm_live_streams", "streams the scheduler is running", lambda: self.live_rows)

    @property
    def queue_depth(self) -> int:
        """Requests submitted and not yet running."""
        return len(self._incoming) + len(self._waiting)

    @property
    def live_rows(self) -> int:
        return sum(job.width for job in self._live)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._incoming.append(job)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._incoming or self._live or self._waiting):
                    self._cond.wait()
                if self._closed:
                    return
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                self._step()
            except Exception as e:  # a bug: fail what was running, keep serving
                log.exception("scheduler step failed")
                for job in self._live:
                    job.done(e)
                self._live.clear()

    def _step(self) -> None:
        start = time.perf_counter()
        self._admit()
        self._prefill([j for j in self._live if j.rows is None and j.pos < len(j.prefix)])
        for job in self._live:
            if job.rows is None and job.pos == len(job.prefix) and job.firsts:
                job.rows = job.rows_from(job.state)
        rows = [r for j in self._live if j.rows for r in j.rows]
        self._sample([r for r in rows if r.sampling is not None])
        self._logprobs([r for r in rows if r.sampling is None])
        self._settle()
        self.metrics.observe("wordlm_step_seconds", time.perf_counter() - start)

    def _admit(self) -> None:
        """Drop what was cancelled; start waiting jobs, first come first served, while their streams fit."""
        for job in [j for j in (*self._live, *self._waiting) if j.cancel.is_set()]:
            (self._live if job in self._live else self._waiting).remove(job)
            job.done(None)
        used = self.live_rows
        while self._waiting and (used + self._waiting[0].width <= self.max_rows or not self._live):
            job = self._waiting.popleft()
            job.state = self.engine.init_state(1)
            if self.cache is not None and job.targets is None:
                job.pos, state = self.cache.longest(job.prefix)
                job.state = state or job.state
            self._live.append(job)
            used += job.width

    def _prefill(self, jobs: list[Job]) -> None:
        """Read the next chunk of each job's prefix: one call per chunk length and kind (score or not)."""
        groups: dict[tuple[bool, int], list[Job]] = {}
        for job in jobs:
            n = len(job.prefix) - job.pos if self.chunk is None else min(self.chunk, len(job.prefix) - job.pos)
            groups.setdefault((job.targets is not None, n), []).append(job)
        for (scored, n), same in groups.items():
            for group in batches(same, self.max_batch):
                ids = np.array([j.prefix[j.pos : j.pos + n] for j in group], np.int64).T  # [n, B]
                state = join([j.state for j in group])
                if scored:
                    targets = np.array([j.targets[j.pos : j.pos + n] for j in group], np.int64).T
                    nll, state = self.engine.token_nll(ids, targets, state)
                    for b, job in enumerate(group):
                        job.nll.append(nll[:, b])
                else:
                    state = self.engine.advance(ids, state)
                for job, one in zip(group, split(state, len(group)), strict=True):
                    job.pos, job.state = job.pos + n, one
                    if self.cache is not None and not scored and job.pos == len(job.prefix):
                        self.cache.put(job.prefix, one)
                self.metrics.observe("wordlm_batch_rows", len(group), stage="prefill")
                self.metrics.inc("wordlm_tokens_total", n * len(group), kind="scored" if scored else "prompt")

    def _sample(self, rows: list[Row]) -> None:
        """One word for each completion's stream, `max_batch` streams a call."""
        for group in batches(rows, self.max_batch):
            ids = np.array([[r.next_id for r in group]], np.int64)
            samplings, rngs = [r.sampling for r in group], [r.rng for r in group]
            words, state = self.engine.sample_next(ids, join([r.state for r in group]), samplings, rngs)
            for row, word, one in zip(group, words.tolist(), split(state, len(group)), strict=True):
                job = row.job
                if job.words == 0:
                    self.metrics.observe("wordlm_first_word_seconds", time.perf_counter() - job.submitted)
                job.words += 1
                row.fed.append(row.next_id)
                row.state, row.next_id = one, word
                row.live = job.on_word(row.index, word)
                if not row.live and self.cache is not None:  # a chat's next turn reads prompt + this text
                    self.cache.put([*job.prefix, *row.fed], one)
            self.metrics.observe("wordlm_batch_rows", len(group), stage="decode")
            self.metrics.inc("wordlm_tokens_total", len(group), kind="generated")

    def _logprobs(self, rows: list[Row]) -> None:
        """The next-words requests whose text is read: their log-probabilities, and they are done."""
        for group in batches(rows, self.max_batch):
            ids = np.array([[r.next_id for r in group]], np.int64)
            logprobs, _ = self.engine.next_logprobs(ids, join([r.state for r in group]))
            for row, lp in zip(group, logprobs, strict=True):
                row.live = False
                row.job.done(lp)
            self.metrics.observe("wordlm_batch_rows", len(group), stage="decode")

    def _settle(self) -> None:
        """Send what each job got this step; finish the jobs that are done."""
        still = []
        for job in self._live:
            if job.rows:
                if job.on_step is not None:
                    job.on_step()
                job.rows = [r for r in job.rows if r.live]
            if job.rows == [] or (job.targets is not None and job.pos == len(job.prefix)):
                if job.targets is not None:
                    job.done(np.concatenate(job.nll))
                elif job.samplings:
                    job.done(None)  # a next-words request had its answer in _logprobs
                continue
            still.append(job)
        self._live = still
