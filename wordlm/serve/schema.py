"""Request and response bodies of `wordlm serve`, and the limits on what a request may ask for.

The completion and model bodies follow OpenAI's schema field for field, so that OpenAI's own client
works unchanged; the other bodies are wordlm's. Every bound lives here, as a constant, so that the
OpenAPI schema, the validation and the tests agree on it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from wordlm.settings import SEED_MAX

MAX_BODY_BYTES = 64 * 1024  # a request body larger than this is refused (413) before it is parsed
MAX_WORDS = 2000  # words (line breaks count as one) in a prompt or a text
MAX_TOKENS = 512  # words generated per choice
MAX_N = 8  # choices per completion
MAX_K = 100  # next-word suggestions per request
MAX_STOPS, MAX_STOP_CHARS = 4, 100  # OpenAI allows up to 4 stop sequences
SEED_MIN = 0  # to SEED_MAX: what every client can send; choice i uses seed + i


def word_count(text: str) -> int:
    """Words as the model sees them: whitespace-separated, plus one `<eos>` per line break."""
    return len(text.split()) + text.count("\n")


def _bounded(text: str) -> str:
    n = word_count(text)
    if n > MAX_WORDS:
        raise ValueError(f"text has {n} words; the limit is {MAX_WORDS}")
    return text


BoundedText = Annotated[str, AfterValidator(_bounded)]

# What str.split() and Python's `\s` take for whitespace, spelled out: JSON Schema's regexes are
# ECMAScript's, whose `\s` differs (it lacks \x1c-\x1f). A word is a run of anything else, or a line break.
SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Two words or more: two runs apart, or a line break and any other word before or after it.
TWO_WORDS = rf"[^{SPACE}][{SPACE}]+[^{SPACE}]|[^{SPACE}][\s\S]*\n|\n[\s\S]*[^{SPACE}]|\n[\s\S]*\n"


def _two_words(text: str) -> str:
    n = word_count(text)
    if n < 2:
        raise ValueError(f"text has {n} word(s); scoring needs at least 2")
    return text


# The schema says it with `pattern` (so that a schema-driven client can tell), the server with
# `_two_words` (so that the error says why); tests/test_serve_fuzz.py holds the two to each other.
ScoreText = Annotated[
    BoundedText,
    AfterValidator(_two_words),
    Field(min_length=2, json_schema_extra={"pattern": TWO_WORDS}),
]
Finite = Annotated[float, Field(allow_inf_nan=False)]


def _integral(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's integer: 82 and 82.0 (a number whose fraction is zero), never "82", true or 82.5
Integer = Annotated[int, BeforeValidator(_integral)]
Seed = Annotated[
    int, Field(ge=SEED_MIN, le=SEED_MAX), BeforeValidator(_integral)
]  # bounds first: the schema keeps them


def _as_list(stop: object) -> object:
    """OpenAI takes null, one stop string or a list: all become a list here, so that an error names
    the string at fault rather than each branch of a union."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else stop


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOPS)]
Stops = Annotated[StopList, BeforeValidator(_as_list, json_schema_input_type=StopString | StopList | None)]


class RequestBody(BaseModel):
    """Unknown fields are refused, as OpenAI does: a parameter that would be silently ignored (echo,
    logprobs, best_of, penalties...) would make a client believe it had an effect. Types are strict, as
    the schema says: `"max_tokens": "5"` or `"stream": 1` is a 422, not a guess."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(RequestBody):
    include_usage: bool = False


class CompletionRequest(RequestBody):
    model: str | None = Field(None, description="the id from /v1/models (optional: the server has one model)")
    prompt: BoundedText = Field("", description="text to continue; empty: start as after a line break")
    max_tokens: Integer = Field(16, ge=1, le=MAX_TOKENS, description="words to generate per choice")
    temperature: Finite = Field(1.0, ge=0, le=100)  # 0: greedy
    top_p: Finite = Field(1.0, gt=0, le=1)
    seed: Seed | None = Field(None, description="choice i is sampled with seed + i")
    stop: Stops = Field([], description="stop when the text contains one of these (which is cut off)")
    n: Integer = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="accepted and ignored (OpenAI's end-user id)")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["length", "stop"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A whole completion, or (with `stream`) one server-sent chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "wordlm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class NextWordsRequest(RequestBody):
    text: BoundedText = Field("", description="the text so far; empty: the first word of a line")
    k: Integer = Field(10, ge=1, le=MAX_K, description="how many words")


class WordProb(BaseModel):
    word: str
    prob: float
    logprob: float


class NextWords(BaseModel):
    model: str
    words: list[WordProb] = Field(description="most likely first")


class ScoreRequest(RequestBody):
    text: ScoreText = Field(description="at least 2 words (a line break is one); each after the first is scored")


class WordLogprob(BaseModel):
    word: str = Field(description="the vocabulary word scored (`<unk>` for an unknown word)")
    logprob: float


class Score(BaseModel):
    model: str
    loss: float = Field(description="mean negative log-likelihood per scored word, nats")
    perplexity: float
    tokens: int = Field(description="words scored")
    words: list[WordLogprob]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    engine: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, so that its client raises an error carrying the message."""

    error: ErrorDetail


# ---- what the endpoints document besides their 200 body ----

BUSY = {
    "model": ErrorBody,
    "description": "too many requests in flight; try again after `Retry-After` seconds",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}
ERRORS = {
    400: {"model": ErrorBody},
    404: {"model": ErrorBody},
    413: {"model": ErrorBody},
    422: {"model": ErrorBody},
}
WORK_ERRORS = {**ERRORS, 503: BUSY}  # the endpoints that run the model: their number in flight is bounded
# OpenAPI 3.2's way to describe a stream (`itemSchema`, one server-sent event), as FastAPI writes it for
# its own event streams: each event's data is a Completion chunk in JSON, the last one `[DONE]`.
CHUNK = {
    "type": "string",
    "contentMediaType": "application/json",
    "contentSchema": {"$ref": "#/components/schemas/Completion"},
}
STREAM = {
    "description": "the completion; with `stream`, server-sent events of Completion chunks, then `data: [DONE]`",
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"anyOf": [{"const": "[DONE]"}, CHUNK]}, "event": {"type": "string"}},
            }
        }
    },
}
