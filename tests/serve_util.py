"""Helpers of the serve tests: a live server (uvicorn on a free loopback port, in a thread of the test
process), a free port, a slow engine that counts its words, and the request bodies the fuzz tests
draw (random ones, and valid ones)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from hypothesis import strategies as st

from wordlm.serve.schema import MAX_K, SEED_MAX, SEED_MIN


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (port chosen by the OS) until the block ends; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class CountingEngine:
    """An engine that takes `delay` seconds more for each word it samples, and counts them (`words`)."""

    def __init__(self, engine, delay: float) -> None:
        self.engine, self.delay, self.words = engine, delay, 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def sample_next(self, *args, **kwargs):
        with self._lock:
            self.words += 1
        time.sleep(self.delay)
        return self.engine.sample_next(*args, **kwargs)

    def settled(self, quiet: float = 0.5, limit: float = 20) -> int:
        """`words` once no word has been sampled for `quiet` seconds (fails after `limit` seconds)."""
        deadline, last = time.monotonic() + limit, -1
        while self.words != last:
            assert time.monotonic() < deadline, f"still sampling after {limit} s ({self.words} words)"
            last = self.words
            time.sleep(quiet)
        return last


def free_port() -> int:
    """A port that was free a moment ago (for a server in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- request bodies: (path, body) pairs ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = {
    "/v1/completions": {
        "model": st.sampled_from(["best", "other"]) | json_values,
        "prompt": st.text(max_size=40) | json_values,
        "max_tokens": st.integers(-2, 6) | json_values,
        "temperature": st.floats(-1, 3) | json_values,
        "top_p": st.floats(-0.5, 1.5) | json_values,
        "seed": st.integers() | json_values,
        "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=5) | json_values,
        "n": st.integers(-1, 3) | json_values,
        "stream": st.booleans() | json_values,
    },
    "/v1/next-words": {"text": st.text(max_size=40) | json_values, "k": st.integers(-2, 120) | json_values},
    "/v1/score": {"text": st.text(max_size=40) | json_values},
}
random_bodies = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda path: st.tuples(
        st.just(path),
        st.fixed_dictionaries({}, optional=FIELDS[path]) | json_values,
    )
)

_words = st.lists(st.sampled_from(["the", "cat", "a", "dog", "sat", "on", "zebra", "\n", "."]), max_size=12)
_valid = {
    "/v1/completions": st.fixed_dictionaries(
        {"prompt": _words.map(" ".join)},
        optional={
            "max_tokens": st.integers(1, 6),
            "temperature": st.floats(0.05, 3),
            "top_p": st.floats(0.01, 1),
            "seed": st.integers(SEED_MIN, SEED_MAX),  # seed + n - 1 may pass SEED_MAX: still a seed
            "stop": st.lists(st.sampled_from([" the", ".", "cat"]), max_size=2),
            "n": st.integers(1, 3),
        },
    ),
    "/v1/next-words": st.fixed_dictionaries({"text": _words.map(" ".join), "k": st.integers(1, MAX_K)}),
    "/v1/score": st.fixed_dictionaries({"text": _words.filter(lambda w: len(w) >= 2).map(" ".join)}),
}
valid_bodies = st.sampled_from(sorted(_valid)).flatmap(lambda p: st.tuples(st.just(p), _valid[p]))
