"""The prefix-state cache: recurrent states of prompts already read, so that a repeated prompt, or one
that extends a cached one (a chat's history, a keyboard's sentence so far), reads only what is new.

A recurrent model's whole memory of a prefix is its state (a few KB per stream, whatever the prefix's
length), so a cache entry is that state and the prefix's token ids. Entries live in an LRU bounded by
bytes (ids + state + a fixed overhead), not by count: a flood of distinct long prompts cannot grow it.
Lookup finds the longest cached prefix of a prompt in one pass: each prefix's key is a rolling hash
of its ids, and a hit is confirmed by comparing the ids themselves.

Only the scheduler's thread uses a cache; the counters are plain ints that /metrics reads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wordlm.runtime import State

ENTRY_OVERHEAD = 256  # bytes per entry besides its arrays: the dict slot, the entry, the tuple


@dataclass(frozen=True)
class Entry:
    ids: bytes  # the prefix, int32
    state: State  # after reading it, one stream: arrays [layers, 1, size]

    @property
    def nbytes(self) -> int:
        return len(self.ids) + sum(s.nbytes for s in self.state) + ENTRY_OVERHEAD


def prefix_keys(ids: Sequence[int]) -> list[int]:
    """keys[k] identifies ids[: k + 1]: a rolling hash, so all of a prompt's prefixes cost one pass."""
    keys, h = [], 0
    for t in ids:
        h = hash((h, int(t)))
        keys.append(h)
    return keys


class PrefixCache:
    """An LRU of states keyed by token prefixes, at most `max_bytes` (0: it keeps nothing)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"the cache's size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, Entry] = OrderedDict()
        self.bytes = self.hits = self.misses = self.tokens_saved = 0

    def longest(self, ids: Sequence[int]) -> tuple[int, State | None]:
        """(k, state after ids[:k]) for the longest cached prefix of `ids`, or (0, None)."""
        if ids and self.entries:
            packed = np.asarray(ids, np.int32)
            keys = prefix_keys(ids)
            for k in range(len(ids), 0, -1):
                entry = self.entries.get(keys[k - 1])
                if entry is not None and entry.ids == packed[:k].tobytes():
                    self.entries.move_to_end(keys[k - 1])
                    self.hits += 1
                    self.tokens_saved += k
                    return k, entry.state
        self.misses += 1
        return 0, None

    def put(self, ids: Sequence[int], state: State) -> None:
        """Keep the state after `ids` (copied: the caller's arrays may be views of a whole batch's)."""
        if not ids:
            return
        entry = Entry(np.asarray(ids, np.int32).tobytes(), tuple(np.array(s, copy=True) for s in state))
        if entry.nbytes > self.max_bytes:
            return
        key = prefix_keys(ids)[-1]
        old = self.entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self.entries[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            self.bytes -= self.entries.popitem(last=False)[1].nbytes
