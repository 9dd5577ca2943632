"""Names resolved on first use (PEP 562), for packages whose names pull in heavy modules: `import
wordlm` costs no torch and no numpy until a name that needs them is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_getattr(package: str, api: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `api[name]` (a module path) when `name` is first asked for."""

    def __getattr__(name: str) -> object:
        if name not in api:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(api[name]), name)

    return __getattr__
