"""Where the default model is: the one library-wide answer (the CLI, the benchmarks and the tests ask
here). Torch-free; imports only wordlm.errors.

In order: a path the caller names, $WORDLM_MODEL, the clone's models/wikitext2-lstm (the float model:
a source tree has it, and the demo and the torch engines want float weights), then the quantized model
packaged inside wordlm (wordlm/shipped/, copied there from the repository's models/ when a wheel is built:
setup.py; a wheel has only this one, so that `pip install wordlm-*.whl` runs `generate`, `eval` and `serve`
at once, without the repo and without fetching anything).
"""

from __future__ import annotations

import os
from pathlib import Path

from wordlm.errors import WordLMError

_PACKAGE = Path(__file__).resolve().parent

# the float model of a source tree (not in the wheel: 57 MB)
DEFAULT_MODEL = _PACKAGE.parent / "models" / "wikitext2-lstm"
# the quantized default model (made from DEFAULT_MODEL by the command in its README.md): in an installed
# wheel, inside the package; in a source tree, beside the float one in models/
SHIPPED_NAME = "wikitext2-lstm-15mb"
_IN_PACKAGE = _PACKAGE / "shipped" / SHIPPED_NAME
SHIPPED_MODEL = _IN_PACKAGE if _IN_PACKAGE.is_dir() else _PACKAGE.parent / "models" / SHIPPED_NAME


def default_checkpoint(path: str | os.PathLike | None = None, required: bool = True) -> Path | None:
    """The named checkpoint, else $WORDLM_MODEL, else the clone's float model, else the packaged
    quantized one; when none of these exists, an error (or None where the caller can do without one)."""
    if path:
        return Path(path)
    if os.environ.get("WORDLM_MODEL"):
        return Path(os.environ["WORDLM_MODEL"])
    for candidate in (DEFAULT_MODEL, SHIPPED_MODEL):
        if candidate.is_dir():
            return candidate
    if not required:
        return None
    raise WordLMError(
        f"no checkpoint given and neither the default {DEFAULT_MODEL} nor the packaged {SHIPPED_MODEL} exists; "
        "name one (e.g. runs/x/best) or set WORDLM_MODEL"
    )
