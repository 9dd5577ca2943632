"""`torch`: the fp32 reference, the tutorial's model run as it is (wordlm.train.model.TorchEngine, which
training's validation also uses, over the checkpoint's torch model)."""

from __future__ import annotations

from wordlm.checkpoint import Checkpoint
from wordlm.errors import require

torch = require("torch", "torch")

from wordlm.train.model import TorchEngine, build_model, state_dict_bytes  # noqa: E402  (after the one-line torch check)

__all__ = ["TorchEngine", "from_checkpoint", "state_dict_bytes"]


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> TorchEngine:
    torch.set_num_threads(threads)
    return TorchEngine(build_model(ckpt), threads=threads)
