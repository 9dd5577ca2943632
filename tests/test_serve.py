"""`wordlm serve`: OpenAI's own client against a live server, wordlm's endpoints against the engine
called directly, 4xx (never 500) for bad input, concurrent requests, the bound on requests in flight,
and work stopped when its client goes (random input: test_serve_fuzz.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
from conftest import make_corpus
from fastapi.testclient import TestClient
from serve_util import CountingEngine, free_port, live_server

from wordlm.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from wordlm.config import preset
from wordlm.data import load_corpus
from wordlm.engines import load_engine
from wordlm.runtime import Sampling
from wordlm.serve import create_app
from wordlm.serve.schema import MAX_BODY_BYTES, MAX_K, MAX_N, MAX_TOKENS, MAX_WORDS, SEED_MAX
from wordlm.tasks import evaluate
from wordlm.tasks.generate import context_ids, encode_prompt, generate_text
from wordlm.train.model import RecurrentLM, checkpoint_tensors

PROMPT = "the cat sat on"


@pytest.fixture(scope="module")
def ckpt(trained_ckpt):
    return load_checkpoint(trained_ckpt)


@pytest.fixture(scope="module")
def engine(ckpt):
    return load_engine("torch", ckpt, threads=1)


@pytest.fixture(scope="module")
def client(ckpt, engine):
    return TestClient(create_app(ckpt, engine))


@pytest.fixture(scope="module")
def base_url(ckpt, engine):
    with live_server(create_app(ckpt, engine)) as url:
        yield url


@pytest.fixture(scope="module")
def oai(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def no_unk_client(tmp_path_factory):
    """A server whose vocabulary has no <unk>: an unknown word cannot be mapped and must be a 422."""
    data = make_corpus(tmp_path_factory.mktemp("no_unk"))
    for split in ("train", "valid", "test"):
        p = data / f"{split}.txt"
        p.write_text(p.read_text().replace("<unk>", "someone"))
    vocab = load_corpus(data).vocab
    torch.manual_seed(0)
    model = RecurrentLM(preset("tiny", len(vocab)))
    ck = load_checkpoint(save_checkpoint(Checkpoint(model.cfg, vocab, checkpoint_tensors(model)), data / "ckpt"))
    return TestClient(create_app(ck, load_engine("torch", ck)))


def cli_text(engine, ckpt, words, seed, **sampling) -> str:
    """What `wordlm generate` prints after PROMPT."""
    return "".join(generate_text(engine, ckpt.vocab, words, prompt=PROMPT, sampling=Sampling(**sampling), seed=seed))


# ---- OpenAI's client, live server ----


def test_completion_is_the_cli_sample_and_reproducible(oai, engine, ckpt):
    model = oai.models.list().data[0].id
    a = oai.completions.create(model=model, prompt=PROMPT, max_tokens=12, seed=3, temperature=0.9, top_p=0.95)
    b = oai.completions.create(model=model, prompt=PROMPT, max_tokens=12, seed=3, temperature=0.9, top_p=0.95)
    assert a.object == "text_completion" and a.model == model and a.id.startswith("cmpl-")
    assert a.choices[0].text == b.choices[0].text == cli_text(engine, ckpt, 12, 3, temperature=0.9, top_p=0.95)
    assert a.choices[0].finish_reason == "length" and a.choices[0].index == 0 and a.choices[0].logprobs is None
    assert (a.usage.prompt_tokens, a.usage.completion_tokens, a.usage.total_tokens) == (4, 12, 16)


def test_temperature_zero_is_greedy_whatever_the_seed(client, engine, ckpt):
    bodies = [{"prompt": PROMPT, "max_tokens": 6, "seed": seed, "temperature": 0} for seed in range(3)]
    texts = {client.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies}
    assert texts == {cli_text(engine, ckpt, 6, 0, temperature=0)}


def test_one_space_between_prompt_and_completion(client):
    for prompt, lead in [("the cat", " "), ("the cat ", ""), ("the cat\n", ""), ("", "")]:
        for seed in range(3):
            body = {"prompt": prompt, "max_tokens": 1, "seed": seed}
            text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
            assert text == "\n" or (text.startswith(lead) and text[len(lead)] != " "), (prompt, text)


def test_streaming_concatenates_to_the_same_text(oai, base_url):
    kwargs = dict(model="best", prompt=PROMPT, max_tokens=10, seed=5)
    whole = oai.completions.create(**kwargs).choices[0].text
    chunks = list(oai.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)

    # the wire format: `data: {json}` events, then `data: [DONE]`
    r = httpx.post(f"{base_url}/v1/completions", json={**kwargs, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]) == whole


def test_stream_usage_option(oai):
    chunks = list(
        oai.completions.create(
            model="best", prompt=PROMPT, max_tokens=4, seed=1, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_n_choices_use_consecutive_seeds(oai):
    two = oai.completions.create(model="best", prompt=PROMPT, max_tokens=8, seed=10, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 16
    for i in range(2):
        one = oai.completions.create(model="best", prompt=PROMPT, max_tokens=8, seed=10 + i)
        assert two.choices[i].text == one.choices[0].text
    streamed = list(oai.completions.create(model="best", prompt=PROMPT, max_tokens=8, seed=10, n=2, stream=True))
    for i in range(2):
        assert "".join(c.choices[0].text for c in streamed if c.choices[0].index == i) == two.choices[i].text
    top = oai.completions.create(model="best", prompt=PROMPT, max_tokens=2, seed=SEED_MAX, n=2)  # seed + 1 > SEED_MAX
    assert len(top.choices) == 2 and top.usage.completion_tokens == 4


def test_stop_strings(oai):
    kwargs = dict(model="best", prompt=PROMPT, max_tokens=30, seed=2)
    full = oai.completions.create(**kwargs).choices[0].text
    stop = full.split()[3]  # the text stops before its first occurrence
    expected = full[: full.find(stop)]
    for s in (stop, [stop, "no such text"]):
        r = oai.completions.create(**kwargs, stop=s)
        assert r.choices[0].text == expected and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens < 30
        chunks = list(oai.completions.create(**kwargs, stop=s, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"
    # a stop string across words is never sent in part; the start of one that never comes is sent at the end
    for s, text, reason in [(full[5:12], full[: full.find(full[5:12])], "stop"), (full[-2:] + "~", full, "length")]:
        chunks = list(oai.completions.create(**kwargs, stop=s, stream=True))
        assert "".join(c.choices[0].text for c in chunks) == text
        assert chunks[-1].choices[0].finish_reason == reason


def test_models_and_errors_through_the_client(oai):
    models = oai.models.list().data
    assert [m.id for m in models] == ["best"] and models[0].object == "model"
    assert oai.models.retrieve("best").id == "best"
    with pytest.raises(openai.NotFoundError, match="not found"):
        oai.completions.create(model="gpt-4", prompt="the")
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens"):
        oai.completions.create(model="best", prompt="the", max_tokens=0)


# ---- next words and scores, against the engine called directly ----


def test_next_words_agree_with_the_engine(client, engine, ckpt):
    r = client.post("/v1/next-words", json={"text": PROMPT, "k": 5})
    assert r.status_code == 200
    words = r.json()["words"]
    ids = np.array(context_ids(ckpt.vocab, PROMPT), np.int64).reshape(-1, 1)  # <eos>, then the prompt
    logprobs, _ = engine.next_logprobs(ids, engine.init_state(1))
    assert logprobs.shape == (1, len(ckpt.vocab)) and logprobs.dtype == np.float32
    top = sorted(range(len(ckpt.vocab)), key=lambda i: -float(logprobs[0, i]))[:5]
    assert [w["word"] for w in words] == [ckpt.vocab.itos[i] for i in top]
    assert [w["logprob"] for w in words] == pytest.approx([float(logprobs[0, i]) for i in top], abs=1e-5)
    probs = [w["prob"] for w in words]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    assert all(w["prob"] == pytest.approx(math.exp(w["logprob"])) for w in words)
    # defaults: k = 10, and an empty text is the start of a line
    assert len(client.post("/v1/next-words", json={}).json()["words"]) == 10
    everything = client.post("/v1/next-words", json={"text": "the", "k": MAX_K}).json()["words"]
    assert len(everything) == len(ckpt.vocab) and sum(w["prob"] for w in everything) == pytest.approx(1, abs=1e-5)


def test_score_agrees_with_the_engine_and_evaluate(client, engine, ckpt):
    text = "the old man looked at the river .\nmy sister ran to zebra"  # zebra: <unk>
    r = client.post("/v1/score", json={"text": text})
    assert r.status_code == 200
    body = r.json()
    ids = encode_prompt(ckpt.vocab, text)
    assert [w["word"] for w in body["words"]] == ckpt.vocab.decode(ids[1:])
    assert body["words"][-1]["word"] == "<unk>" and body["tokens"] == len(ids) - 1
    logprobs = [w["logprob"] for w in body["words"]]
    assert body["loss"] == pytest.approx(-sum(logprobs) / len(logprobs))
    assert body["perplexity"] == pytest.approx(math.exp(body["loss"]))
    seq = np.array(ids, np.int64).reshape(-1, 1)
    nll, _ = engine.token_nll(seq[:-1], seq[1:], engine.init_state(1))
    assert nll.shape == (len(ids) - 1, 1)
    assert logprobs == pytest.approx((-nll.reshape(-1)).tolist(), abs=1e-5)
    assert body["loss"] == pytest.approx(evaluate(engine, np.array(ids, np.int64), bptt=100).loss, abs=1e-5)


# ---- bad input: a 4xx with a reason, never a 500 ----


@pytest.mark.parametrize(
    "path, body, status, reason",
    [
        ("/v1/completions", b"{bad json", 400, "not valid JSON"),
        ("/v1/completions", b"", 422, "body"),
        ("/v1/completions", b"[1, 2]", 422, "body"),
        ("/v1/completions", {"max_tokens": 0}, 422, "max_tokens"),
        ("/v1/completions", {"max_tokens": MAX_TOKENS + 1}, 422, f"less than or equal to {MAX_TOKENS}"),
        ("/v1/completions", {"temperature": -1}, 422, "temperature"),
        ("/v1/completions", b'{"temperature": NaN}', 422, "finite"),
        ("/v1/completions", {"top_p": 0}, 422, "top_p"),
        ("/v1/completions", {"n": MAX_N + 1}, 422, "n:"),
        ("/v1/completions", {"seed": 2**63}, 422, "seed"),
        ("/v1/completions", {"seed": -1}, 422, "seed"),
        ("/v1/completions", {"seed": 1.5}, 422, "seed"),
        ("/v1/completions", {"stop": ""}, 422, "stop"),
        ("/v1/completions", {"stop": ["the", ""]}, 422, "stop.1"),
        ("/v1/completions", {"max_tokens": "5"}, 422, "max_tokens: Input should be a valid integer"),
        ("/v1/completions", {"stream": 1}, 422, "stream"),
        ("/v1/completions", {"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ("/v1/completions", {"prompt": ["the", "cat"]}, 422, "prompt"),
        ("/v1/completions", {"echo": True}, 422, "echo: Extra inputs are not permitted"),
        ("/v1/completions", {"model": "other"}, 404, "not found"),
        ("/v1/completions", {"prompt": "a " * (MAX_WORDS + 1)}, 422, f"the limit is {MAX_WORDS}"),
        ("/v1/completions", b'{"prompt": "\\ud800 x", "\\ud800": 1}', 422, ""),
        ("/v1/next-words", {"k": 0}, 422, "k:"),
        ("/v1/next-words", {"k": MAX_K + 1}, 422, "k:"),
        ("/v1/next-words", {"text": 3}, 422, "text"),
        ("/v1/next-words", {"k": 2.5}, 422, "k: Input should be a valid integer"),
        ("/v1/score", {"text": "one"}, 422, "at least 2"),
        ("/v1/score", {"text": " \n "}, 422, "at least 2"),
        ("/v1/score", {}, 422, "text: Field required"),
        ("/v1/score", b"x" * (MAX_BODY_BYTES + 1), 413, "request body over"),
    ],
)
def test_bad_input_is_a_4xx_with_a_reason(client, path, body, status, reason):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]["message"]


def test_unknown_word_without_unk(no_unk_client):
    for path, body in [
        ("/v1/completions", {"prompt": "the zebra"}),
        ("/v1/next-words", {"text": "the zebra"}),
        ("/v1/score", {"text": "the zebra"}),
    ]:
        r = no_unk_client.post(path, json=body)
        assert r.status_code == 422 and "'zebra' is not in the vocabulary" in r.json()["error"]["message"]
    assert no_unk_client.post("/v1/score", json={"text": "the cat"}).status_code == 200


def test_oversize_body_on_a_live_server(base_url):
    r = httpx.post(f"{base_url}/v1/score", content=b"{" + b" " * MAX_BODY_BYTES + b"}")
    assert r.status_code == 413

    def chunked():  # no Content-Length: the limit holds while the body is read
        for _ in range(MAX_BODY_BYTES // 1000 + 2):
            yield b" " * 1000

    assert httpx.post(f"{base_url}/v1/score", content=chunked()).status_code == 413


def test_openapi_and_health(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/completions", "/v1/models", "/v1/next-words", "/v1/score", "/health"} <= set(spec["paths"])
    assert client.get("/health").json() == {"status": "ok", "model": "best", "engine": "torch"}
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/nope").status_code == 404 and client.get("/nope").json()["error"]["message"]


# ---- concurrency: requests share nothing ----


def test_concurrent_requests_equal_sequential_ones(base_url):
    requests = [
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 10, "seed": s, "temperature": 0.8}) for s in range(12)
    ] + [("/v1/next-words", {"text": t, "k": 3}) for t in ("the", "the cat", "a dog ran to", "my sister")]
    with httpx.Client(base_url=base_url, timeout=60) as http:

        def call(req):
            r = http.post(req[0], json=req[1])
            assert r.status_code == 200, r.text
            body = r.json()
            return [c["text"] for c in body["choices"]] if "choices" in body else body["words"]

        sequential = [call(r) for r in requests]
        with ThreadPoolExecutor(len(requests)) as pool:
            concurrent = list(pool.map(call, requests))
    assert concurrent == sequential
    assert len({tuple(t) for t in sequential[:12]}) > 1  # the seeds were used


# ---- overload, and clients that go ----

LONG = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "n": MAX_N}  # 4,096 words: 20 s at 5 ms a word


@pytest.fixture
def slow(ckpt, engine):
    """A live server whose engine takes 5 ms a word (and counts them), with 2 requests in flight at most."""
    with live_server(create_app(ckpt, counting := CountingEngine(engine, delay=0.005), max_concurrent=2)) as url:
        yield url, counting


def test_past_max_concurrent_a_503_with_retry_after(slow):
    url, counting = slow
    with httpx.Client(base_url=url, timeout=30) as a, httpx.Client(base_url=url, timeout=30) as b:
        with a.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as one:
            with b.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as two:
                lines = [one.iter_lines(), two.iter_lines()]  # kept: a dropped iterator closes its connection
                [next(i) for i in lines]  # both are in flight
                r = httpx.post(f"{url}/v1/score", json={"text": PROMPT})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert "busy: 2 requests in flight" in r.json()["error"]["message"]
                assert r.json()["error"]["type"] == "server_error"
                assert httpx.get(f"{url}/health").status_code == 200  # not counted
    assert counting.settled() < 2 * MAX_TOKENS * MAX_N // 4  # both clients went: their work stopped
    assert httpx.post(f"{url}/v1/score", json={"text": PROMPT}).status_code == 200  # and their places are free


@pytest.mark.parametrize("stream", [False, True])
def test_work_stops_when_its_client_goes(slow, stream):
    """A completion of 4,096 words whose client gives up after 0.5 s (a timeout; for a stream, closing
    it after the first event): the server samples a few more words at most, not the rest."""
    url, counting = slow
    if stream:
        with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}, timeout=30) as r:
            lines = r.iter_lines()
            next(lines)
            time.sleep(0.5)
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=LONG, timeout=0.5)
    gave_up = counting.words
    assert 0 < gave_up < 1000
    assert counting.settled() - gave_up < 200  # 1 s of words: generous on a noisy machine


# ---- the command ----


def test_wordlm_serve_command(trained_ckpt, tmp_path):
    """`wordlm serve` on a quantized checkpoint: the default engine is wordlm's, warmed up before it
    listens; the process answers and stops on SIGTERM."""
    from wordlm.quant import get_scheme
    from wordlm.quantize import quantize_checkpoint

    qckpt = save_checkpoint(quantize_checkpoint(load_checkpoint(trained_ckpt), get_scheme("int8")), tmp_path / "q")
    with httpx.Client() as http:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "wordlm.cli", "serve", str(qckpt), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    health = http.get(f"http://127.0.0.1:{port}/health").json()
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                    time.sleep(0.1)
            assert health == {"status": "ok", "model": "q", "engine": "wordlm-int8"}
            r = http.post(f"http://127.0.0.1:{port}/v1/score", json={"text": PROMPT})
            assert r.status_code == 200 and r.json()["tokens"] == 3
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "wordlm.cli", "serve", str(tmp_path / "missing")], capture_output=True, text=True
    )
    assert r.returncode == 2 and "no such checkpoint directory" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "extreme",
    [dict(top_p=1e-46), dict(temperature=1e-38), dict(temperature=1e-40, top_p=0.5), dict(temperature=1e-30)],
)
def test_extreme_sampling_values_give_the_greedy_text(client, extreme):
    """Once 500s (top_p rounding to 0 in float32) or the vocabulary's last word repeated (T ~ 1e-38)."""
    body = {"prompt": "the cat", "max_tokens": 8, "seed": 3}
    greedy = client.post("/v1/completions", json={**body, "temperature": 0})
    got = client.post("/v1/completions", json={**body, **extreme})
    assert got.status_code == greedy.status_code == 200
    assert got.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
