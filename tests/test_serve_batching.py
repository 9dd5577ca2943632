"""Serving many users at once: per-row sampling in one batched step equals each stream alone, bit for
bit (mixed settings, seeds, prompt lengths, joins and leaves); the scheduler's fairness, admission and
cancellation on a live server; the prefix-state cache (same text on a hit, its byte bound under a
flood); /metrics; n up to 64. No timing assertions: every check is about what was computed."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import numpy as np
import pytest
from serve_util import CountingEngine, live_server

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.engines import load_engine
from wordlm.models import SHIPPED_MODEL
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.runtime import Sampling, new_rng
from wordlm.serve import create_app
from wordlm.serve.cache import ENTRY_OVERHEAD, PrefixCache
from wordlm.serve.metrics import Metrics
from wordlm.serve.scheduler import Job, Scheduler
from wordlm.tasks.generate import context_ids, generate_ids, generate_text

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
    firsts = context[-1:] * n
    scheduler.submit(
        Job(context[:-1], threading.Event(), done, firsts=firsts, samplings=samplings, rngs=rngs, on_word=on_word)
    )
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


# ---- the prefix-state cache ----


def test_the_cache_finds_the_longest_cached_prefix_and_forgets_the_oldest():
    state = (np.ones((2, 1, 4), np.float32),)
    entry_bytes = 3 * 4 + state[0].nbytes + ENTRY_OVERHEAD
    cache = PrefixCache(2 * entry_bytes)
    cache.put([1, 2, 3], state)
    assert cache.longest([1, 2, 3, 4, 5])[0] == 3 and cache.longest([1, 2, 3])[0] == 3
    assert cache.longest([1, 2])[0] == 0 and cache.longest([2, 1, 3, 4])[0] == 0
    assert (cache.hits, cache.misses, cache.tokens_saved) == (2, 2, 6)
    cache.put([4, 5, 6], state)
    cache.longest([1, 2, 3])  # now the most recently used
    cache.put([7, 8, 9], state)  # one over the bound: [4, 5, 6] goes
    assert cache.longest([4, 5, 6])[0] == 0 and cache.longest([1, 2, 3])[0] == 3
    assert cache.bytes == 2 * entry_bytes == sum(e.nbytes for e in cache.entries.values())


def test_the_cache_bound_holds_under_a_flood_of_distinct_prompts():
    rng = np.random.default_rng(0)
    cache = PrefixCache(200_000)
    for _ in range(2000):
        ids = rng.integers(0, 1000, rng.integers(1, 300)).tolist()
        cache.longest(ids)
        cache.put(ids, (np.zeros((5, 1, 256), np.float32), np.zeros((5, 1, 256), np.float32)))
        assert cache.bytes <= cache.max_bytes
    assert cache.bytes == sum(e.nbytes for e in cache.entries.values()) and len(cache.entries) > 1
    assert PrefixCache(0).put([1], (np.zeros(4, np.float32),)) is None


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)[1])


def test_cache_hits_give_the_texts_of_misses(quantized):
    """The same prompts on a server without a cache and on one with: a repeated prompt, and prompts
    that extend a cached one, get the very same seeded texts; /metrics counts the hits."""
    ckpt, engine = quantized
    base = "the cat sat on the mat . and then"
    bodies = [{"prompt": p, "max_tokens": 12, "seed": 7, "temperature": 0.9} for p in (base, base, base + " the cat")]
    bodies.append({"prompt": base + " the cat\n", "max_tokens": 5, "seed": 1, "n": 3})
    texts = {}
    for cache_bytes in (0, 1 << 20):
        with live_server(create_app(ckpt, engine, cache_bytes=cache_bytes)) as url, httpx.Client(base_url=url) as http:
            got = [http.post("/v1/completions", json=b).json()["choices"] for b in bodies]
            texts[cache_bytes] = [[c["text"] for c in choices] for choices in got]
            words = http.post("/v1/next-words", json={"text": base, "k": 3}).json()["words"]
            texts[cache_bytes].append([w["word"] for w in words])
            saved = metric(http.get("/metrics").text, "wordlm_cache_tokens_saved_total")
            turn = base + texts[cache_bytes][0][0] + "\nthe dog"  # a chat's next turn: prompt, answer, more
            answer = http.post("/v1/completions", json={"prompt": turn, "max_tokens": 6, "seed": 2})
            texts[cache_bytes].append([answer.json()["choices"][0]["text"]])
            metrics = http.get("/metrics").text
        if cache_bytes:
            assert metric(metrics, "wordlm_cache_hits_total") >= 5
            assert 0 < metric(metrics, "wordlm_cache_bytes") <= cache_bytes
            read_before = len(context_ids(ckpt.vocab, base + texts[cache_bytes][0][0])) - 1  # all but the last word
            assert metric(metrics, "wordlm_cache_tokens_saved_total") - saved >= read_before
    assert texts[0] == texts[1 << 20]


def test_the_cache_bound_holds_on_a_live_server(quantized):
    ckpt, engine = quantized
    words = ckpt.vocab.itos[4:40]
    limit = 60_000
    rng = np.random.default_rng(1)
    with live_server(create_app(ckpt, engine, cache_bytes=limit)) as url, httpx.Client(base_url=url) as http:
        for _ in range(60):
            text = " ".join(rng.choice(words, rng.integers(2, 60)))
            assert http.post("/v1/next-words", json={"text": text, "k": 1}).status_code == 200
        metrics = http.get("/metrics").text
    assert 0 < metric(metrics, "wordlm_cache_bytes") <= limit == metric(metrics, "wordlm_cache_max_bytes")
    assert metric(metrics, "wordlm_cache_misses_total") >= 55


# ---- a live server under load ----


@pytest.fixture
def slow_batching(quantized):
    """A live server on the batching engine slowed to 5 ms a step (steps counted), 16 requests in flight at most."""
    ckpt, engine = quantized
    with live_server(create_app(ckpt, counting := CountingEngine(engine, delay=0.005), max_concurrent=16)) as url:
        yield url, counting, ckpt, engine


def test_a_short_request_is_not_stuck_behind_a_long_one(slow_batching):
    url, counting, *_ = slow_batching
    long = {"prompt": "the cat", "max_tokens": 512, "n": 4, "stream": True}
    with httpx.Client(base_url=url, timeout=60) as http, http.stream("POST", "/v1/completions", json=long) as stream:
        lines = stream.iter_lines()
        next(lines)  # running
        short = http.post("/v1/completions", json={"prompt": "a dog", "max_tokens": 3, "seed": 1})
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 3
        assert counting.words < 400  # the long one was still running: they shared steps
        assert "[DONE]" not in next(lines)
    assert counting.settled() < 600  # its client went: its work stopped


def test_a_stream_of_batched_choices_stops_when_its_client_goes(slow_batching):
    url, counting, *_ = slow_batching
    body = {"prompt": "the cat", "max_tokens": 512, "n": 64, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())
        time.sleep(0.3)
    gone = counting.words
    assert 0 < gone < 500 and counting.settled() - gone < 100


async def _stream(http: httpx.AsyncClient, body: dict) -> tuple[int, str | None, str]:
    """(status, Retry-After, the streamed text) of one streaming completion."""
    async with http.stream("POST", "/v1/completions", json=body) as r:
        text = "".join([line async for line in r.aiter_lines()])
        return r.status_code, r.headers.get("retry-after"), text


def test_64_clients_get_200s_or_503s_with_retry_after_and_their_solo_texts(slow_batching):
    url, _, ckpt, engine = slow_batching
    bodies = [{"prompt": PROMPTS[i % 5], "max_tokens": 24, "seed": i, "stream": True} for i in range(64)]

    async def all_at_once():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(_stream(http, b) for b in bodies))

    results = asyncio.run(all_at_once())
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert all(retry == "1" for status, retry, _ in results if status == 503)
    for body, (status, _, streamed) in zip(bodies, results, strict=True):
        if status == 200:
            assert streamed.endswith("data: [DONE]")
            text = "".join(c["text"] for e in streamed.split("data: ")[1:-1] for c in json.loads(e)["choices"])
            assert text == "".join(generate_text(engine, ckpt.vocab, 24, prompt=body["prompt"], seed=body["seed"]))


def test_64_choices_in_one_batched_run_are_the_64_seeded_requests(quantized):
    ckpt, engine = quantized
    body = {"prompt": "the cat sat", "max_tokens": 6, "seed": 100, "n": 64}
    with live_server(create_app(ckpt, engine)) as url, httpx.Client(base_url=url, timeout=60) as http:
        many = http.post("/v1/completions", json=body).json()
        metrics = http.get("/metrics").text
        for i in (0, 17, 63):
            one = http.post("/v1/completions", json={**body, "n": 1, "seed": 100 + i}).json()
            assert many["choices"][i]["text"] == one["choices"][0]["text"]
    assert [c["index"] for c in many["choices"]] == list(range(64)) and many["usage"]["completion_tokens"] == 6 * 64
    assert metric(metrics, 'wordlm_batch_rows_bucket{stage="decode",le="32"}') == 0  # every step: 64 streams
    assert metric(metrics, 'wordlm_batch_rows_bucket{stage="decode",le="64"}') == 6
    assert metric(metrics, 'wordlm_requests_total{code="200",path="/v1/completions"}') == 1
    assert "# TYPE wordlm_request_seconds histogram" in metrics and "wordlm_queue_depth 0" in metrics
