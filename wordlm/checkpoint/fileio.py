"""Atomic writes: a file or a directory appears whole or not at all (temp + fsync + rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from wordlm.errors import WordLMError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_file(path: Path) -> None:
    """A file is written only where nothing or a regular file is: never through a device, a FIFO or a
    directory (a rename over /dev/full, say, would replace the device with a file)."""
    if path.is_dir():
        raise WordLMError(f"{path} is a directory; name a file to write")
    if path.exists() and not path.is_file():
        raise WordLMError(f"{path} is not a regular file (a device, FIFO or socket); name a file to write")


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` through a temp file in the same directory and a rename.

    The temp file's name carries this process's id, so that the next write to the same place removes
    what a killed writer left behind (and never a live writer's file)."""
    path = Path(path)
    check_writable_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def settle_dir(path: str | Path) -> Path:
    """Finish what a killed `atomic_write_dir` left: if it died between its two renames, put the
    previous copy back in place; remove temporary copies that no running write owns."""
    path = Path(path)
    if not path.parent.is_dir():
        return path

    def owned_by_live_writer(p: Path) -> bool:  # names: .NAME.old-PID and .NAME.PID-RANDOM.tmp
        pid = p.name[len(path.name) + 2 :].removeprefix("old-").split("-")[0]
        return pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))

    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    olds = [p for p in olds if not owned_by_live_writer(p)]  # a live writer finishes its own swap
    if olds and not path.exists():
        os.replace(olds.pop(), path)
    for stale in olds + list(path.parent.glob(f".{path.name}.*.tmp")):
        if not owned_by_live_writer(stale):
            shutil.rmtree(stale, ignore_errors=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None], marker: str) -> Path:
    """Build a directory with `fill(tmp_dir)`, then swap it into `path`.

    An existing `path` is replaced only if it holds `marker` (so a checkpoint never overwrites a
    folder that is not one); the old copy is removed only after the new one is in place, and
    `settle_dir` restores it if the process dies between the two renames.
    """
    path = settle_dir(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / marker).exists())):
        raise WordLMError(f"refusing to overwrite {path}: it exists and is not a wordlm directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        fill(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
