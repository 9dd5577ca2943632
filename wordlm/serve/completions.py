"""A completion's choices between the scheduler's thread, which makes their words, and the event loop,
which sends their text: one hop per step (`loop.call_soon_threadsafe`), however many words it made,
and one write for all that has come when the loop is behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from wordlm.data import EOS, Vocab
from wordlm.tasks.generate import detokenize

Event = tuple[int, str, str | None]  # (choice, text to send, finish reason once the choice is done)
_END = object()


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of `text` that may be the start of a stop string, so not yet sendable."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class ChoiceText:
    """One choice's text, word by word: `push` returns what became safe to send (never a part of a stop
    string); once `finish_reason` is set the choice is done. Words become text as `wordlm generate`
    writes them (`detokenize`), except that a prompt that ends in whitespace gets no space before the
    first word: prompt + text reads as one text."""

    def __init__(self, max_tokens: int, stops: list[str], mid_line: bool) -> None:
        self.max_tokens, self.stops, self.line_start = max_tokens, stops, not mid_line
        self.text, self.sent, self.tokens = "", 0, 0
        self.finish_reason: str | None = None

    def push(self, word: str) -> str:
        self.text += "".join(detokenize([word], self.line_start))
        self.line_start = word == EOS
        self.tokens += 1
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return self._send(cut)
        if self.tokens == self.max_tokens:
            self.finish_reason = "length"
            return self._send(len(self.text))
        return self._send(len(self.text) - _held_back(self.text, self.stops))

    def _send(self, upto: int) -> str:
        delta = self.text[self.sent : upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return delta


class CompletionRun:
    """The choices of one completion request. The scheduler calls `on_word`, `on_step` and `done` (its
    Job's callbacks) in its thread; the event loop reads `events()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, vocab: Vocab, choices: list[ChoiceText]) -> None:
        self.loop, self.vocab, self.choices = loop, vocab, choices
        self.queue: asyncio.Queue = asyncio.Queue()
        self._pending: list[Event] = []  # the scheduler's thread only

    @property
    def tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    def on_word(self, index: int, word: int) -> bool:
        choice = self.choices[index]
        delta = choice.push(self.vocab.itos[word])
        if delta:
            self._pending.append((index, delta, None))
        if choice.finish_reason is not None:
            self._pending.append((index, "", choice.finish_reason))
        return choice.finish_reason is None

    def on_step(self) -> None:
        if self._pending:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, self._pending)
            self._pending = []

    def done(self, result: object) -> None:
        """The last call: None (finished or cancelled), or the exception that failed the request."""
        self.on_step()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, result if isinstance(result, Exception) else _END)

    async def events(self) -> AsyncIterator[list[Event]]:
        """Lists of events: each step's, or all the steps' that came while the loop was busy elsewhere."""
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty() and items[-1] is not _END:
                items.append(self.queue.get_nowait())
            events = [event for item in items if isinstance(item, list) for event in item]
            if events:
                yield events
            if isinstance(items[-1], Exception):
                raise items[-1]
            if items[-1] is _END:
                return
