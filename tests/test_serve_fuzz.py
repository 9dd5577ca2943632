"""`wordlm serve` under random input: hypothesis's bodies and bytes through the test client, and
schemathesis driven by the live server's own /openapi.json (every check, valid and invalid data):
never a 500, and every answer as the schema documents it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_util import FIELDS, live_server, random_bodies, valid_bodies

from wordlm.checkpoint import load_checkpoint
from wordlm.engines import load_engine
from wordlm.serve import create_app
from wordlm.serve.schema import TWO_WORDS, word_count

SEED = 12  # schemathesis's (its deterministic mode draws the same cases whatever the seed)
EXAMPLES = 15  # per operation in the fuzzing phase and per stateful scenario; the coverage phase adds its own
fuzz = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def app(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    return create_app(ckpt, load_engine("torch", ckpt, threads=1))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app)


# ---- hypothesis: random JSON, random bytes, valid bodies ----


@fuzz
@given(random_bodies)
def test_random_json_bodies_never_500(client, path_body):
    path, body = path_body
    r = client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 404, 413, 422), (body, r.text)
    if r.status_code != 200:
        assert r.json()["error"]["message"]


@fuzz
@given(st.binary(max_size=200), st.sampled_from(sorted(FIELDS)))
def test_random_bytes_never_500(client, raw, path):
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (200, 400, 422), r.text


@fuzz
@given(valid_bodies)
def test_valid_bodies_answer_with_the_documented_schema(client, path_body):
    path, body = path_body
    r = client.post(path, json=body)
    assert r.status_code == 200, (body, r.text)
    spec = client.app.openapi()
    ref = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.split("/")[-1]]
    assert set(schema["required"]) <= set(r.json()) <= set(schema["properties"])


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("ab\n \t\x1c\x85\u2003\u3000"), max_size=8) | st.text(max_size=8))
def test_the_score_pattern_is_the_two_word_check(text):
    """The schema's `pattern` for /v1/score's text says what the server checks: 2 words or more."""
    assert (re.search(TWO_WORDS, text) is not None) == (word_count(text) >= 2), repr(text)


# ---- what the schema implies, checked directly ----


def test_405_names_the_allowed_methods(client):
    for method, path, allowed in [
        ("GET", "/v1/completions", {"POST"}),
        ("DELETE", "/health", {"GET"}),
        ("PUT", "/static/app.js", {"GET", "HEAD"}),
    ]:
        r = client.request(method, path)
        assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == allowed
        assert r.json()["error"]["message"] == "Method Not Allowed"


def test_integral_numbers_are_integers(client):
    """JSON Schema's integer, as the OpenAPI schema says: 3.0 is 3 (but 2.5 and "3" are 422s)."""
    assert len(client.post("/v1/next-words", json={"text": "the", "k": 3.0}).json()["words"]) == 3
    body = {"prompt": "the cat", "max_tokens": 2.0, "n": 2.0, "seed": 7.0}
    assert client.post("/v1/completions", json=body).json()["usage"]["completion_tokens"] == 4


# ---- schemathesis against the live server ----


def test_schemathesis_finds_nothing(app, tmp_path):
    """Every operation of the served schema through all of schemathesis's phases (examples, coverage,
    fuzzing, stateful) and checks (no 500; status codes, content types, headers and bodies, streamed
    events included, as documented; valid data accepted, invalid data refused; 405 with Allow),
    derandomized: the same few hundred cases every run.

    schemathesis's own command, the interface it documents: its pytest plugin (4.x) fails on pytest 9
    (it reads `request.node._nodeid`, which pytest 9 no longer has)."""
    with live_server(app) as url:
        args = ["--checks", "all", "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--generation-deterministic"]
        args += ["--request-timeout", "30", "--no-color", "--output-sanitize", "false"]
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # nothing lands in the checkout
        )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases and cases[1] == cases[2] and 200 <= int(cases[1]) <= 1000, report
