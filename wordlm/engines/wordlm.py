"""`wordlm`: wordlm's own runtime, which is an Engine itself (wordlm.runtime.Runtime)."""

from __future__ import annotations

from wordlm.checkpoint import Checkpoint
from wordlm.runtime import Runtime


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> Runtime:
    return Runtime(ckpt, threads)
