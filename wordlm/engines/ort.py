"""`onnxruntime` and `onnxruntime-int8`: the checkpoint exported to ONNX and run by ONNX Runtime.

These are baselines, what a user gets out of the box from `torch.onnx.export` (+ ORT's
`quantize_dynamic`): they keep the base class's `nll` / `next_logprobs` over `forward` on purpose, so
that they measure the plain path, not a tuned one.
"""

from __future__ import annotations

import numpy as np

from wordlm.checkpoint import Checkpoint
from wordlm.errors import require
from wordlm.export import onnx_bytes
from wordlm.runtime import Engine, State


def ort_session(model_bytes: bytes, threads: int):
    """An ONNX Runtime CPU session over serialized bytes: `threads` intra-op threads, operators in
    sequence (what every ORT-based engine here runs on, so that they compare like for like)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: ORT's shape-merge warnings are noise here
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


class OrtEngine(Engine):
    """Runs serialized ONNX bytes as wordlm.export writes them (inputs ids, h0[, c0]).

    The session is built from the bytes in memory, so no cache file has to be managed; the bytes are
    exactly what `wordlm export` writes, so their length is the on-disk size.
    """

    def __init__(self, model_bytes: bytes, *, name: str, threads: int = 1) -> None:
        self.session = ort_session(model_bytes, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.name, self.threads = name, threads
        self.vocab_size = int(meta["vocab_size"])
        layers, hidden = int(meta["num_layers"]), int(meta["hidden_dim"])
        out = int(meta.get("out_dim", hidden))  # files exported before projections: h is hidden_dim
        self.inputs = [i.name for i in self.session.get_inputs()]  # ids, h0[, c0]
        self.outputs = [o.name for o in self.session.get_outputs()]  # logits, hn[, cn]
        self.state_sizes = [(layers, out), (layers, hidden)][: len(self.inputs) - 1]
        self._size_bytes = len(model_bytes)

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def init_state(self, batch_size: int) -> State:
        return tuple(np.zeros((layers, batch_size, size), np.float32) for layers, size in self.state_sizes)

    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        feed = dict(zip(self.inputs, (np.ascontiguousarray(ids, dtype=np.int64), *state), strict=True))
        logits, *state = self.session.run(self.outputs, feed)
        return logits, tuple(state)


def fp32_from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> OrtEngine:
    return OrtEngine(onnx_bytes(ckpt), name="onnxruntime", threads=threads)


def int8_from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> OrtEngine:
    return OrtEngine(onnx_bytes(ckpt, quantize_dynamic=True), name="onnxruntime-int8", threads=threads)
