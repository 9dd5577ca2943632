"""Atomic writes: never through a device, FIFO or directory; what a killed writer left is cleaned up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wordlm.checkpoint.fileio import atomic_write
from wordlm.errors import WordLMError


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
def test_never_writes_through_what_is_not_a_regular_file(tmp_path, kind):
    target = {"device": "/dev/null", "fifo": tmp_path / "pipe", "directory": tmp_path / "d"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    with pytest.raises(WordLMError, match="is a directory|not a regular file"):
        atomic_write(target, b"data")
    if kind == "device":
        assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")  # still the device
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no temp file either


def test_the_next_write_removes_a_killed_writers_temp_file(tmp_path):
    out = tmp_path / "model.onnx"
    code = (
        "import sys, wordlm.checkpoint.fileio as f, os, signal\n"
        "real = os.fsync\n"
        "def die(fd): os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.fsync = die\n"  # killed after the data is written, before the rename
        f"f.atomic_write({str(out)!r}, b'x' * 1_000_000)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".model.onnx.") and left[0].endswith(".tmp")
    live = tmp_path / f".model.onnx.{os.getpid()}-live.tmp"  # a writer still running keeps its file
    live.write_bytes(b"")
    atomic_write(out, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "model.onnx"])
    assert out.read_bytes() == b"new"
