"""Calibration for error-compensating quantization: what each weight's inputs look like on real text.

GPTQ (wordlm.quant.gptq) needs, per weight, the Hessian of its output error: X^T X over the inputs X
the weight multiplies. They come from running the float model (the runtime's numpy cells, no torch)
over a sample of the training split: W_ih of a layer sees that layer's input sequence, W_hh sees
h_{t-1}, a projection W_hr sees o * tanh(c), the decoder sees the last layer's outputs.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from wordlm.checkpoint import Checkpoint
from wordlm.data import batchify, bptt_batches, load_split
from wordlm.errors import WordLMError
from wordlm.progress import progress
from wordlm.quant import QSpec, Rounder, round_to_nearest
from wordlm.quant.gptq import gptq
from wordlm.runtime import FloatLinear, Recurrent

log = logging.getLogger("wordlm")

CALIB_TOKENS = 20_000  # default sample of the training split: least validation loss of 5k, 20k, 100k (quant_gptq.md)
CALIB_STREAMS, CALIB_BPTT = 20, 35  # the training recipe's batch and bptt: state carried as it was trained


class Grams:
    """Running sums of X^T X (float64) per weight name, and how many input rows each saw."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        self.sums[name] = self.sums.get(name, 0) + x.T @ x
        self.rows[name] = self.rows.get(name, 0) + len(x)

    def hessians(self) -> dict[str, np.ndarray]:
        """name -> X^T X / rows: GPTQ's H up to a factor (its damping is relative, so the factor is moot)."""
        return {name: s / self.rows[name] for name, s in self.sums.items()}


class _Tap:
    """A float linear layer that records its inputs in `grams` under the weight's name."""

    def __init__(self, name: str, linear: FloatLinear, grams: Grams) -> None:
        self.name, self.linear, self.grams = name, linear, grams

    def __call__(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        self.grams.add(self.name, x)
        return self.linear(x, threads)


def calibration_ids(ckpt: Checkpoint, tokens: int, data_dir: str | None = None) -> np.ndarray:
    """The first `tokens` ids of the training split (WikiText-2's unless `data_dir` names a corpus)."""
    if tokens < CALIB_STREAMS * 2:
        raise WordLMError(f"--calib-tokens must be at least {CALIB_STREAMS * 2}, got {tokens}")
    return load_split(ckpt.vocab, "train", data_dir)[:tokens]


def input_hessians(ckpt: Checkpoint, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Run the float model over `ids` (CALIB_STREAMS streams, state carried across chunks) and return
    X^T X / rows for every recurrent weight and the decoder's weight."""
    cfg, t = ckpt.config, ckpt.tensors
    grams = Grams()

    def tap(name: str, bias: np.ndarray) -> _Tap:
        return _Tap(name, FloatLinear(t[name], bias), grams)

    layers = []
    for i in range(cfg.num_layers):
        ih, hh = (tap(f"rnn.weight_{k}_l{i}", t[f"rnn.bias_{k}_l{i}"]) for k in ("ih", "hh"))
        hr = tap(f"rnn.weight_hr_l{i}", np.zeros(cfg.proj_size, np.float32)) if cfg.proj_size else None
        layers.append((ih, hh, hr))
    recurrent = Recurrent(cfg, layers)
    decoder = "encoder.weight" if cfg.tied else "decoder.weight"
    embedding = np.asarray(t["encoder.weight"], np.float32)
    source = batchify(ids, CALIB_STREAMS)
    state = tuple(np.zeros(s, np.float32) for s in cfg.state_shapes(CALIB_STREAMS))
    chunks = math.ceil((len(source) - 1) / CALIB_BPTT)
    for chunk, _ in progress(bptt_batches(source, CALIB_BPTT), total=chunks, desc="calibrate", unit="chunk"):
        y, *state = recurrent(embedding[chunk], *state, threads=1)
        grams.add(decoder, y)
    log.info("calibrated on %d tokens (%d streams)", source.size, CALIB_STREAMS)
    return grams.hessians()


def embedding_hessian(ckpt: Checkpoint) -> np.ndarray:
    """H for the embedding's rows: W_ih^T W_ih of the first layer, which reads them.

    A row's error e costs the model W_ih e in the first layer's pre-activations, so ||W_ih e||^2 =
    e^T (W_ih^T W_ih) e is the error as the model sees it, where round to nearest minimises ||e||^2.
    This, not a weight per row, is the loss-aware choice: rows are rounded independently (a row's
    codes and scales depend on that row alone), so weighting each row's error by its word's training
    frequency moves no row's optimum; frequency matters only where rows share a decision (how many
    bits the whole table gets, the budget search's question)."""
    w = np.asarray(ckpt.tensors["rnn.weight_ih_l0"], np.float64)
    return w.T @ w


def gptq_rounder(hessians: dict[str, np.ndarray]) -> Rounder:
    """A `Rounder` that runs GPTQ on every weight with a Hessian, round to nearest on the others."""

    def rounder(name: str, w: np.ndarray, spec: QSpec) -> tuple[np.ndarray, np.ndarray]:
        if name not in hessians:
            return round_to_nearest(name, w, spec)
        log.info("GPTQ %s %s at %d bits", name, list(w.shape), spec.bits)
        return gptq(w, hessians[name], spec.bits, spec.group(w.shape[1]))

    return rounder


def calibrated_rounder(ckpt: Checkpoint, ids: np.ndarray) -> Rounder:
    """GPTQ for every weight: the recurrent ones and the decoder from `ids`, the embedding (untied)
    through the first layer's weights."""
    hessians = input_hessians(ckpt, ids)
    if not ckpt.config.tied:
        hessians["encoder.weight"] = embedding_hessian(ckpt)
    return gptq_rounder(hessians)
