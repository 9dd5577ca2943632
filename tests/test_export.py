"""ONNX export and the ONNX Runtime engines: parity with torch, real int8, a torch-free consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.engines import load_engine
from wordlm.engines.ort import OrtEngine
from wordlm.errors import WordLMError
from wordlm.export import check_recurrent_weights_are_initializers, export_onnx, onnx_bytes
from wordlm.export.onnx_graph import seven_bit
from wordlm.quant import QSpec, Scheme, get_scheme
from wordlm.quant.primitives import snr_db
from wordlm.quantize import dequantize_checkpoint, quantize_checkpoint

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "onnx_numpy_example.py"
# Run the example with torch unimportable: the .onnx file must be usable with onnxruntime + numpy alone.
NO_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


# Every path of wordlm's quantized graph: int8 rows everywhere (DynamicQuantizeLSTM and -MatMul, 7-bit),
# 4-bit groups (MatMulNBits, 4-bit embedding), 4-bit rows (DynamicQuantizeMatMul of 4-bit codes), and
# 8-bit groups with a float LSTM (MatMulNBits 8-bit, ONNX's LSTM).
QUANT_SCHEMES = {
    "int8": get_scheme("int8"),
    "int4-g16": get_scheme("int4", group_size=16),
    "int4-row": get_scheme("int4"),  # groups of 256 > the trained model's 32 inputs: one scale per row
    "int8-g16-float-lstm": Scheme("int8", 1, encoder=QSpec(8, 16), rnn=QSpec(None), decoder=QSpec(8, 16)),
    # every width of a --budget plan: 3-bit groups in the embedding, 5-, 6- and 2-bit rows in GEMMs
    "mixed": get_scheme(
        "mixed",
        plan={
            "encoder.weight": QSpec(3, 16),
            "decoder.weight": QSpec(5),
            "rnn.weight_ih_l0": QSpec(6),
            "rnn.weight_hh_l1": QSpec(2),
        },
    ),
}
# ORT's u8 x s8 integer ops, whose int8 weights must be 7-bit (input index of the weights in each)
INT8_WEIGHT_INPUTS = {"DynamicQuantizeLSTM": (1, 2), "DynamicQuantizeMatMul": (1,)}


def _op_types(model_bytes: bytes) -> Counter:
    return Counter(n.op_type for n in onnx.load_from_string(model_bytes).graph.node)


def _ids(vocab_size: int, shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, shape, dtype=np.int64)


def test_onnxruntime_logits_match_torch_across_chunks(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    ref, ort = load_engine("torch", ckpt), load_engine("onnxruntime", ckpt)
    assert ort.name == "onnxruntime" and ort.vocab_size == ckpt.config.vocab_size
    ids = _ids(ckpt.config.vocab_size, (9, 3))  # batch 3, seq 5 then 4: not the dummy's
    ref_state, ort_state = ref.init_state(3), ort.init_state(3)
    for chunk in (ids[:5], ids[5:]):
        expected, ref_state = ref.forward(chunk, ref_state)
        got, ort_state = ort.forward(chunk, ort_state)
        assert got.shape == expected.shape == (len(chunk), 3, ckpt.config.vocab_size) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    for ref_t, ort_t in zip(ref_state, ort_state, strict=True):
        assert ort_t.shape == ref_t.shape == (ckpt.config.num_layers, 3, ckpt.config.hidden_dim)
        np.testing.assert_allclose(ort_t, ref_t, atol=1e-4, rtol=1e-4)


def test_quantize_dynamic_really_quantizes_the_lstm(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    fp32, int8 = _op_types(onnx_bytes(ckpt)), _op_types(onnx_bytes(ckpt, quantize_dynamic=True))
    assert fp32["LSTM"] == ckpt.config.num_layers and fp32["MatMul"] == 1
    assert int8["DynamicQuantizeLSTM"] == ckpt.config.num_layers and int8["LSTM"] == 0
    assert int8["MatMulInteger"] + int8["DynamicQuantizeMatMul"] == 1 and int8["MatMul"] == 0


def test_eval_engines_agree_with_torch(tiny_ckpt, corpus_dir):
    def loss_of(engine: str) -> dict:
        r = run_cli(
            "eval",
            str(tiny_ckpt),
            "--engine",
            engine,
            "--data",
            str(corpus_dir),
            "--max-tokens",
            "300",
            "--json",
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    ref, fp32, int8 = loss_of("torch"), loss_of("onnxruntime"), loss_of("onnxruntime-int8")
    assert fp32["engine"] == "onnxruntime" and int8["engine"] == "onnxruntime-int8"
    assert fp32["tokens"] == int8["tokens"] == ref["tokens"] == 299
    assert fp32["loss"] == pytest.approx(ref["loss"], abs=1e-4)
    assert int8["loss"] == pytest.approx(ref["loss"], abs=0.1)
    assert int8["loss"] != fp32["loss"] and int8["size_bytes"] < fp32["size_bytes"]


def test_cli_export_then_run_without_torch(tiny_ckpt, tmp_path):
    out = tmp_path / "new" / "dir" / "tiny.onnx"
    r = run_cli("export", str(tiny_ckpt), "--format", "onnx", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and f"{out.stat().st_size:,} bytes" in r.stdout
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind

    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    vocab = load_checkpoint(tiny_ckpt).vocab
    assert meta["vocab"].split("\n")[:-1] == vocab.itos and meta["vocab_sha256"] == vocab.sha256

    text = "the cat sat on the mat . the old man looked at"
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(EXAMPLE), str(out), text],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("loss ") and "over 11 predicted words" in r.stdout and "next:" in r.stdout


def test_example_really_runs_without_torch(tmp_path):
    """The guard itself: under NO_TORCH, a script that imports torch must fail."""
    script = tmp_path / "uses_torch.py"
    script.write_text("import torch\n")
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(script)], capture_output=True, text=True)
    assert r.returncode != 0 and "torch" in r.stderr


def test_export_creates_missing_directories(tiny_ckpt, tmp_path):
    out = export_onnx(load_checkpoint(tiny_ckpt), tmp_path / "a" / "b" / "m.onnx", quantize_dynamic=True)
    assert out.is_file() and _op_types(out.read_bytes())["DynamicQuantizeLSTM"] > 0


def test_export_unknown_format_is_one_line_error(tiny_ckpt, tmp_path):
    r = run_cli("export", str(tiny_ckpt), "--format", "tflite", "--out", str(tmp_path / "m.tflite"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("wordlm")]
    assert len(lines) == 1 and "tflite" in lines[0], r.stderr
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_checkpoints_export_and_run_without_torch(tiny_ckpt, tmp_path, scheme):
    """A quantized checkpoint exports as wordlm's own graph; the torch-free example runs it."""
    q = quantize_checkpoint(load_checkpoint(tiny_ckpt), get_scheme(scheme, group_size=16 if scheme == "int4" else None))
    save_checkpoint(q, tmp_path / "q")
    out = tmp_path / f"{scheme}.onnx"
    r = run_cli("export", str(tmp_path / "q"), "--format", "onnx", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == onnx_bytes(load_checkpoint(tmp_path / "q"))  # the file is the graph of the saved codes
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    exported = OrtEngine(out.read_bytes(), name="exported")
    assert exported.vocab_size == q.config.vocab_size
    assert exported.state_sizes == [(q.config.num_layers, q.config.hidden_dim)] * 2
    logits, (h, c) = exported.forward(_ids(q.config.vocab_size, (6, 2)), exported.init_state(2))
    assert logits.shape == (6, 2, q.config.vocab_size) and np.isfinite(logits).all()
    assert h.shape == c.shape == (q.config.num_layers, 2, q.config.hidden_dim)
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(EXAMPLE), str(out), "the cat sat"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(WordLMError, match="already quantized"):
        onnx_bytes(q, quantize_dynamic=True)


@pytest.mark.parametrize("name", list(QUANT_SCHEMES))
def test_quantized_graph_matches_the_dequantized_reference(trained_ckpt, corpus, name):
    """The exported graph of a quantized checkpoint computes what its dequantized weights do in fp32, up
    to activation quantization (and 7-bit weights in ORT's int8 ops): SNR > 30 dB on the logits, on
    this CPU whatever it is (full-range weights give ~22 dB on AVX2 without VNNI, where ORT's u8s8
    kernels saturate), with the state carried across chunks at batch 2."""
    q = quantize_checkpoint(load_checkpoint(trained_ckpt), QUANT_SCHEMES[name])
    ref, exported = load_engine("torch", dequantize_checkpoint(q)), OrtEngine(onnx_bytes(q), name="exported")
    ids = np.asarray(corpus.test[:400], np.int64).reshape(2, -1).T  # [200, 2]: two streams of real text
    ref_state, got_state = ref.init_state(2), exported.init_state(2)
    for chunk in (ids[:100], ids[100:]):
        expected, ref_state = ref.forward(chunk, ref_state)
        got, got_state = exported.forward(chunk, got_state)
        assert got.shape == expected.shape == (100, 2, q.config.vocab_size)
        assert snr_db(expected, got) > 30, snr_db(expected, got)
    for a, b in zip(ref_state, got_state, strict=True):  # h and c
        np.testing.assert_allclose(b, a, atol=0.05)


def test_blocks_of_widths_onnxruntime_lacks_are_refused(trained_ckpt):
    q = quantize_checkpoint(load_checkpoint(trained_ckpt), get_scheme("mixed", plan={"decoder.weight": QSpec(5, 16)}))
    with pytest.raises(WordLMError, match="5-bit blocks of the decoder"):
        onnx_bytes(q)


@pytest.mark.parametrize("name", ["int8", "int4-row"])
def test_int8_weights_of_ort_integer_ops_are_seven_bit(trained_ckpt, name):
    """ORT's u8 x s8 kernels add pairs of products in int16 on AVX2 without VNNI: weights that feed
    DynamicQuantizeLSTM / DynamicQuantizeMatMul lie in [-64, 63] (ORT's reduce_range), on every CPU."""
    q = quantize_checkpoint(load_checkpoint(trained_ckpt), QUANT_SCHEMES[name])
    graph = onnx.load_from_string(onnx_bytes(q)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    weights = [
        inits[node.input[i]]
        for node in graph.node
        if node.op_type in INT8_WEIGHT_INPUTS
        for i in INT8_WEIGHT_INPUTS[node.op_type]
    ]
    assert len(weights) == 2 * q.config.num_layers + 1  # W and R of each layer, and the decoder
    for w in weights:
        assert w.dtype == np.int8 and w.min() >= -64 and w.max() <= 63, (w.min(), w.max())
    if name == "int8":  # the whole 7-bit range is in use: the codes were halved, not clipped to zero
        assert min(int(w.min()) for w in weights) == -64 and max(int(w.max()) for w in weights) == 63

    # the halving itself: codes in [-64, 63] at twice the scale, within one 8-bit step of the original
    codes = np.arange(-128, 128, dtype=np.int8)[:, None]
    half, scales = seven_bit(codes, np.full((256, 1), 0.01, np.float32))
    assert half.dtype == np.int8 and half.min() == -64 and half.max() == 63
    assert np.allclose(scales, 0.02) and np.abs(half.astype(np.int32) * 2 - codes).max() == 1


def test_computed_lstm_weights_fail_loudly(tiny_ckpt):
    model = onnx.load_from_string(onnx_bytes(load_checkpoint(tiny_ckpt)))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    # What the dynamo exporter may produce: W reaches the LSTM through a node, not as an initializer.
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [lstm.input[1]], ["computed_W"]))
    lstm.input[1] = "computed_W"
    with pytest.raises(WordLMError, match="computed values"):
        check_recurrent_weights_are_initializers(model)


def test_missing_onnxruntime_is_a_clear_error(tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(WordLMError, match=r"onnxruntime is not installed; pip install 'wordlm\[onnx\]'"):
        load_engine("onnxruntime", load_checkpoint(tiny_ckpt))


@pytest.mark.parametrize("cell", ["gru", "rnn_relu", "lstm-tied"])
def test_every_cell_exports_and_runs_in_onnxruntime(corpus, cell):
    """ONNX's GRU and RNN operators (and a tied LSTM) compute what torch does; ORT's quantizer, which
    leaves GRU and RNN in fp32, is refused for them rather than called int8."""
    from wordlm.checkpoint import Checkpoint
    from wordlm.config import ModelConfig
    from wordlm.train.model import RecurrentLM, checkpoint_tensors

    torch.manual_seed(0)
    tied = cell.endswith("-tied")
    cfg = ModelConfig(len(corpus.vocab), emb_dim=16, hidden_dim=16, num_layers=2, cell=cell.split("-")[0], tied=tied)
    ck = Checkpoint(cfg, corpus.vocab, checkpoint_tensors(RecurrentLM(cfg)))
    ort_engine = OrtEngine(onnx_bytes(ck), name="onnxruntime")
    ref = load_engine("torch", ck)
    ids = corpus.test[:30].reshape(10, 3)
    (lo, so), (lr, sr) = (e.forward(ids, e.init_state(3)) for e in (ort_engine, ref))
    assert np.allclose(lo, lr, atol=1e-4) and len(so) == len(sr) == (2 if cfg.cell == "lstm" else 1)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(so, sr, strict=True))
    if cfg.cell != "lstm":
        with pytest.raises(WordLMError, match="leaves .* operators in fp32"):
            onnx_bytes(ck, quantize_dynamic=True)
    for scheme in (get_scheme("int8"), get_scheme("int4", group_size=16)):  # wordlm's own graph, every cell
        q = quantize_checkpoint(ck, scheme)
        exported, reference = OrtEngine(onnx_bytes(q), name="exported"), load_engine("torch", dequantize_checkpoint(q))
        (lo, so), (lr, sr) = (e.forward(ids, e.init_state(3)) for e in (exported, reference))
        assert snr_db(lr, lo) > 30 and all(np.allclose(a, b, atol=0.05) for a, b in zip(so, sr, strict=True))
