"""Where the default model is: the one library-wide answer (the CLI, the benchmarks and the tests ask
here). Torch-free; imports only wordlm.errors.

In order: a path the caller names, $WORDLM_MODEL, the clone's models/wikitext2-lstm (the float
model: a source tree has it).
"""

from __future__ import annotations

import os
from pathlib import Path

from wordlm.errors import WordLMError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "wikitext2-lstm"


def default_checkpoint(path: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """The named checkpoint, else $WORDLM_MODEL, else the default; when none of these exists, an
    error (or None where the caller can do without one)."""
    if path:
        return Path(path)
    if os.environ.get("WORDLM_MODEL"):
        return Path(os.environ["WORDLM_MODEL"])
    if DEFAULT_MODEL.is_dir():
        return DEFAULT_MODEL
    if not required:
        return None
    raise WordLMError(
        f"no checkpoint given and the default {DEFAULT_MODEL} is missing; "
        "name one (e.g. runs/x/best) or set WORDLM_MODEL"
    )
