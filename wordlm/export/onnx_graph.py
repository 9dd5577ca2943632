"""The ONNX graph of a quantized checkpoint: how a wordlm model leaves wordlm for ONNX Runtime.

Same inputs and outputs as the float export (ids, h0, c0 -> logits, hn, cn), built node by node from
the stored codes with ONNX Runtime's com.microsoft operators:

- embedding: int8 rows gathered and scaled in the graph (4-bit rows unpacked with bit ops);
- LSTM: `DynamicQuantizeLSTM` (per-channel int8 weights), or ONNX `LSTM` for float weights; GRU and
  RNN: ONNX's `GRU` and `RNN` over int8 codes that `DequantizeLinear` scales (ORT has no int8 GRU);
- decoder: `DynamicQuantizeMatMul` with one scale per row, `MatMulNBits` for groups.

ONNX Runtime's u8 x s8 kernels on AVX2 without VNNI add pairs of products in int16 and saturate with
full-range weights (ORT documents it; docs/design.md, "Known pitfalls"). The graph therefore follows ORT's advice,
`reduce_range`: weights that feed those kernels are stored as 7-bit codes (q / 2, scale x 2), so that
the file computes the same numbers on every CPU. That costs one bit of weight precision in the
exported file only; wordlm's own runtime computes with the checkpoint's 8-bit codes.
"""

from __future__ import annotations

import numpy as np

from wordlm import cells
from wordlm.checkpoint import Checkpoint
from wordlm.errors import WordLMError, require
from wordlm.quant import codes


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


def _gate_order(w: np.ndarray, hidden: int, order: tuple[int, ...] = cells.CELLS["lstm"].onnx_gate_order) -> np.ndarray:
    """Gate rows in torch's order -> ONNX's (the cell's onnx_gate_order: an LSTM's i, f, g, o -> i, o, f, c)."""
    return np.concatenate([w[k * hidden : (k + 1) * hidden] for k in order])


def seven_bit(q: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and their scales -> codes in [-64, 63] and doubled scales (ORT's reduce_range); codes
    already in that range (every width up to 7 bits) stay exact."""
    if q.min() >= -64 and q.max() <= 63:
        return q, np.asarray(scales, np.float32)
    return np.clip(np.rint(q / 2), -64, 63).astype(np.int8), (scales * 2).astype(np.float32)


def _pow2(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


class QuantizedGraph:
    def __init__(self, ckpt: Checkpoint) -> None:
        if ckpt.scheme is None:
            raise WordLMError("a float checkpoint is exported through torch's exporter, not this graph")
        if ckpt.config.proj_size:
            raise WordLMError("ONNX has no LSTM with a projection: a projected LSTM cannot be exported")
        self.t, self.cfg, self.scheme = ckpt.tensors, ckpt.config, ckpt.scheme

    def _spec(self, name: str):
        return self.scheme.spec_for(name)

    def _float(self, name: str) -> np.ndarray:
        return np.asarray(self.t[name], np.float32)

    def _codes_scales(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return codes(self.t, name, self._spec(name)), self._float(f"{name}.scales")

    def _embedding(self, b: GraphBuilder, ids: str) -> str:
        spec, name = self._spec("encoder.weight"), "encoder.weight"
        if spec is None:
            return b.op("Gather", b.const("emb", self._float(name)), ids)
        scales = self._float(f"{name}.scales")  # [V, G]
        group = self.cfg.emb_dim // scales.shape[1]
        last = b.const("ax_last", np.array([-1]))
        sbe = b.const("shape_sbe", np.array([0, 0, self.cfg.emb_dim]))
        if spec.bits != 4:  # int8 codes (other widths unpacked to them: ONNX has no 3- or 5-bit gather)
            rows = b.op("Cast", b.op("Gather", b.const("emb_q", codes(self.t, name, spec)), ids), to=1)
        else:  # packed 4-bit: low nibble = even column; codes are offset by 8
            packed = b.op("Gather", b.const("emb_q4", np.asarray(self.t[f"{name}.qweight"])), ids)
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
                    q, s = seven_bit(*self._codes_scales(name))  # [4H, in], [4H, 1]
                    ins += [
                        b.const(f"{tag}{layer}", _gate_order(q, H).T[None]),  # [1, in, 4H]
                        b.const(f"{tag}s{layer}", _gate_order(s, H).T.astype(np.float32)),  # [1, 4H]
                        b.const(f"{tag}z{layer}", np.zeros((1, 4 * H), np.int8)),
                    ]
                bias_name = b.const(f"B{layer}", bias)
                y, yh, yc = b.op(
                    "DynamicQuantizeLSTM",
                    *(x, ins[0], ins[3], bias_name, "", h_init, c_init, "", ins[1], ins[2], ins[4], ins[5]),
                    outputs=3,
                    ms=True,
                    hidden_size=H,
                )
            x = b.op("Squeeze", y, "ax1")  # [S, B, H]
            hs.append(yh)
            cs.append(yc)
        return x, b.op("Concat", *hs, axis=0), b.op("Concat", *cs, axis=0)

    def _weight(self, b: GraphBuilder, name: str, order: list[slice]) -> str:
        """A GRU's or RNN's weight [1, G*H, in] in ONNX's gate order: stored as it is (float) or as
        int8 codes that DequantizeLinear scales per row (ORT has no int8 GRU or RNN: the file stays
        small, the arithmetic is float; no u8 x s8 kernel, so no 7-bit codes needed)."""
        tag = name.replace(".", "_")
        if self._spec(name) is None:
            return b.const(tag, np.concatenate([self._float(name)[o] for o in order])[None])
        q, s = self._codes_scales(name)
        q, s = np.concatenate([q[o] for o in order]), np.concatenate([s[o] for o in order])[:, 0]
        zero = b.const(f"{tag}_z", np.zeros(len(s), np.int8))
        w = b.op("DequantizeLinear", b.const(f"{tag}_q", q), b.const(f"{tag}_s", s), zero, axis=0)
        return b.op("Unsqueeze", w, "ax0")

    def _gru_rnn(self, b: GraphBuilder, x: str, h0: str) -> tuple[str, str]:
        """The layers of a cell without c (GRU, RNN): the registry's ONNX operator, attributes and gate
        order (a GRU: torch's r, z, n -> ONNX's z, r, h, with linear_before_reset as torch computes)."""
        H, hs = self.cfg.hidden_dim, []
        cell = self.cfg.cell_spec
        order = [slice(k * H, (k + 1) * H) for k in cell.onnx_gate_order]
        for layer in range(self.cfg.num_layers):
            sl = [b.const(f"sl{layer}_{k}", np.array([v])) for k, v in (("s", layer), ("e", layer + 1))]
            h_init = b.op("Slice", h0, *sl, "ax0")
            W = self._weight(b, f"rnn.weight_ih_l{layer}", order)
            R = self._weight(b, f"rnn.weight_hh_l{layer}", order)
            bias = np.concatenate([self._float(f"rnn.bias_{k}_l{layer}")[o] for k in ("ih", "hh") for o in order])[None]
            B = b.const(f"B{layer}", bias)
            y, yh = b.op(cell.onnx_op, x, W, R, B, "", h_init, outputs=2, hidden_size=H, **cell.onnx_attrs)
            x = b.op("Squeeze", y, "ax1")  # [S, B, H]
            hs.append(yh)
        return x, b.op("Concat", *hs, axis=0)

    def _decoder(self, b: GraphBuilder, x: str) -> str:
        """x[M, H] -> logits[M, V]."""
        name = "encoder.weight" if self.cfg.tied else "decoder.weight"  # a tied matrix serves both
        spec = self._spec(name)
        bias = b.const("dec_b", self._float("decoder.bias"))
        V, K = self.cfg.vocab_size, self.cfg.hidden_dim
        if spec is None:
            return b.op("Add", b.op("MatMul", x, b.const("dec_wt", self._float(name).T)), bias)
        q, s = self._codes_scales(name)
        group = K // s.shape[1]
        if group == K:  # one scale per row: ORT's int8 GEMM (4-bit codes are exact int8 codes too)
            q, s = seven_bit(q, s)
            return b.op(
                "DynamicQuantizeMatMul", x, b.const("dec_qt", q.T), b.const("dec_s", s[:, 0]), "", bias, ms=True
            )
        if not _pow2(group):
            raise WordLMError(f"ONNX export: block size {group} of the decoder must be a power of two >= 16")
        if spec.bits not in (4, 8):
            raise WordLMError(f"ONNX export: {spec.bits}-bit blocks of the decoder (MatMulNBits takes 4 and 8 bits)")
        if spec.bits == 8:
            blob = (q.astype(np.int16) + 128).astype(np.uint8).reshape(V, K // group, group)
        else:
            blob = np.asarray(self.t[f"{name}.qweight"]).reshape(V, K // group, group // 2)
        return b.op(
            "MatMulNBits",
            *(x, b.const("dec_blob", blob), b.const("dec_s", s), "", "", bias),
            ms=True,
            K=K,
            N=V,
            bits=spec.bits,
            block_size=group,
            accuracy_level=4 if spec.bits == 4 else 0,  # 8-bit blocks dequantize to fp32: no int16 pairs
        )

    def build(self) -> bytes:
        """The serialized graph: ids [seq, batch], h0, c0 [L, batch, H] -> logits [seq, batch, V], hn, cn."""
        onnx = require("onnx")
        b, cfg = GraphBuilder(), self.cfg
        L, H, V = cfg.num_layers, cfg.hidden_dim, cfg.vocab_size
        b.const("ax0", np.array([0]))
        b.const("ax1", np.array([1]))
        state_shape = [L, "batch", H]
        lstm = cfg.cell_spec.has_c  # an LSTM: ORT's int8 DynamicQuantizeLSTM, c in and out
        inputs = [("ids", "INT64", ["seq", "batch"]), ("h0", "FLOAT", state_shape)]
        inputs += [("c0", "FLOAT", state_shape)] if lstm else []
        x = self._embedding(b, "ids")
        out, *state = self._lstm(b, x, "h0", "c0") if lstm else self._gru_rnn(b, x, "h0")  # out: [S, B, H]
        logits = self._decoder(b, b.op("Reshape", out, b.const("shape_mh", np.array([-1, H]))))  # [S*B, V]
        shape = b.op("Concat", b.op("Shape", "ids"), b.const("v", np.array([V])), axis=0)
        f32 = onnx.TensorProto.FLOAT
        outputs = [("logits", b.op("Reshape", logits, shape), f32, ["seq", "batch", V])]
        outputs += [(name, s, f32, state_shape) for name, s in zip(("hn", "cn"), state, strict=False)]
        return b.model(inputs, outputs)
