"""Inference engines: every way of running a model behind one small interface.

evaluate, generate, bench and serve talk only to `Engine`, so that the torch fp32 reference, the
tutorial's torch.ao int8 path, ONNX Runtime and wordlm's own quantized engine run the very same loop.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F

from wordlm.errors import WordLMError
from wordlm.sampling import Sampling, sample

State = Any  # engine-specific recurrent state (for torch engines: (h, c))


class Engine:
    """Base class. Subclasses set `name` and implement `init_state`, `forward` and `size_bytes`.

    ids are int64 tensors [seq, batch]; logits are float32 tensors [seq, batch, vocab].
    `nll` and `next_logprobs` have plain defaults over `forward`; an engine overrides them where it
    can avoid materialising full logits.
    """

    name: str = "?"
    threads: int = 1
    vocab_size: int

    @property
    def size_bytes(self) -> int:
        """Bytes of what this engine loads (on disk, or the tutorial's serialized state_dict)."""
        raise NotImplementedError

    def init_state(self, batch_size: int) -> State:
        raise NotImplementedError

    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Negative log-likelihood (nats) of each of targets[seq, batch] given ids[seq, batch]."""
        logits, state = self.forward(ids, state)
        flat = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return flat.view(targets.shape), state

    def nll(self, ids: torch.Tensor, targets: torch.Tensor, state: State) -> tuple[float, State]:
        """Summed negative log-likelihood (nats) of targets[seq, batch] given ids[seq, batch]."""
        nll, state = self.token_nll(ids, targets, state)
        return float(nll.double().sum()), state  # an fp64 sum: fp32 would round over a long text

    def next_logprobs(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Log-probabilities [batch, vocab] of the word after the last position of ids[seq, batch]."""
        logits, state = self.forward(ids, state)
        return torch.log_softmax(logits[-1].float(), dim=-1), state

    def sample_next(
        self, ids: torch.Tensor, state: State, sampling: Sampling, generator: torch.Generator
    ) -> tuple[int, State]:
        """Feed ids[seq, 1] and draw the next word id (batch 1); engines may fuse the sampling."""
        logprobs, state = self.next_logprobs(ids, state)
        return sample(logprobs[0], sampling, generator), state


# name -> "module:factory"; factories take (checkpoint, threads) and import their runtime lazily, so a
# missing optional runtime only matters to the engine that needs it.
ENGINES: dict[str, str] = {
    "torch": "wordlm.engines.torch_fp32:from_checkpoint",
    "torch-dynamic": "wordlm.engines.torch_dynamic:from_checkpoint",
    "wordlm": "wordlm.engines.wordlm_ort:from_checkpoint",
    "onnxruntime": "wordlm.engines.ort:fp32_from_checkpoint",
    "onnxruntime-int8": "wordlm.engines.ort:int8_from_checkpoint",
}


def default_engine(ckpt) -> str:
    """The fp32 reference for float checkpoints, wordlm's engine for quantized ones."""
    return "torch" if ckpt.quant is None else "wordlm"


def load_engine(name: str, ckpt, threads: int = 1) -> Engine:
    """Build engine `name` for a loaded checkpoint, using `threads` CPU threads."""
    if name not in ENGINES:
        raise WordLMError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if threads < 1:
        raise WordLMError("--threads must be at least 1")
    torch.set_num_threads(threads)  # every engine runs some torch (the reference, or loss and sampling)
    module, factory = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), factory)(ckpt, threads)
