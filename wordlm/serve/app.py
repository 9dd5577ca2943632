"""`wordlm serve`: an HTTP server over one checkpoint and one engine.

- `POST /v1/completions` and `GET /v1/models` follow OpenAI's API, so OpenAI's client works unchanged
  (streaming included);
- `POST /v1/next-words` (the keyboard case) and `POST /v1/score` (loss, perplexity, per-word
  log-probabilities) are wordlm's;
- `GET /` is a small page that suggests next words while a person types.

Requests share nothing: each has its own recurrent state and its own random generator, and endpoints
are plain functions that FastAPI runs in its threadpool, so a slow generation never blocks the event
loop. At most `max_concurrent` requests to the model are in flight (past that: 503 and `Retry-After`),
and a completion whose client has gone stops at the next word, streamed or not. Every client mistake
is a 4xx in OpenAI's error shape; a 500 means a bug.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wordlm import __version__
from wordlm.checkpoint import Checkpoint, load_checkpoint
from wordlm.data import EOS, Vocab
from wordlm.engines import default_engine, load_engine
from wordlm.errors import WordLMError
from wordlm.runtime import Engine, Sampling, new_rng
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
from wordlm.tasks.generate import context_ids, detokenize, encode_prompt, generate_ids

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
WORK = frozenset({"/v1/completions", "/v1/next-words", "/v1/score"})  # the requests that run the model
# anyio's threadpool (FastAPI's, for plain endpoints and the steps of a stream) has 40 threads: past
# that a request only waits. Twice that lets one request wait for each one that runs, and refuses the
# rest at once (503) rather than letting everyone's latency grow without bound; each request's work is
# bounded already (n * max_tokens <= 4,096 words).
THREADPOOL = 40
DEFAULT_MAX_CONCURRENT = 2 * THREADPOOL
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
      (the generation loops check it between words, in their threads) and the app's `receive` says
      `http.disconnect` (which ends a stream in Starlette).
    """

    def __init__(self, app: ASGIApp, limit: int, max_concurrent: int) -> None:
        self.app, self.limit, self.max_concurrent = app, limit, max_concurrent
        self.in_flight = 0  # only the event loop's thread touches it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] not in WORK:
            await self._admitted(scope, receive, send)
            return
        if self.in_flight >= self.max_concurrent:
            message = f"server busy: {self.in_flight} requests in flight; retry after {RETRY_AFTER_S} s"
            await error_response(503, message, headers={"Retry-After": str(RETRY_AFTER_S)})(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._admitted(scope, receive, send)
        finally:
            self.in_flight -= 1

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


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of `text` that may be the start of a stop string, so not yet sendable."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class ChoiceRun:
    """One choice of a completion: `deltas()` yields its text as it becomes safe to send (never a
    part of a stop string), after which `finish_reason` and `tokens` are final.

    The words come from `generate_ids` and the text from `detokenize`, the CLI's own loop. A prompt
    that ends in whitespace gets no space before the first word (`wordlm generate` would add one):
    prompt + text reads as one text. Once `cancel` is set (the client has gone), no further word is
    computed.
    """

    def __init__(
        self, engine: Engine, vocab: Vocab, req: CompletionRequest, seed: int | None, cancel: threading.Event
    ) -> None:
        self.engine, self.vocab, self.req, self.seed, self.cancel = engine, vocab, req, seed, cancel
        self.finish_reason = "length"
        self.tokens = 0

    def deltas(self) -> Iterator[str]:
        req, stops = self.req, self.req.stop
        sampling = Sampling(temperature=req.temperature, top_p=req.top_p)
        ids = generate_ids(
            self.engine, self.vocab, req.max_tokens, prompt=req.prompt, sampling=sampling, seed=self.seed
        )
        mid_line = bool(req.prompt) and not req.prompt[-1].isspace()
        text, sent = "", 0
        for piece in detokenize((self.vocab.itos[i] for i in ids), at_line_start=not mid_line):
            if self.cancel.is_set():
                return
            text += piece
            self.tokens += 1
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                self.finish_reason = "stop"
                if cut > sent:
                    yield text[sent:cut]
                return
            safe = len(text) - _held_back(text, stops)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]


def create_app(ckpt: Checkpoint, engine: Engine, max_concurrent: int = DEFAULT_MAX_CONCURRENT) -> FastAPI:
    """The server's app for one loaded checkpoint and engine (it loads nothing: tests pass their own);
    at most `max_concurrent` requests to the model in flight (see `DEFAULT_MAX_CONCURRENT`)."""
    if max_concurrent < 1:
        raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}")
    vocab = ckpt.vocab
    model_id = ckpt.path.name if ckpt.path is not None else "wordlm"
    created = int(time.time())  # OpenAI's "created" of a model: here, when this server took it up
    app = FastAPI(
        title="wordlm",
        version=__version__,
        description="A word-level LSTM language model: OpenAI-compatible completions, next words, scores.",
    )
    app.add_middleware(Admission, limit=MAX_BODY_BYTES, max_concurrent=max_concurrent)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(WordLMError, _wordlm_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.openapi = _exact_openapi(app)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")  # not counted in max_concurrent: a busy server still says it is alive
    def health() -> Health:
        return Health(model=model_id, engine=engine.name)

    @app.get("/v1/models")
    def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.get("/v1/models/{model}", responses=ERRORS)
    def model(model: str) -> ModelCard:
        if model != model_id:
            raise HTTPException(404, f"model {model!r} not found; this server serves {model_id!r}")
        return ModelCard(id=model_id, created=created)

    @app.post("/v1/completions", responses={**WORK_ERRORS, 200: STREAM})
    def completions(req: CompletionRequest, request: Request) -> Completion:
        """Sampled continuations of the prompt (`stream`: server-sent events, then `data: [DONE]`)."""
        if req.model is not None and req.model != model_id:
            raise HTTPException(404, f"model {req.model!r} not found; this server serves {model_id!r}")
        prompt_tokens = len(encode_prompt(vocab, req.prompt))  # an unknown word fails here, before streaming
        cancel = request.scope.get(CANCEL) or threading.Event()
        seeds = [None if req.seed is None else req.seed + i for i in range(req.n)]
        runs = [ChoiceRun(engine, vocab, req, seed, cancel) for seed in seeds]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model_id}

        def usage() -> Usage:
            done = sum(r.tokens for r in runs)
            return Usage(prompt_tokens=prompt_tokens, completion_tokens=done, total_tokens=prompt_tokens + done)

        if not req.stream:
            texts = ["".join(r.deltas()) for r in runs]
            choices = [
                CompletionChoice(text=t, index=i, finish_reason=r.finish_reason)
                for i, (t, r) in enumerate(zip(texts, runs, strict=True))
            ]
            return Completion(**head, choices=choices, usage=usage())

        with_usage = req.stream_options is not None and req.stream_options.include_usage

        def event(choices: list[CompletionChoice], use: Usage | None = None) -> str:
            chunk = Completion(**head, choices=choices, usage=use)
            return f"data: {chunk.model_dump_json(exclude=None if with_usage else {'usage'})}\n\n"

        def events() -> Iterator[str]:
            for i, r in enumerate(runs):
                for delta in r.deltas():
                    yield event([CompletionChoice(text=delta, index=i, finish_reason=None)])
                if cancel.is_set():
                    return
                yield event([CompletionChoice(text="", index=i, finish_reason=r.finish_reason)])
            if with_usage:
                yield event([], usage())
            yield "data: [DONE]\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    @app.post("/v1/next-words", responses=WORK_ERRORS)
    def next_words(req: NextWordsRequest) -> NextWords:
        """The k most likely next words after the text, with their probabilities."""
        context = context_ids(vocab, req.text)
        if not context:
            raise WordLMError(f"text is empty and the vocabulary has no {EOS} to start from")
        ids = np.array(context, np.int64).reshape(-1, 1)
        logprobs, _ = engine.next_logprobs(ids, engine.init_state(1))
        lp = logprobs[0].astype(np.float64)
        k = min(req.k, len(vocab))
        top = np.argpartition(-lp, k - 1)[:k]
        top = top[np.argsort(-lp[top], kind="stable")]
        words = [WordProb(word=vocab.itos[i], prob=math.exp(lp[i]), logprob=lp[i]) for i in top.tolist()]
        return NextWords(model=model_id, words=words)

    @app.post("/v1/score", responses=WORK_ERRORS)
    def score(req: ScoreRequest) -> Score:
        """How likely the model finds the text: every word after the first, given those before it."""
        ids = encode_prompt(vocab, req.text)  # 2 words or more (ScoreRequest)
        seq = np.array(ids, np.int64).reshape(-1, 1)
        nll, _ = engine.token_nll(seq[:-1], seq[1:], engine.init_state(1))
        nll = nll.astype(np.float64).reshape(-1).tolist()
        loss = sum(nll) / len(nll)
        words = [WordLogprob(word=vocab.itos[i], logprob=-x) for i, x in zip(ids[1:], nll, strict=True)]
        return Score(model=model_id, loss=loss, perplexity=math.exp(loss), tokens=len(nll), words=words)

    return app


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
) -> None:
    """Load the checkpoint and engine (default: torch for float checkpoints, wordlm for quantized
    ones), warm the engine up, then serve until interrupted, with at most `max_concurrent` requests to
    the model in flight."""
    import uvicorn

    ckpt = load_checkpoint(path)
    engine = load_engine(engine_name or default_engine(ckpt), ckpt, threads=threads)
    warm_up(engine)
    log.info("serving %s with engine %s (%d thread(s)) on http://%s:%d/", ckpt.path, engine.name, threads, host, port)
    uvicorn.run(create_app(ckpt, engine, max_concurrent), host=host, port=port, log_level="info")
