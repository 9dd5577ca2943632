"""A second build of wordlm's native kernels whose AVX2 and AVX-512 VNNI tables are SIMDe's portable C
(wordlm/native/x86_simd.h), so that the tests hold every x86 table to the reference on any x86-64, with
or without those instructions (issue 26). The real tables run as well wherever the CPU has them.

The library is compiled from wordlm/native/*.c with -DWL_SIMDE and SIMDe's headers (the `simde-py`
package, a dev dependency), into build/simde/, once per content of the sources, flags, compiler and
SIMDe: its name carries their hash. It reports every x86 table as runnable, and is built with a low
MIN_WORK so that small cases really run on several threads (as tests/arm/run.sh's harness).

Tests name an emulated kernel "simde-avx2" or "simde-avx512-vnni" (`EMULATED`; none off x86);
`use_kernel` switches wordlm.native to that library for one test (a fixture's monkeypatch). Plain
functions, no fixtures: tests/arm/python.sh runs tests/test_native.py without conftest.py.

Run: .venv/bin/python tests/native_simde.py   (builds it if needed, prints its path)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "wordlm" / "native"
OUT = ROOT / "build" / "simde"
PREFIX = "simde-"
# setup.py's flags, Python's -fwrapv, no instruction set beyond x86-64's baseline (SSE2): SIMDe emulates
# the rest. -Wno-psabi: SIMDe passes its 256- and 512-bit types by value, which GCC warns about
FLAGS = [
    "-O2", "-ffp-contract=off", "-fwrapv", "-pthread", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
    "-Wno-psabi", "-DWL_NO_PYTHON", "-DWL_SIMDE", "-DMIN_WORK=4096",
]  # fmt: skip


def emulated_isas() -> tuple[str, ...]:
    """The emulated kernels' test names: every x86 table above portable C (none on other machines)."""
    from wordlm import native

    return tuple(PREFIX + isa for isa in native.ISAS[1:]) if native.architecture() == "x86" else ()


EMULATED = emulated_isas()


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("no C compiler (gcc or $CC) to build the SIMDe kernels")
    return cc


def _simde_include() -> str:
    try:
        import simde_py
    except ImportError as e:
        raise RuntimeError("SIMDe's headers are missing: pip install simde-py (in the [dev] extra)") from e
    return simde_py.get_include()


def build() -> Path:
    """The SIMDe library's path, compiled first unless this content's build is there already."""
    cc, include = _compiler(), _simde_include()
    sources = sorted(SOURCES.glob("*.c"))
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256()
    for part in (*FLAGS, cc, version, include):
        key.update(part.encode() + b"\0")
    for f in (*sources, *sorted(SOURCES.glob("*.h")), *sorted(Path(include).rglob("*.h"))):
        key.update(f.name.encode() + b"\0" + f.read_bytes())
    lib = OUT / f"libwordlm_simde-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:  # then renamed: a concurrent run never sees half a file
        part = Path(tmp) / lib.name
        cmd = [cc, *FLAGS, f"-I{include}", *map(str, sources), "-lm", "-o", str(part)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"building the SIMDe kernels failed:\n{' '.join(cmd)}\n{run.stderr}")
        os.replace(part, lib)
    for old in OUT.glob("libwordlm_simde-*.so"):  # earlier contents' builds
        if old != lib:
            old.unlink(missing_ok=True)
    return lib


_built: list = []  # this process's build(): its path, or the error it raised (not retried for every test)


def library() -> Path:
    """build(), once per process."""
    if not _built:
        try:
            _built.append(build())
        except RuntimeError as e:
            _built.append(e)
    if isinstance(_built[0], Exception):
        raise _built[0]
    return _built[0]


def use_kernel(name: str, monkeypatch) -> str:
    """Make `name` (one of native.ISAS, or of EMULATED: a table of the SIMDe build) the kernel of this test,
    as WORDLM_ISA does for a process; the plain kernel name to pass as isa=."""
    from wordlm import native

    if name.startswith(PREFIX):
        monkeypatch.setattr(native, "_lib", native.load_library(library()))
        name = name.removeprefix(PREFIX)
    monkeypatch.setattr(native, "_active", name)
    return name


if __name__ == "__main__":
    if not EMULATED:
        sys.exit(print("not an x86 machine: no x86 tables to emulate"))
    try:
        print(build())
    except RuntimeError as e:
        sys.exit(str(e))
