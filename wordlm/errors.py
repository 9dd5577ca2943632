"""The one exception type that crosses the API boundary.

Every mistake a user can make (a bad path, a corrupt file, a word the vocabulary lacks, an option out
of range) is raised as a `WordLMError` whose message is one line saying what is wrong. The CLI prints
it and exits non-zero; the server turns it into a 4xx. Anything else is a bug and keeps its traceback.
"""

import importlib
from types import ModuleType


class WordLMError(Exception):
    """A user-facing error: the message is one line, meant to be read by a person."""


def require(module: str, extra: str = "onnx") -> ModuleType:
    """Import an optional runtime, or say in one line how to install it (instead of an ImportError)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise WordLMError(f"{module} is not installed; pip install 'wordlm[{extra}]'") from None
