"""A checkpoint's weights as the runtime computes with them: packed once, at load.

Each part has a native form (wordlm/native: int8 codes with one scale per row) and a numpy float form
for what the kernels do not take (float checkpoints, decoders with several scales per row, sizes the
kernels do not fit); which one a part got is in `kernels`. Inputs are memory-mapped checkpoint arrays;
the packed copies replace them, so a loaded model holds its weights once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wordlm import native
from wordlm.checkpoint import Checkpoint
from wordlm.errors import WordLMError
from wordlm.quant import FINE_ACTIVATIONS, codes
from wordlm.quant.primitives import code_count, dequantize


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32)


@dataclass
class Embedding:
    """ids -> rows: float32 [V, E], or codes of `bits` packed as stored ([V, E * bits / 8]) with scales
    [V, G], `dim` (E) codes a row. The table stays packed (a row lookup unpacks only the rows it reads,
    natively): its RAM is its size on disk."""

    table: np.ndarray
    scales: np.ndarray | None = None
    bits: int | None = None
    dim: int | None = None

    def __post_init__(self) -> None:
        codes = self.bits is not None
        self.packed = native.PackedEmbedding(self.table, self.scales, self.bits, self.dim) if codes else None

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ids (any shape); an id outside [0, V) is a WordLMError (checked in C for codes:
        generation's step pays for no numpy reduction)."""
        if self.packed is not None:
            return native.embed(self.packed, ids)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.table)):
            raise WordLMError(f"ids must lie in [0, {len(self.table)}), got {ids.min()}..{ids.max()}")
        return _f32(self.table[ids])


class FloatLinear:
    """y = x W^T + b in float32 (numpy's BLAS): the form of weights the native kernels do not take."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        self.w, self.b = np.ascontiguousarray(w, np.float32), _f32(b)

    def __call__(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        return x @ self.w.T + self.b


@dataclass
class Decoder:
    """The output layer: hidden rows x [M, H] -> per-row NLL of targets, logits, or log-sum-exp."""

    packed: native.PackedLinear | None = None  # the native form, or
    dense: FloatLinear | None = None  # the float one

    def nll(self, x: np.ndarray, targets: np.ndarray, threads: int) -> np.ndarray:
        if self.packed is not None:
            return native.decoder_nll(x, self.packed, targets, threads=threads).nll
        z = self.dense(x).astype(np.float64)
        return (logsumexp(z) - z[np.arange(len(z)), targets]).astype(np.float32)

    def logits(self, x: np.ndarray, threads: int) -> np.ndarray:
        if self.packed is not None:
            return native.decoder_nll(x, self.packed, None, logits=True, threads=threads).logits
        return self.dense(x)

    def logprobs(self, x: np.ndarray, threads: int) -> np.ndarray:
        if self.packed is not None:
            out = native.decoder_nll(x, self.packed, None, logits=True, lse=True, threads=threads)
            return out.logits - out.lse[:, None].astype(np.float32)
        z = self.dense(x)
        return (z - logsumexp(z.astype(np.float64))[:, None]).astype(np.float32)


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log sum_n exp(z[m, n]) of each row, stable (the row's max taken out first)."""
    m = z.max(1)
    return m + np.log(np.exp(z - m[:, None]).sum(1))


class Recurrent:
    """The recurrent stack step by step in numpy float32, for float weights: numpy's GEMMs, the cells of
    wordlm.native.cell_step (torch's gate orders), an LSTM's projection h = W_hr (o * tanh(c))."""

    def __init__(self, cfg, layers: list[tuple[FloatLinear, FloatLinear, FloatLinear | None]]) -> None:
        self.cell, self.has_c, self.layers = cfg.cell, cfg.cell_spec.has_c, layers  # (W_ih, W_hh, W_hr or None)

    def __call__(self, x: np.ndarray, *state: np.ndarray, threads: int):
        steps, batch, _ = x.shape
        state = tuple(s.astype(np.float32, copy=True) for s in state)
        for layer, (w_ih, w_hh, w_hr) in enumerate(self.layers):
            xproj = w_ih(x.reshape(steps * batch, -1)).reshape(steps, batch, -1)  # every step at once
            h = state[0][layer]
            c = state[1][layer] if self.has_c else None
            ys = np.empty((steps, batch, h.shape[-1]), np.float32)
            for t in range(steps):
                h, c = native.cell_step(self.cell, xproj[t], w_hh(h), h, c)
                if w_hr is not None:
                    h = w_hr(h)
                ys[t] = h
            state[0][layer] = h
            if c is not None:
                state[1][layer] = c
            x = ys
        return (x, *state)


class NativeRecurrent:
    """The whole recurrent stack in C, any cell (wordlm.native.recurrent): int8 GEMMs and cells."""

    def __init__(self, packed: native.PackedRecurrent) -> None:
        self.packed = packed

    def __call__(self, x: np.ndarray, *state: np.ndarray, threads: int):
        return native.recurrent(x, self.packed, *state, threads=threads)  # (y, *state)


@dataclass
class Weights:
    embedding: Embedding
    recurrent: NativeRecurrent | Recurrent  # (x, *state) -> (y, *state)
    decoder: Decoder
    kernels: str  # what computes the LSTM and the decoder, for people: "native avx2", "numpy float32", ...


class _Parts:
    """A checkpoint's stored weights, as each part of the model asks for them: its spec, whether the
    kernels take it, its float form, and a linear layer in the fastest exact form."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.cfg, self.t, self.scheme = ckpt.config, ckpt.tensors, ckpt.scheme
        self.fine = FINE_ACTIVATIONS[self.scheme.fine_activations if self.scheme else "none"]  # name prefixes

    def spec(self, name: str):
        return self.scheme.spec_for(name) if self.scheme else None

    def native_ok(self, name: str) -> bool:
        """Codes of any width with one scale per row, rows of a multiple of 4 inputs: the kernels' form."""
        if self.spec(name) is None or self.t[f"{name}.scales"].shape[1] != 1:
            return False
        return code_count(self.t[f"{name}.qweight"].shape[1], self.spec(name).bits) % 4 == 0

    def weight(self, name: str) -> np.ndarray:
        """float32, dequantized where stored as codes."""
        s = self.spec(name)
        return _f32(self.t[name]) if s is None else dequantize(codes(self.t, name, s), self.t[f"{name}.scales"])

    def linear(self, name: str, bias: np.ndarray, fast: bool, part: str = "") -> native.PackedLinear | FloatLinear:
        """`part`: what the weight computes where its name does not say (a tied matrix as the decoder)."""
        if not fast:
            return FloatLinear(self.weight(name), bias)
        fine = any((part or name).startswith(prefix) for prefix in self.fine)  # its inputs as two 7-bit codes
        scales = _f32(self.t[f"{name}.scales"][:, 0])
        # int4 codes (or narrower) two a byte: half the memory, which generation reads once per word
        nibbles = self.spec(name).bits <= 4
        return native.pack_linear(codes(self.t, name, self.spec(name)), scales, bias, fine, nibbles)

    def embedding(self) -> Embedding:
        enc, t = self.spec("encoder.weight"), self.t
        if enc is None:
            return Embedding(_f32(t["encoder.weight"]))
        q = np.asarray(t["encoder.weight.qweight"])  # an ndarray view of the mapped file: no memmap overhead
        return Embedding(q.view(np.uint8), _f32(t["encoder.weight.scales"]), enc.bits, self.cfg.emb_dim)

    def recurrent(self) -> tuple[NativeRecurrent | Recurrent, str]:
        """The stack: all of it in C when the kernels take every matrix, else numpy float32; and which."""
        cfg, t = self.cfg, self.t
        names = [(f"rnn.weight_{k}_l{i}", f"rnn.bias_{k}_l{i}") for i in range(cfg.num_layers) for k in ("ih", "hh")]
        proj = [f"rnn.weight_hr_l{i}" for i in range(cfg.num_layers)] if cfg.proj_size else []
        fast = all(self.native_ok(w) for w, _ in names) and all(self.native_ok(w) for w in proj)
        parts = [self.linear(w, _f32(t[b]), fast) for w, b in names]
        pairs = list(zip(parts[0::2], parts[1::2], strict=True))
        hr = [self.linear(w, np.zeros(cfg.proj_size, np.float32), fast) for w in proj]  # torch's W_hr: no bias
        if fast:  # every cell's whole stack in C
            return NativeRecurrent(native.PackedRecurrent(pairs, cfg.cell, hr or None)), f"native {native.active_isa()}"
        layers = [(a, b, p) for (a, b), p in zip(pairs, hr or [None] * cfg.num_layers, strict=True)]
        return Recurrent(cfg, layers), "numpy float32"

    def decoder(self) -> tuple[Decoder, str]:
        name = "encoder.weight" if self.cfg.tied else "decoder.weight"  # a tied matrix serves both
        fast = self.native_ok(name)
        dec = self.linear(name, _f32(self.t["decoder.bias"]), fast, part="decoder")
        return (Decoder(packed=dec), f"native {native.active_isa()}") if fast else (Decoder(dense=dec), "numpy float32")


def pack(ckpt: Checkpoint) -> Weights:
    """Every part of `ckpt` in the fastest form that computes it exactly (see the module's doc)."""
    parts = _Parts(ckpt)
    recurrent, where = parts.recurrent()
    decoder, dec_where = parts.decoder()
    kernels = f"{ckpt.config.cell} {where}, decoder {dec_where}"
    if parts.fine and "native" in (where + dec_where):
        kernels += f", fine activations ({ckpt.scheme.fine_activations})"
    return Weights(parts.embedding(), recurrent, decoder, kernels)
