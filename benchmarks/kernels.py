"""Kernel choices for the wordlm engine: ONNX Runtime's decoder and LSTM ops, and wordlm's native
kernels (each instruction set this CPU runs), one thread, medians.

Run: .venv/bin/python benchmarks/kernels.py [--allow-busy]  (writes benchmarks/kernels.md; refuses on a busy
machine unless --allow-busy: wordlm/bench/machine_load.py)
Decoder-sized matmul x[M, 256] @ W[256, 33278] at M = 25 (an eval chunk) and M = 1 (a generated
token), and a 25-step, 5-layer LSTM (512 -> 256), each timed as a one-node ORT graph or one call of
the native kernel. Then the native kernels at 25 rows against this core's arithmetic ceiling
(kernels/ceiling.c: the inner instructions alone, no loads).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

K, N = 256, 33278
rng = np.random.default_rng(0)


def session(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def timeit(sess, feeds, reps=30):
    for _ in range(3):
        sess.run(None, feeds)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def decoder_variants():
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.05
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    bias = np.zeros(N, np.float32)
    v = {}
    v["fp32 MatMul+Add"] = session(
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
        [x_in],
        [y_out],
        {"w": w, "b": bias},
    )
    scale = np.abs(w).max(0) / 127
    q = np.round(w / scale).astype(np.int8)
    v["int8 DynamicQuantizeMatMul, per-column"] = session(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "q", "s", "", "b"], ["y"], domain="com.microsoft")],
        [x_in],
        [y_out],
        {"q": q, "s": scale.astype(np.float32), "b": bias},
    )
    for bits, block, acc in [(8, 256, 4), (8, 256, 0), (4, 32, 4), (4, 64, 4), (4, 128, 4), (4, 32, 0)]:
        wt = w.T  # [N, K]
        blocks = wt.reshape(N, K // block, block)
        qmax = 2 ** (bits - 1) - 1
        s = np.abs(blocks).max(-1) / qmax
        qq = np.clip(np.round(blocks / s[..., None]), -qmax - 1, qmax).astype(np.int16) + 2 ** (bits - 1)
        qq = qq.astype(np.uint8)
        if bits == 4:
            qq = (qq[..., 0::2] | (qq[..., 1::2] << 4)).astype(np.uint8)
        node = helper.make_node(
            "MatMulNBits",
            ["x", "B", "S", "", "", "b"],
            ["y"],
            domain="com.microsoft",
            K=K,
            N=N,
            bits=bits,
            block_size=block,
            accuracy_level=acc,
        )
        v[f"int{bits} MatMulNBits, block {block}, accuracy_level {acc}"] = session(
            [node], [x_in], [y_out], {"B": qq, "S": s.astype(np.float32), "b": bias}
        )
    rows = []
    for name, sess in v.items():
        t25 = timeit(sess, {"x": rng.standard_normal((25, K)).astype(np.float32)})
        t1 = timeit(sess, {"x": rng.standard_normal((1, K)).astype(np.float32)}, reps=200)
        rows.append((name, t25, t1))
    return rows


def lstm_variants(layers=5, E=512, H=256, S=25):
    rows = []
    for kind in ("fp32 LSTM", "int8 DynamicQuantizeLSTM, per-channel"):
        nodes, inits = [], {}
        prev = "x"
        for layer in range(layers):
            i = E if layer == 0 else H
            W = (rng.standard_normal((1, 4 * H, i)) * i**-0.5).astype(np.float32)
            R = (rng.standard_normal((1, 4 * H, H)) * H**-0.5).astype(np.float32)
            B = np.zeros((1, 8 * H), np.float32)
            if kind.startswith("fp32"):
                inits.update({f"W{layer}": W, f"R{layer}": R, f"B{layer}": B})
                ins = [prev, f"W{layer}", f"R{layer}", f"B{layer}"]
                nodes.append(helper.make_node("LSTM", ins, [f"y{layer}"], hidden_size=H))
            else:
                Wt, Rt = W.transpose(0, 2, 1), R.transpose(0, 2, 1)  # [1, in, 4H]
                ws, rs = np.abs(Wt).max(1) / 127, np.abs(Rt).max(1) / 127  # [1, 4H]
                inits.update(
                    {
                        f"W{layer}": np.round(Wt / ws[:, None]).astype(np.int8),
                        f"R{layer}": np.round(Rt / rs[:, None]).astype(np.int8),
                        f"B{layer}": B,
                        f"ws{layer}": ws.astype(np.float32),
                        f"rs{layer}": rs.astype(np.float32),
                        f"wz{layer}": np.zeros((1, 4 * H), np.int8),
                        f"rz{layer}": np.zeros((1, 4 * H), np.int8),
                    }
                )
                ins = [
                    prev,
                    f"W{layer}",
                    f"R{layer}",
                    f"B{layer}",
                    "",
                    "",
                    "",
                    "",
                    f"ws{layer}",
                    f"wz{layer}",
                    f"rs{layer}",
                    f"rz{layer}",
                ]
                nodes.append(
                    helper.make_node("DynamicQuantizeLSTM", ins, [f"y{layer}"], hidden_size=H, domain="com.microsoft")
                )
            nodes.append(helper.make_node("Squeeze", [f"y{layer}", "ax"], [f"z{layer}"]))
            prev = f"z{layer}"
        inits["ax"] = np.array([1], np.int64)
        sess = session(
            nodes,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, E])],
            [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)],
            inits,
        )
        t25 = timeit(sess, {"x": rng.standard_normal((S, 1, E)).astype(np.float32)})
        t1 = timeit(sess, {"x": rng.standard_normal((1, 1, E)).astype(np.float32)}, reps=200)
        rows.append((kind + f", {layers} layers", t25, t1))
    return rows


def loss_head_variants(M=25):
    """The loss over [25, V] logits in the graph: ReduceLogSumExp vs LogSoftmax + GatherElements."""
    x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, N])
    t_in = helper.make_tensor_value_info("t", TensorProto.INT64, [M, 1])
    y_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    lse = session(
        [
            helper.make_node("ReduceLogSumExp", ["x", "ax"], ["l"], keepdims=1),
            helper.make_node("GatherElements", ["x", "t"], ["g"], axis=1),
            helper.make_node("Sub", ["l", "g"], ["y"]),
        ],
        [x_in, t_in],
        [y_out],
        {"ax": np.array([1])},
    )
    lsm = session(
        [
            helper.make_node("LogSoftmax", ["x"], ["l"], axis=-1),
            helper.make_node("GatherElements", ["l", "t"], ["g"], axis=1),
            helper.make_node("Neg", ["g"], ["y"]),
        ],
        [x_in, t_in],
        [y_out],
        {},
    )
    feeds = {"x": rng.standard_normal((M, N)).astype(np.float32), "t": rng.integers(0, N, (M, 1))}
    return [
        (f"loss head: {name}, [25, {N}]", timeit(sess, feeds), float("nan"))
        for name, sess in (("ReduceLogSumExp - GatherElements", lse), ("LogSoftmax + GatherElements", lsm))
    ]


def native_variants(layers=5, E=512, H=256):
    """wordlm's native kernels: the fused decoder + loss (against ORT's decoder, LogSoftmax and gather in
    one graph) and the int8 LSTM stack, at every instruction set this CPU runs."""
    from wordlm import native

    q = rng.integers(-127, 128, (N, K), dtype=np.int8)
    scales = np.full(N, 0.002, np.float32)
    bias = np.zeros(N, np.float32)
    dec = native.pack_linear(q, scales, bias)
    q4 = rng.integers(-8, 8, (N, K), dtype=np.int8)  # int4 codes: as int8 bytes, and two a byte
    int4 = {
        "int4 codes": native.pack_linear(q4, scales, bias),
        "int4 nibbles": native.pack_linear(q4, scales, bias, nibbles=True),
    }

    def lstm_layer(i):
        return native.pack_linear(
            rng.integers(-127, 128, (4 * H, i), dtype=np.int8),
            np.full(4 * H, 0.01, np.float32),
            np.zeros(4 * H, np.float32),
        )

    stack = native.PackedRecurrent([(lstm_layer(E if layer == 0 else H), lstm_layer(H)) for layer in range(layers)])
    state = np.zeros((layers, 1, H), np.float32)
    ort_dec = session(
        [
            helper.make_node("DynamicQuantizeMatMul", ["x", "q", "s", "", "b"], ["y"], domain="com.microsoft"),
            helper.make_node("LogSoftmax", ["y"], ["l"], axis=-1),
            helper.make_node("GatherElements", ["l", "t"], ["g"], axis=1),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K]),
            helper.make_tensor_value_info("t", TensorProto.INT64, ["M", 1]),
        ],
        [helper.make_tensor_value_info("g", TensorProto.FLOAT, None)],
        {"q": np.ascontiguousarray(q.T), "s": scales, "b": bias},
    )

    def clock(fn, reps):
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    x = {m: np.tanh(rng.standard_normal((m, K))).astype(np.float32) for m in (25, 1)}
    t = {m: rng.integers(0, N, m) for m in (25, 1)}
    rows = [
        (
            "decoder + loss: int8 DynamicQuantizeMatMul + LogSoftmax + GatherElements (ORT)",
            *(
                clock(lambda m=m: ort_dec.run(None, {"x": x[m], "t": t[m][:, None]}), r)
                for m, r in ((25, 30), (1, 200))
            ),
        )
    ]
    for isa in native.ISAS[1 : native.ISAS.index(native.best_isa()) + 1]:
        rows.append(
            (
                f"decoder + loss: wordlm native, fused, {isa}",
                *(
                    clock(lambda m=m, isa=isa: native.decoder_nll(x[m], dec, t[m], isa=isa), r)
                    for m, r in ((25, 30), (1, 200))
                ),
            )
        )
    for isa in native.ISAS[1 : native.ISAS.index(native.best_isa()) + 1]:
        for name, d in int4.items():
            rows.append(
                (
                    f"decoder + loss: wordlm native, fused, {isa}, {name}",
                    *(
                        clock(lambda m=m, isa=isa, d=d: native.decoder_nll(x[m], d, t[m], isa=isa), r)
                        for m, r in ((25, 30), (1, 200))
                    ),
                )
            )
    for isa in native.ISAS[1 : native.ISAS.index(native.best_isa()) + 1]:
        xs = {s: rng.standard_normal((s, 1, E)).astype(np.float32) for s in (25, 1)}
        rows.append(
            (
                f"int8 LSTM: wordlm native, {isa}, {layers} layers",
                *(
                    clock(lambda s=s, xs=xs, isa=isa: native.recurrent(xs[s], stack, state, state, isa=isa), r)
                    for s, r in ((25, 30), (1, 200))
                ),
            )
        )
    return rows


def sampling_variants():
    """Drawing one word from p[V]: np.cumsum + searchsorted vs wordlm's two-level inverse CDF."""
    from wordlm.runtime.sampling import inverse_cdf

    p = rng.random(N).astype(np.float32)
    p /= p.sum()
    rows = []
    for name, fn in (
        ("np.cumsum + searchsorted", lambda: np.searchsorted(np.cumsum(p), 0.5)),
        ("two-level inverse CDF (wordlm)", lambda: inverse_cdf(p, 0.5)),
    ):
        ts = []
        for _ in range(300):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        rows.append((f"sampling: {name}, V = {N}", float("nan"), statistics.median(ts) * 1e3))
    return rows


def ceiling() -> dict[str, float]:
    """kernels/ceiling.c built and run: the clock (GHz) and each instruction set's peak G multiply-adds/s."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "ceiling"
        subprocess.run(
            ["cc", "-O2", str(Path(__file__).with_name("kernels") / "ceiling.c"), "-o", str(exe)], check=True
        )
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}


def against_ceiling(rows, peak: dict[str, float], layers=5, E=512, H=256) -> list[str]:
    """The native int8 kernels' multiply-adds per second at 25 rows, as a share of their ceiling."""
    macs = {"decoder": 25 * N * K, "LSTM": 25 * 4 * H * (E + H + (layers - 1) * 2 * H)}
    lines = [
        f"## Against the ceiling (clock {peak['clock']:.2f} GHz by a chain of dependent adds)",
        "",
        "| kernel, 25 rows / steps | G multiply-adds/s | ceiling of its instructions | share |",
        "|---|---|---|---|",
    ]
    for name, t25, _ in rows:
        parts = name.split(", ")
        isa = next((p for p in parts if p in peak), None)  # int4 rows (a last part) have ceilings of their own
        part = "decoder" if name.startswith("decoder + loss: wordlm") else "LSTM" if "LSTM: wordlm" in name else None
        if part and isa and parts[-1] in (isa, f"{layers} layers"):
            rate = macs[part] / (t25 / 1e3) / 1e9
            lines.append(f"| {name} | {rate:.1f} | {peak[isa]:.1f} | {rate / peak[isa]:.0%} |")
    if "vnni-micro-loop" in peak:  # the decoder's VNNI micro-kernel loop alone, from L1 (ceiling.c)
        loop, vnni = peak["vnni-micro-loop"], peak["avx512-vnni"]
        name = "the VNNI micro-kernel's loop alone (5 rows x 2 panels, L1, inline assembly)"
        lines.append(f"| {name} | {loop:.1f} | {vnni:.1f} | {loop / vnni:.0%} |")
    return lines + [""]


def main() -> None:
    from wordlm import native
    from wordlm.bench.machine_load import BusyMachine, MachineLoad, add_argument
    from wordlm.bench.run import cpu_flags

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_argument(ap)
    args = ap.parse_args()
    try:
        load = MachineLoad.start(args.allow_busy)
        rows = decoder_variants() + lstm_variants() + loss_head_variants() + native_variants() + sampling_variants()
        peak = ceiling()
        load.stop()
    except BusyMachine as e:
        sys.exit(f"benchmarks/kernels.py: {e}")
    lines = [
        f"# Kernel timings (onnxruntime {ort.__version__}, one thread, median ms)",
        "",
        f"Produced by `.venv/bin/python benchmarks/kernels.py{' --allow-busy' if args.allow_busy else ''}`. The best "
        f"instruction set of this CPU for wordlm's native kernels: {native.best_isa()} (ONNX Runtime picks its own "
        f"kernels at run time too). CPU flags: {', '.join(cpu_flags())}.",
        "",
        load.header(),
        "",
        "| kernel | 25 rows / steps | 1 row / step |",
        "|---|---|---|",
    ]

    def ms(x):
        return "-" if x != x else f"{x:.3f}"  # nan: not measured for this shape

    lines += [f"| {n} | {ms(a)} | {ms(b)} |" for n, a, b in rows]
    lines += ["", *against_ceiling(rows, peak)]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_name("kernels.md").write_text(text)


if __name__ == "__main__":
    main()
