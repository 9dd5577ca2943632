"""Progress bars, in one place: tqdm on a terminal, nothing when the output goes to a file or a pipe.

A bar that tqdm draws into a pipe is a run of carriage returns, and `leave=False` ends it with a line
of spaces: a log or a CI page shows those as blank lines around the output. So every bar of wordlm
(evaluation, training, calibration, the budget search, bench) is made here, and is drawn only where its
stream (stderr) is a terminal. Torch-free; imports only tqdm.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["progress", "on_terminal"]


def on_terminal(stream: Any = None) -> bool:
    """Whether `stream` (default: stderr, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress(iterable: Any = None, *, disable: bool = False, leave: bool = False, **kwargs: Any) -> tqdm:
    """tqdm(iterable, ...) that is disabled when `disable` is true or its stream is not a terminal, and
    (unless `leave`) erased when done."""
    off = disable or not on_terminal(kwargs.get("file"))
    return tqdm(iterable, disable=off, leave=leave, **kwargs)
