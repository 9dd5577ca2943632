"""`wordlm`: wordlm's CPU engine. It builds its own ONNX graphs from a (quantized) checkpoint and runs
them with ONNX Runtime's MLAS kernels, chosen by measurement (benchmarks/kernels.md):

- embedding: int8 rows gathered and scaled in the graph (4-bit rows unpacked with bit ops);
- LSTM: `DynamicQuantizeLSTM` with per-channel int8 weights (the input projection of all steps is one
  GEMM inside the op), or ONNX `LSTM` for float weights;
- decoder: `DynamicQuantizeMatMul` (per-row int8) for many rows, `MatMulNBits` (8- or 4-bit,
  block-wise) for one row and for 4-bit weights;
- evaluation (the loss) of checkpoints with an int8 LSTM and a decoder with one scale per row (the
  `int8` and `int4` schemes) runs on wordlm's native kernels instead (wordlm/native: the LSTM's int8
  GEMMs and cell, and a decoder GEMM that folds each block of logits into a running log-sum-exp, so
  the logits never reach memory); other checkpoints compute the log-softmax gathered at the target in
  the graph. Either way 33,278 logits per token never travel back to Python for the loss;
- the softmax at a temperature happens in the graph; sampling draws from the returned probabilities
  by inverse CDF in numpy.

One graph per task ("nll", "logits", "next", "sample"), built and loaded on first use.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from wordlm.checkpoint import Checkpoint
from wordlm.engines import Engine, State
from wordlm.engines.ort import ort_session, zero_state
from wordlm.errors import WordLMError, require
from wordlm.native import PackedLinear, PackedLSTM, decoder_nll, lstm, pack_linear
from wordlm.quant import QSpec, Scheme, codes, scheme_from_dict
from wordlm.sampling import Sampling

log = logging.getLogger(__name__)
TASKS = ("nll", "logits", "next", "sample")


class GraphBuilder:
    """A small helper over onnx.helper: fresh names, initializers from numpy, com.microsoft ops."""

    def __init__(self) -> None:
        self.onnx = require("onnx")
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, name: str, value: np.ndarray) -> str:
        # np.ascontiguousarray would turn a 0-d scalar into shape [1]
        self.inits.append(self.onnx.numpy_helper.from_array(np.require(value, requirements="C"), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, ms: bool = False, **attrs) -> str | list[str]:
        self._n += 1
        names = [f"{op_type.lower()}_{self._n}_{i}" for i in range(outputs)]
        domain = "com.microsoft" if ms else ""
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def model(self, inputs: list, outputs: list[tuple[str, str, int, list]]) -> bytes:
        h, tp = self.onnx.helper, self.onnx.TensorProto
        ins = [h.make_tensor_value_info(n, getattr(tp, t), shape) for n, t, shape in inputs]
        outs = []
        for name, src, elem, shape in outputs:
            self.nodes.append(h.make_node("Identity", [src], [name]))
            outs.append(h.make_tensor_value_info(name, elem, shape))
        graph = h.make_graph(self.nodes, "wordlm", ins, outs, self.inits)
        opsets = [h.make_opsetid("", 18), h.make_opsetid("com.microsoft", 1)]
        return h.make_model(graph, opset_imports=opsets, ir_version=9).SerializeToString()


def _gate_order(w: np.ndarray, hidden: int) -> np.ndarray:
    """Rows in torch's gate order (i, f, g, o) -> ONNX's (i, o, f, c)."""
    i, f, g, o = (w[k * hidden : (k + 1) * hidden] for k in range(4))
    return np.concatenate([i, o, f, g])


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


class WordLMEngine(Engine):
    def __init__(self, ckpt: Checkpoint, threads: int = 1) -> None:
        self.ckpt, self.cfg, self.threads = ckpt, ckpt.config, threads
        self.vocab_size = ckpt.config.vocab_size
        self.scheme: Scheme | None = scheme_from_dict(ckpt.quant) if ckpt.quant else None
        self.name = "wordlm" if self.scheme is None else f"wordlm-{self.scheme.name}"
        self._sessions: dict[str, object] = {}
        self._native: NativeWeights | None = None
        self._native_applies = self._native_kernels_apply()  # decided once: token_nll asks per chunk
        self._build_lock = threading.Lock()  # a server's threads may ask for the same graph at once
        require("onnx"), require("onnxruntime")

    @property
    def size_bytes(self) -> int:
        return self.ckpt.size_bytes

    # ---- weights, as the kernels want them ----
    def _spec(self, name: str) -> QSpec | None:
        return self.scheme.spec_for(name) if self.scheme else None

    def _float(self, name: str) -> np.ndarray:
        return self.ckpt.tensors[name].float().numpy()

    def _codes_scales(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        spec = self._spec(name)
        return codes(self.ckpt.tensors, name, spec).numpy(), self.ckpt.tensors[f"{name}.scales"].float().numpy()

    # ---- graph pieces ----
    def _embedding(self, b: GraphBuilder, ids: str) -> str:
        spec, name = self._spec("encoder.weight"), "encoder.weight"
        if spec is None:
            return b.op("Gather", b.const("emb", self._float(name)), ids)
        scales = self._float(f"{name}.scales")  # [V, G]
        group = self.cfg.emb_dim // scales.shape[1]
        last = b.const("ax_last", np.array([-1]))
        sbe = b.const("shape_sbe", np.array([0, 0, self.cfg.emb_dim]))
        if spec.bits == 8:
            rows = b.op(
                "Cast", b.op("Gather", b.const("emb_q", codes(self.ckpt.tensors, name, spec).numpy()), ids), to=1
            )
        else:  # packed 4-bit: low nibble = even column; codes are offset by 8
            packed = b.op("Gather", b.const("emb_q4", self.ckpt.tensors[f"{name}.qweight"].numpy()), ids)
            lo = b.op("BitwiseAnd", packed, b.const("mask", np.array(15, np.uint8)))
            hi = b.op("BitShift", packed, b.const("four", np.array(4, np.uint8)), direction="RIGHT")
            pair = b.op("Concat", b.op("Unsqueeze", lo, last), b.op("Unsqueeze", hi, last), axis=-1)  # [S, B, E/2, 2]
            offset = b.op("Sub", b.op("Cast", pair, to=1), b.const("eight", np.array(8.0, np.float32)))
            rows = b.op("Reshape", offset, sbe)
        grouped = b.op("Reshape", rows, b.const("shape_sbg", np.array([0, 0, -1, group])))  # [S, B, G, gs]
        s = b.op("Unsqueeze", b.op("Gather", b.const("emb_scales", scales), ids), last)  # [S, B, G, 1]
        return b.op("Reshape", b.op("Mul", grouped, s), sbe)

    def _lstm(self, b: GraphBuilder, x: str, h0: str, c0: str) -> tuple[str, str, str]:
        H, hs, cs = self.cfg.hidden_dim, [], []
        for layer in range(self.cfg.num_layers):
            bias = np.concatenate([self._float(f"rnn.bias_ih_l{layer}"), self._float(f"rnn.bias_hh_l{layer}")])
            bias = np.concatenate([_gate_order(bias[: 4 * H], H), _gate_order(bias[4 * H :], H)])[None]
            sl = [b.const(f"sl{layer}_{k}", np.array([v])) for k, v in (("s", layer), ("e", layer + 1))]
            h_init = b.op("Slice", h0, *sl, "ax0")
            c_init = b.op("Slice", c0, *sl, "ax0")
            wname, rname = f"rnn.weight_ih_l{layer}", f"rnn.weight_hh_l{layer}"
            if self._spec(wname) is None:
                W = b.const(f"W{layer}", _gate_order(self._float(wname), H)[None])
                R = b.const(f"R{layer}", _gate_order(self._float(rname), H)[None])
                y, yh, yc = b.op(
                    "LSTM", x, W, R, b.const(f"B{layer}", bias), "", h_init, c_init, outputs=3, hidden_size=H
                )
            else:
                ins = []
                for tag, name in (("W", wname), ("R", rname)):
                    q, s = self._codes_scales(name)  # [4H, in], [4H, 1]
                    ins += [
                        b.const(f"{tag}{layer}", _gate_order(q, H).T[None]),  # [1, in, 4H]
                        b.const(f"{tag}s{layer}", _gate_order(s, H).T.astype(np.float32)),  # [1, 4H]
                        b.const(f"{tag}z{layer}", np.zeros((1, 4 * H), np.int8)),
                    ]
                y, yh, yc = b.op(
                    "DynamicQuantizeLSTM",
                    x,
                    ins[0],
                    ins[3],
                    b.const(f"B{layer}", bias),
                    "",
                    h_init,
                    c_init,
                    "",
                    ins[1],
                    ins[2],
                    ins[4],
                    ins[5],
                    outputs=3,
                    ms=True,
                    hidden_size=H,
                )
            x = b.op("Squeeze", y, "ax1")  # [S, B, H]
            hs.append(yh)
            cs.append(yc)
        return x, b.op("Concat", *hs, axis=0), b.op("Concat", *cs, axis=0)

    def _decoder(self, b: GraphBuilder, x: str, rows: int | None) -> str:
        """x[M, H] -> logits[M, V]; `rows` is M when known (1 for generation)."""
        name, spec = "decoder.weight", self._spec("decoder.weight")
        bias = b.const("dec_b", self._float("decoder.bias"))
        V, K = self.cfg.vocab_size, self.cfg.hidden_dim
        if spec is None:
            return b.op("Add", b.op("MatMul", x, b.const("dec_wt", self._float(name).T)), bias)
        q, s = self._codes_scales(name)
        group = K // s.shape[1]
        # One scale per row: int8 DynamicQuantizeMatMul is the fastest kernel for many rows (4-bit codes
        # are exact int8 codes too), MatMulNBits for one row (benchmarks/kernels.md).
        if group == K and (rows != 1 or not _pow2(K)):
            return b.op(
                "DynamicQuantizeMatMul",
                x,
                b.const("dec_qt", q.T),
                b.const("dec_s", s[:, 0]),
                "",
                bias,
                ms=True,
            )
        if not _pow2(group):
            raise WordLMError(f"engine wordlm: block size {group} of the decoder must be a power of two >= 16")
        if spec.bits == 8:
            blob = (q.astype(np.int16) + 128).astype(np.uint8).reshape(V, K // group, group)
        else:
            blob = self.ckpt.tensors[f"{name}.qweight"].numpy().reshape(V, K // group, group // 2)
        return b.op(
            "MatMulNBits",
            x,
            b.const("dec_blob", blob),
            b.const("dec_s", s),
            "",
            "",
            bias,
            ms=True,
            K=K,
            N=V,
            bits=spec.bits,
            block_size=group,
            accuracy_level=4,
        )

    def build(self, task: str) -> bytes:
        """The serialized ONNX graph of one task (also what `wordlm export` writes for quantized checkpoints)."""
        onnx = require("onnx")
        b, cfg = GraphBuilder(), self.cfg
        L, H, V = cfg.num_layers, cfg.hidden_dim, cfg.vocab_size
        b.const("ax0", np.array([0]))
        b.const("ax1", np.array([1]))
        state_shape = [L, "batch", H]
        inputs = [
            ("ids", "INT64", ["seq", "batch"]),
            ("h0", "FLOAT", state_shape),
            ("c0", "FLOAT", state_shape),
        ]
        out, hn, cn = self._lstm(b, self._embedding(b, "ids"), "h0", "c0")  # out: [S, B, H]
        f32 = onnx.TensorProto.FLOAT
        outputs = [("hn", hn, f32, state_shape), ("cn", cn, f32, state_shape)]
        if task in ("nll", "logits"):
            logits = self._decoder(b, b.op("Reshape", out, b.const("shape_mh", np.array([-1, H]))), None)  # [S*B, V]
            if task == "logits":
                shape = b.op("Concat", b.op("Shape", "ids"), b.const("v", np.array([V])), axis=0)
                outputs.insert(0, ("logits", b.op("Reshape", logits, shape), f32, ["seq", "batch", V]))
            else:
                inputs.append(("targets", "INT64", ["seq", "batch"]))
                tgt = b.op("Reshape", "targets", b.const("shape_m1", np.array([-1, 1])))
                # LogSoftmax is MLAS-vectorised; ReduceLogSumExp is ~10x slower (benchmarks/kernels.md)
                nll = b.op("Neg", b.op("GatherElements", b.op("LogSoftmax", logits, axis=-1), tgt, axis=1))
                outputs.insert(0, ("nll", b.op("Reshape", nll, b.op("Shape", "targets")), f32, ["seq", "batch"]))
        else:
            last = b.op("Gather", out, b.const("minus1", np.array(-1)), axis=0)  # [B, H]
            logits = self._decoder(b, last, 1)  # [B, V]
            if task == "next":
                outputs.insert(0, ("logprobs", b.op("LogSoftmax", logits, axis=-1), f32, ["batch", V]))
            else:  # probabilities at a temperature; the inverse-CDF draw is done in numpy (faster than
                # ORT's CumSum + int64 ReduceSum over 33K words, benchmarks/quant.md)
                inputs.append(("inv_temperature", "FLOAT", [1]))
                probs = b.op("Softmax", b.op("Mul", logits, "inv_temperature"), axis=-1)
                outputs.insert(0, ("probs", probs, f32, ["batch", V]))
        return b.model(inputs, outputs)

    def _session(self, task: str):
        session = self._sessions.get(task)
        if session is None:
            with self._build_lock:
                if task not in self._sessions:
                    self._sessions[task] = self._new_session(task)
                session = self._sessions[task]
        return session

    def _new_session(self, task: str):
        return ort_session(self.build(task), self.threads)

    # ---- the Engine interface ----
    def init_state(self, batch_size: int) -> State:
        return zero_state(self.cfg.num_layers, batch_size, self.cfg.hidden_dim)

    def _run(self, task: str, ids: torch.Tensor, state: State, **extra) -> tuple[np.ndarray, State]:
        feeds = {
            "ids": np.ascontiguousarray(ids.numpy(), dtype=np.int64),
            "h0": state[0],
            "c0": state[1],
            **extra,
        }
        out, hn, cn = self._session(task).run(None, feeds)
        return out, (hn, cn)

    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logits, state = self._run("logits", ids, state)
        return torch.from_numpy(logits), state

    def _native_kernels_apply(self) -> bool:
        """Whether the native kernels take this checkpoint: not for float weights, a 4-bit LSTM, more
        than one scale per row, or sizes the kernels do not take."""
        L, H = self.cfg.num_layers, self.cfg.hidden_dim
        lstm = [f"rnn.weight_{kind}_l{layer}" for layer in range(L) for kind in ("ih", "hh")]
        for name in ("decoder.weight", *lstm):
            spec = self._spec(name)
            if spec is None or self.ckpt.tensors[f"{name}.scales"].shape[1] != 1 or (name in lstm and spec.bits != 8):
                return False
        return H % 4 == 0 and self.cfg.emb_dim % 4 == 0

    def _native_weights(self) -> NativeWeights | None:
        """The weights packed for the native kernels (on first use), or None where they do not apply."""
        if not self._native_applies:
            return None
        if self._native is None:
            with self._build_lock:
                if self._native is None:
                    self._native = self._pack_native()
        return self._native

    @property
    def eval_kernels(self) -> str:
        """What computes the loss: "native" (wordlm/native) or "onnxruntime" (the "nll" graph)."""
        return "onnxruntime" if self._native_weights() is None else "native"

    def _pack_native(self) -> NativeWeights:
        def linear(weight: str, bias: str) -> PackedLinear:
            q, s = self._codes_scales(weight)
            return pack_linear(q, s[:, 0], self._float(bias))

        layers = [
            tuple(linear(f"rnn.weight_{k}_l{layer}", f"rnn.bias_{k}_l{layer}") for k in ("ih", "hh"))
            for layer in range(self.cfg.num_layers)
        ]
        spec = self._spec("encoder.weight")
        table = self.ckpt.tensors["encoder.weight"] if spec is None else self.ckpt.tensors["encoder.weight.qweight"]
        scales = None if spec is None else self._float("encoder.weight.scales")
        return NativeWeights(
            decoder=linear("decoder.weight", "decoder.bias"),
            lstm=PackedLSTM(layers),
            emb=table.float().numpy() if spec is None else table.numpy(),
            emb_scales=scales,
            emb_bits=None if spec is None else spec.bits,
        )

    def token_nll(self, ids: torch.Tensor, targets: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """NLL of every target [seq, batch]: on the native kernels where they apply, else in the graph."""
        tgt = np.ascontiguousarray(targets.numpy(), dtype=np.int64)
        w = self._native_weights()
        if w is None:
            nll, state = self._run("nll", ids, state, targets=tgt)
            return torch.from_numpy(nll), state
        y, h, c = lstm(w.embed(ids.numpy()), w.lstm, *state)
        nll, _ = decoder_nll(y.reshape(-1, self.cfg.hidden_dim), w.decoder, tgt.reshape(-1))
        return torch.from_numpy(nll.reshape(tgt.shape)), (h, c)

    def next_logprobs(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logprobs, state = self._run("next", ids, state)
        return torch.from_numpy(logprobs), state

    def sample_next(self, ids: torch.Tensor, state: State, sampling: Sampling, generator: torch.Generator):
        if not sampling.plain:
            return super().sample_next(ids, state, sampling, generator)
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        inv_t = np.array([1.0 / sampling.temperature], np.float32)
        probs, state = self._run("sample", ids, state, inv_temperature=inv_t)
        return inverse_cdf(probs[0], u), state


@dataclass
class NativeWeights:
    """A checkpoint as the native kernels take it (built once per engine, on first use)."""

    decoder: PackedLinear
    lstm: PackedLSTM
    emb: np.ndarray  # float32 [V, E], int8 codes [V, E] or packed 4-bit [V, E / 2]
    emb_scales: np.ndarray | None  # float32 [V, G]
    emb_bits: int | None

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """ids [S, B] -> float32 [S, B, E]: the rows dequantized exactly as the graph's embedding does."""
        rows = self.emb[ids]
        if self.emb_bits is None:
            return rows
        if self.emb_bits == 4:  # low nibble = even column, offset by 8 (wordlm.quant.primitives)
            rows = np.stack([rows & 15, rows >> 4], axis=-1).reshape(*ids.shape, -1).astype(np.int8) - 8
        g = self.emb_scales.shape[1]
        grouped = rows.astype(np.float32).reshape(*ids.shape, g, -1) * self.emb_scales[ids][..., None]
        return grouped.reshape(*ids.shape, -1)


def inverse_cdf(p: np.ndarray, u: float, block: int = 256) -> int:
    """The index i with cdf[i-1] <= u * total < cdf[i], for probabilities p[V] and u in [0, 1).

    Two levels (block sums, then one block) because np.cumsum over 33K words takes ~185 us, longer
    than the whole model step; this takes ~20 us.
    """
    full = p.size // block * block
    sums = np.append(p[:full].reshape(-1, block).sum(1, dtype=np.float64), p[full:].sum(dtype=np.float64))
    cum = np.cumsum(sums, dtype=np.float64)
    target = u * cum[-1]
    r = min(int(np.searchsorted(cum, target, side="right")), sums.size - 1)
    local = target - (cum[r - 1] if r else 0.0)
    j = int(np.searchsorted(np.cumsum(p[r * block : (r + 1) * block], dtype=np.float64), local, side="right"))
    return min(r * block + j, p.size - 1)


def from_checkpoint(ckpt: Checkpoint, threads: int = 1) -> WordLMEngine:
    return WordLMEngine(ckpt, threads)
