"""Serving many users at once: per-row sampling in one batched step equals each stream alone, bit for
bit (mixed settings, seeds, prompt lengths, joins and leaves); the scheduler's fairness, admission and
cancellation on a live server; the prefix-state cache (same text on a hit, its byte bound under a
flood); /metrics; n up to 64. No timing assertions: every check is about what was computed."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.engines import load_engine
from wordlm.evaluate.generate import context_ids, generate_ids
from wordlm.models import SHIPPED_MODEL
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.runtime import Sampling, new_rng
from wordlm.serve.cache import PrefixCache
from wordlm.serve.metrics import Metrics
from wordlm.serve.scheduler import Job, Scheduler

PROMPTS = ["the cat sat on", "", "my sister ran to the river . and then", "a", "the old man looked at the house ."]
SETTINGS = [
    Sampling(),
    Sampling(temperature=0.7),
    Sampling(temperature=0),
    Sampling(temperature=1.3, top_k=5),
    Sampling(temperature=0.9, top_p=0.8),
]


@pytest.fixture(scope="module", params=["tiny-int8", "shipped"])
def quantized(request, trained_ckpt, tmp_path_factory):
    """(checkpoint, wordlm engine) of a quantized model: the trained tiny one, and the shipped one."""
    if request.param == "shipped":
        ckpt = load_checkpoint(SHIPPED_MODEL)
    else:
        out = tmp_path_factory.mktemp("q") / "tiny-int8"
        int8 = quantize_checkpoint(load_checkpoint(trained_ckpt), get_scheme("int8"))
        ckpt = load_checkpoint(save_checkpoint(int8, out))
    engine = load_engine("wordlm", ckpt)
    assert engine.row_exact
    return ckpt, engine


def test_only_native_kernels_promise_exact_rows(trained_ckpt):
    ckpt = load_checkpoint(trained_ckpt)
    assert not load_engine("torch", ckpt).row_exact
    assert not load_engine("wordlm", ckpt).row_exact  # float weights: numpy's BLAS


# ---- the engine: one batched call equals each row alone ----


def test_a_batched_step_equals_each_row_alone(quantized):
    ckpt, engine = quantized
    contexts = [context_ids(ckpt.vocab, p) or [0] for p in PROMPTS]
    states = [engine.advance(np.array(c, np.int64).reshape(-1, 1), engine.init_state(1)) for c in contexts]
    ids = np.array([[c[-1] for c in contexts]], np.int64)
    batch_state = tuple(np.concatenate(parts, axis=1) for parts in zip(*states, strict=True))
    rngs = [new_rng(s) for s in range(len(PROMPTS))]
    words, after = engine.sample_next(ids, batch_state, SETTINGS, rngs)
    for b, (state, sampling) in enumerate(zip(states, SETTINGS, strict=True)):
        word, alone = engine.sample_next(ids[:, b : b + 1], state, sampling, new_rng(b))
        assert word[0] == words[b]
        for s_batch, s_alone in zip(after, alone, strict=True):
            assert np.array_equal(s_batch[:, b : b + 1], s_alone)  # bit for bit


def test_a_prompt_read_in_chunks_gives_the_same_state(quantized):
    ckpt, engine = quantized
    ids = np.array(context_ids(ckpt.vocab, " ".join(PROMPTS * 3)), np.int64).reshape(-1, 1)
    whole = engine.advance(ids, engine.init_state(1))
    state = engine.init_state(1)
    for start in range(0, len(ids), 4):
        state = engine.advance(ids[start : start + 4], state)
    assert all(np.array_equal(a, b) for a, b in zip(whole, state, strict=True))


# ---- the scheduler, in process: joins and leaves change nothing ----


def solo(engine, ckpt, prompt: str, sampling: Sampling, seed: int, words: int) -> list[int]:
    return list(generate_ids(engine, ckpt.vocab, words, prompt=prompt, sampling=sampling, seed=seed))


def submit(scheduler: Scheduler, ckpt, prompt: str, samplings: list[Sampling], seed: int, words: int, then=None):
    """A completion-like job in process: returns (its words per choice, an Event set when it is done,
    after `then()`)."""
    got: list[list[int]] = [[] for _ in samplings]
    finished = threading.Event()

    def done(_) -> None:
        if then is not None:
            then()
        finished.set()

    def on_word(i: int, word: int) -> bool:
        got[i].append(word)
        return len(got[i]) < words

    context = context_ids(ckpt.vocab, prompt)
    n = len(samplings)
    rngs = [new_rng(seed + i) for i in range(n)]
    job = Job(context[:-1], threading.Event(), done, None, context[-1:] * n, samplings, rngs)
    job.on_word = on_word
    scheduler.submit(job)
    return got, finished


def test_scheduler_streams_equal_solo_runs_whoever_joins_or_leaves(quantized):
    """Requests of every setting and length, joining at different steps and leaving after different
    counts of words, prompts read 3 words a step and at most 3 streams a call: each text is its solo run."""
    ckpt, engine = quantized
    scheduler = Scheduler(engine, Metrics(), PrefixCache(1 << 20), max_batch=3, chunk=3)
    metrics = scheduler.metrics
    try:
        runs = []
        for k, (prompt, sampling) in enumerate(zip(PROMPTS * 2, SETTINGS * 2, strict=True)):
            words = 4 + 3 * k
            samplings = [sampling, SETTINGS[(k + 1) % len(SETTINGS)]]  # two choices, two settings
            runs.append((prompt, samplings, k, words, *submit(scheduler, ckpt, prompt, samplings, k, words)))
            if k % 3 == 0:
                runs[-1][-1].wait(timeout=60)  # some join while others run, some when all have left
        for prompt, samplings, seed, words, got, finished in runs:
            assert finished.wait(timeout=60)
            for i, sampling in enumerate(samplings):
                assert got[i] == solo(engine, ckpt, prompt, sampling, seed + i, words), (prompt, sampling)
        batches = re.search(r'wordlm_batch_rows_bucket\{stage="decode",le="2"\} (\d+)', metrics.render())
        calls = re.search(r'wordlm_batch_rows_count\{stage="decode"\} (\d+)', metrics.render())
        assert int(batches[1]) < int(calls[1])  # some calls had 3 streams
    finally:
        scheduler.close()


def test_admission_is_first_come_first_served(quantized):
    """With room for 2 streams, one taken by a long request: a 2-choice request waits for room, and a
    later 1-choice one, which would fit, does not overtake it (no request starves behind narrower ones)."""
    ckpt, engine = quantized
    scheduler = Scheduler(engine, Metrics(), None, max_rows=2)
    order: list[str] = []
    try:
        events = [
            submit(scheduler, ckpt, "the cat", [Sampling()] * n, 0, words, then=lambda name=name: order.append(name))[1]
            for name, n, words in [("long", 1, 40), ("wide", 2, 3), ("narrow", 1, 3)]
        ]
        assert all(e.wait(timeout=60) for e in events)
        assert order == ["long", "wide", "narrow"]
    finally:
        scheduler.close()
