"""ONNX export and the ONNX Runtime engines: parity with torch, real int8, a torch-free consumer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from conftest import run_cli

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.engines import load_engine
from wordlm.engines.ort import OrtEngine
from wordlm.errors import WordLMError
from wordlm.export import check_lstm_weights_are_initializers, export_onnx, onnx_bytes

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "onnx_numpy_example.py"
# Run the example with torch unimportable: the .onnx file must be usable with onnxruntime + numpy alone.
NO_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def _op_types(model_bytes: bytes) -> Counter:
    return Counter(n.op_type for n in onnx.load_from_string(model_bytes).graph.node)


def test_onnxruntime_logits_match_torch_across_chunks(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)
    ref, ort = load_engine("torch", ckpt), load_engine("onnxruntime", ckpt)
    assert ort.name == "onnxruntime" and ort.vocab_size == ckpt.config.vocab_size
    torch.manual_seed(1)
    ids = torch.randint(0, ckpt.config.vocab_size, (9, 3))  # batch 3, seq 5 then 4: not the dummy's
    ref_state, ort_state = ref.init_state(3), ort.init_state(3)
    for chunk in (ids[:5], ids[5:]):
        expected, ref_state = ref.forward(chunk, ref_state)
        got, ort_state = ort.forward(chunk, ort_state)
        assert got.shape == expected.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for ref_t, ort_t in zip(ref_state, ort_state, strict=True):
        torch.testing.assert_close(torch.from_numpy(ort_t), ref_t, atol=1e-4, rtol=1e-4)


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
    from wordlm.quant import get_scheme, quantize_checkpoint

    q = quantize_checkpoint(load_checkpoint(tiny_ckpt), get_scheme(scheme, group_size=16 if scheme == "int4" else None))
    save_checkpoint(q, tmp_path / "q")
    out = tmp_path / f"{scheme}.onnx"
    r = run_cli("export", str(tmp_path / "q"), "--format", "onnx", "--out", str(out))
    assert r.returncode == 0, r.stderr
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    ids = torch.randint(0, q.config.vocab_size, (6, 2))
    exported = OrtEngine(out.read_bytes(), name="exported")
    engine = load_engine("wordlm", load_checkpoint(tmp_path / "q"))
    a, _ = exported.forward(ids, exported.init_state(2))
    b, _ = engine.forward(ids, engine.init_state(2))
    assert torch.allclose(a, b, atol=1e-5)
    r = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(EXAMPLE), str(out), "the cat sat"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    with pytest.raises(WordLMError, match="already quantized"):
        onnx_bytes(q, quantize_dynamic=True)


def test_computed_lstm_weights_fail_loudly(tiny_ckpt):
    model = onnx.load_from_string(onnx_bytes(load_checkpoint(tiny_ckpt)))
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    # What the dynamo exporter may produce: W reaches the LSTM through a node, not as an initializer.
    model.graph.node.insert(0, onnx.helper.make_node("Identity", [lstm.input[1]], ["computed_W"]))
    lstm.input[1] = "computed_W"
    with pytest.raises(WordLMError, match="computed values"):
        check_lstm_weights_are_initializers(model)


def test_missing_onnxruntime_is_a_clear_error(tiny_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(WordLMError, match=r"onnxruntime is not installed; pip install 'wordlm\[onnx\]'"):
        load_engine("onnxruntime", load_checkpoint(tiny_ckpt))
