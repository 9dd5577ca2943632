"""`wordlm serve`: an HTTP server over one checkpoint and one engine.

- `POST /v1/completions` and `GET /v1/models` follow OpenAI's API, so OpenAI's client works unchanged
  (streaming included);
- `POST /v1/next-words` (the keyboard case) and `POST /v1/score` (loss, perplexity, per-word
  log-probabilities) are wordlm's;
- `GET /` is a small page that suggests next words while a person types.

- `GET /metrics`: requests, words, batch sizes, queue depth, the prefix cache, latencies (Prometheus).

The model runs in one thread, the scheduler (scheduler.py), which serves every request at once in
batched steps; the async endpoints hand it their work and await its answers, so the event loop never
computes. Each request still has its own recurrent state and random generator: a seeded text is the
same whoever else is served. Prompts already read are kept in a prefix-state cache (cache.py). At
most `max_concurrent` requests to the model are in flight (past that: 503 and `Retry-After`), and a
request whose client has gone stops at the next step, streamed or not. Every client mistake is a 4xx
in OpenAI's error shape; a 500 means a bug.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wordlm import __version__
from wordlm.checkpoint import Checkpoint, load_checkpoint
from wordlm.data import EOS, Vocab
from wordlm.engines import default_engine, load_engine
from wordlm.errors import WordLMError
from wordlm.runtime import Engine, Sampling, new_rng
from wordlm.serve.cache import PrefixCache
from wordlm.serve.completions import ChoiceText, CompletionRun
from wordlm.serve.metrics import SECONDS, Metrics
from wordlm.serve.scheduler import MAX_BATCH, Job, Scheduler
from wordlm.serve.schema import (
    ERRORS,
    MAX_BODY_BYTES,
    STREAM,
    WORK_ERRORS,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorBody,
    ErrorDetail,
    Health,
    ModelCard,
    ModelList,
    NextWords,
    NextWordsRequest,
    Score,
    ScoreRequest,
    StreamOptions,
    Usage,
    WordLogprob,
    WordProb,
)
from wordlm.tasks.generate import context_ids, encode_prompt, start_ids

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
WORK = frozenset({"/v1/completions", "/v1/next-words", "/v1/score"})  # the requests that run the model
# Requests in flight past which a request is refused at once (503) rather than queued: the scheduler
# runs up to 256 streams at once (scheduler.MAX_ROWS) and queues the rest first come first served, so
# a bound keeps the wait bounded too.
DEFAULT_MAX_CONCURRENT = 80
DEFAULT_CACHE_BYTES = 64 * 2**20  # the prefix cache: ~6,000 prompts' states of the shipped model
RETRY_AFTER_S = 1
CANCEL = "wordlm.cancel"  # in a request's scope: a threading.Event, set when its client disconnects


def _printable(text: str) -> str:
    """A lone surrogate from the request (JSON allows "\\ud800") would make the response unencodable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    detail = ErrorDetail(message=_printable(message), type=kind, param=None if param is None else _printable(param))
    body = ErrorBody(error=detail)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class Admission:
    """What a request goes through before the app sees it:

    - past `max_concurrent` requests to the model (`WORK`) in flight, a 503 with `Retry-After`; a
      stream is in flight until its last event is sent or its client has gone;
    - a body over `limit` bytes is refused (413) before anything parses it: the JSON parser would
      otherwise hold a body of any size in memory. The body read here is replayed to the app;
    - then the connection is watched: when the client disconnects, the Event at `scope[CANCEL]` is set
      (the scheduler checks it at every step) and the app's `receive` says `http.disconnect` (which
      ends a stream in Starlette);
    - each request to the model is counted in `metrics`, by path and status, with its duration.
    """

    def __init__(self, app: ASGIApp, limit: int, max_concurrent: int, metrics: Metrics) -> None:
        self.app, self.limit, self.max_concurrent, self.metrics = app, limit, max_concurrent, metrics
        self.in_flight = 0  # only the event loop's thread touches it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in WORK:
            await self._admitted(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.in_flight >= self.max_concurrent:
                message = f"server busy: {self.in_flight} requests in flight; retry after {RETRY_AFTER_S} s"
                busy = error_response(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})
                await busy(scope, receive, counted)
                return
            self.in_flight += 1
            try:
                await self._admitted(scope, receive, counted)
            finally:
                self.in_flight -= 1
        finally:
            self.metrics.inc("wordlm_requests_total", path=scope["path"], code=str(status[0]))
            self.metrics.observe("wordlm_request_seconds", time.perf_counter() - start, path=scope["path"])

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._too_big(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._too_big(scope, receive, send)
                return
        first: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        cancel, gone = threading.Event(), anyio.Event()
        scope[CANCEL] = cancel

        async def watch() -> None:  # after the body, the server's receive() waits for the disconnect
            while (await receive())["type"] != "http.disconnect":
                pass
            cancel.set()
            gone.set()

        async def replay() -> Message:
            if first:
                return first.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        failure = None
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watch)
            try:
                await self.app(scope, replay, send)
            except Exception as e:  # raised as itself, not in the task group's ExceptionGroup
                failure = e
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _too_big(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, f"request body over {self.limit} bytes")(scope, receive, send)


def _exact_openapi(app: FastAPI) -> Callable[[], dict]:
    """`app.openapi`, with the request bodies' schemas as pydantic writes them: FastAPI's own OpenAPI
    models hold numeric bounds as floats, and would serve the seed's maximum, 2**63 - 1, as
    9.223372036854776e+18, another number (one that a schema-driven client takes for a valid seed)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = FastAPI.openapi(app)
            for model in (CompletionRequest, StreamOptions, NextWordsRequest, ScoreRequest):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schema.pop("$defs", None)  # each model is a component of its own
                spec["components"]["schemas"][model.__name__] = schema
        return app.openapi_schema

    return openapi


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    bad_json = [e for e in errors if e["type"] == "json_invalid"]
    if bad_json:
        reason = bad_json[0].get("ctx", {}).get("error")
        return error_response(400, "request body is not valid JSON" + (f" ({reason})" if reason else ""))
    parts, params = [], []
    for e in errors:
        where = ".".join(str(p) for p in e["loc"][1:]) or "body"  # loc[0] is "body"
        parts.append(f"{where}: {e['msg']}")
        params.append(where)
    return error_response(422, "; ".join(parts), params[0])


def _wordlm_error(_: Request, exc: WordLMError) -> JSONResponse:
    return error_response(422, str(exc))


def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)  # 405's Allow included


def _metrics(metrics: Metrics, cache: PrefixCache) -> Metrics:
    """The series of /metrics besides the scheduler's own: requests (Admission counts them) and the cache."""
    m = metrics
    m.counter("wordlm_requests_total", "requests to the model, by path and HTTP status (503: refused, busy)")
    m.histogram("wordlm_request_seconds", "time from a request's arrival to its last byte, by path", SECONDS)
    m.gauge("wordlm_cache_hits_total", "prompts that found a cached prefix", lambda: cache.hits, "counter")
    m.gauge("wordlm_cache_misses_total", "prompts that found none", lambda: cache.misses, "counter")
    m.gauge("wordlm_cache_tokens_saved_total", "prompt words not read again", lambda: cache.tokens_saved, "counter")
    m.gauge("wordlm_cache_bytes", "bytes the prefix cache holds", lambda: cache.bytes)
    m.gauge("wordlm_cache_max_bytes", "the prefix cache's bound", lambda: cache.max_bytes)
    m.gauge("wordlm_cache_entries", "prefixes the cache holds", lambda: len(cache.entries))
    return m


async def _answer(scheduler: Scheduler, cancel: threading.Event, **job: Any) -> Any:
    """Submit a job and await what its `done` gets (None: its client has gone), in the event loop."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def resolve(result: Any) -> None:
        if not future.done():
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    scheduler.submit(Job(cancel=cancel, done=lambda result: loop.call_soon_threadsafe(resolve, result), **job))
    return await future


def _cancel(request: Request) -> threading.Event:
    return request.scope.get(CANCEL) or threading.Event()


GONE = 499  # nginx's "client closed request": what a request whose client has gone gets (no one reads it)


def create_app(
    ckpt: Checkpoint,
    engine: Engine,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_batch: int = MAX_BATCH,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> FastAPI:
    """The server's app for one loaded checkpoint and engine (it loads nothing: tests pass their own);
    at most `max_concurrent` requests to the model in flight (see `DEFAULT_MAX_CONCURRENT`), at most
    `max_batch` streams per engine call, a prefix cache of `cache_bytes`. Its scheduler's thread runs
    from here on (`app.state.scheduler`; `close()` it to stop)."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    model_id = ckpt.path.name if ckpt.path is not None else "wordlm"
    created = int(time.time())  # OpenAI's "created" of a model: here, when this server took it up
    app = FastAPI(
        title="wordlm",
        version=__version__,
        description="A word-level LSTM language model: OpenAI-compatible completions, next words, scores.",
    )
    cache = PrefixCache(cache_bytes)
    metrics = _metrics(Metrics(), cache)
    scheduler = app.state.scheduler = Scheduler(engine, metrics, cache, max_batch=max_batch)
    app.add_middleware(Admission, limit=MAX_BODY_BYTES, max_concurrent=max_concurrent, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(WordLMError, _wordlm_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = _exact_openapi(app)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")  # not counted in max_concurrent: a busy server still says it is alive
    async def health() -> Health:
        return Health(model=model_id, engine=engine.name)

    @app.get("/metrics", include_in_schema=False, response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.get("/v1/models/{model}", responses=ERRORS)
    async def model(model: str) -> ModelCard:
        if model != model_id:
            raise HTTPException(404, f"model {model!r} not found; this server serves {model_id!r}")
        return ModelCard(id=model_id, created=created)

    _completions(app, scheduler, ckpt.vocab, model_id)
    _next_words_and_score(app, scheduler, ckpt.vocab, model_id)
    return app


def _completions(app: FastAPI, scheduler: Scheduler, vocab: Vocab, model_id: str) -> None:
    @app.post("/v1/completions", responses={**WORK_ERRORS, 200: STREAM})
    async def completions(req: CompletionRequest, request: Request) -> Completion:
        """Sampled continuations of the prompt (`stream`: server-sent events, then `data: [DONE]`)."""
        if req.model is not None and req.model != model_id:
            raise HTTPException(404, f"model {req.model!r} not found; this server serves {model_id!r}")
        prompt_tokens = len(encode_prompt(vocab, req.prompt))  # an unknown word fails here, before streaming
        rngs = [new_rng(None if req.seed is None else req.seed + i) for i in range(req.n)]
        starts = [start_ids(vocab, req.prompt, rng) for rng in rngs]  # a random word each only without <eos>
        mid_line = bool(req.prompt) and not req.prompt[-1].isspace()
        run = CompletionRun(
            asyncio.get_running_loop(), vocab, [ChoiceText(req.max_tokens, req.stop, mid_line) for _ in rngs]
        )
        cancel = _cancel(request)
        sampling = Sampling(temperature=req.temperature, top_p=req.top_p)
        scheduler.submit(
            Job(
                prefix=starts[0][:-1],  # the prompt is read once for every choice
                cancel=cancel,
                done=run.done,
                firsts=[s[-1] for s in starts],
                samplings=[sampling] * req.n,
                rngs=rngs,
                on_word=run.on_word,
                on_step=run.on_step,
            )
        )
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}

        def usage() -> Usage:
            done = run.tokens
            return Usage(prompt_tokens=prompt_tokens, completion_tokens=done, total_tokens=prompt_tokens + done)

        if not req.stream:
            async for _ in run.events():
                pass  # the text accumulates in run.choices
            if cancel.is_set():
                return error_response(GONE, "the client has gone")
            choices = [
                CompletionChoice(text=c.text[: c.sent], index=i, finish_reason=c.finish_reason)
                for i, c in enumerate(run.choices)
            ]
            return Completion(**head, choices=choices, usage=usage())

        with_usage = req.stream_options is not None and req.stream_options.include_usage

        def event(choices: list[CompletionChoice], use: Usage | None = None) -> str:
            chunk = Completion(**head, choices=choices, usage=use)
            return f"data: {chunk.model_dump_json(exclude=None if with_usage else {'usage'})}\n\n"

        async def events() -> AsyncIterator[str]:
            try:
                async for events in run.events():
                    yield "".join(event([CompletionChoice(text=t, index=i, finish_reason=f)]) for i, t, f in events)
                if cancel.is_set():
                    return
                if with_usage:
                    yield event([], usage())
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # a stream closed early (its client gone) stops its work; a finished one has none

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _next_words_and_score(app: FastAPI, scheduler: Scheduler, vocab: Vocab, model_id: str) -> None:
    @app.post("/v1/next-words", responses=WORK_ERRORS)
    async def next_words(req: NextWordsRequest, request: Request) -> NextWords:
        """The k most likely next words after the text, with their probabilities."""
        context = context_ids(vocab, req.text)
        if not context:
            raise WordLMError(f"text is empty and the vocabulary has no {EOS} to start from")
        logprobs = await _answer(scheduler, _cancel(request), prefix=context[:-1], firsts=context[-1:])
        if logprobs is None:
            return error_response(GONE, "the client has gone")
        lp = logprobs.astype(np.float64)
        k = min(req.k, len(vocab))
        top = np.argpartition(-lp, k - 1)[:k]
        top = top[np.argsort(-lp[top], kind="stable")]
        words = [WordProb(word=vocab.itos[i], prob=math.exp(lp[i]), logprob=lp[i]) for i in top.tolist()]
        return NextWords(model=model_id, words=words)

    @app.post("/v1/score", responses=WORK_ERRORS)
    async def score(req: ScoreRequest, request: Request) -> Score:
        """How likely the model finds the text: every word after the first, given those before it."""
        ids = encode_prompt(vocab, req.text)  # 2 words or more (ScoreRequest)
        nll = await _answer(scheduler, _cancel(request), prefix=ids[:-1], targets=ids[1:])
        if nll is None:
            return error_response(GONE, "the client has gone")
        nll = nll.astype(np.float64).tolist()
        loss = sum(nll) / len(nll)
        words = [WordLogprob(word=vocab.itos[i], logprob=-x) for i, x in zip(ids[1:], nll, strict=True)]
        return Score(model=model_id, loss=loss, perplexity=math.exp(loss), tokens=len(nll), words=words)


def warm_up(engine: Engine) -> None:
    """Run each kind of call once, so that what an engine builds on first use (ORT sessions, torch's
    kernels) is built before the first request rather than by several concurrent ones."""
    ids = np.zeros((2, 1), np.int64)
    engine.token_nll(ids[:1], ids[1:], engine.init_state(1))
    engine.next_logprobs(ids, engine.init_state(1))
    engine.sample_next(ids, engine.init_state(1), Sampling(), new_rng(0))


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine_name: str | None = None,
    threads: int = 1,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_batch: int = MAX_BATCH,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> None:
    """Load the checkpoint and engine (default: torch for float checkpoints, wordlm for quantized
    ones), warm the engine up, then serve until interrupted (`create_app` says what the limits do)."""
    import uvicorn

    ckpt = load_checkpoint(path)
    engine = load_engine(engine_name or default_engine(ckpt), ckpt, threads=threads)
    warm_up(engine)
    app = create_app(ckpt, engine, max_concurrent, max_batch, cache_bytes)
    batching = f"up to {max_batch} streams a step" if engine.row_exact else "one stream a call (its rows are not exact)"
    log.info("serving %s with engine %s (%d thread(s), %s) on http://%s:%d/", ckpt.path, engine.name, threads,
             batching, host, port)  # fmt: skip
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        app.state.scheduler.close()
