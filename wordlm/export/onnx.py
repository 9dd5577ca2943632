"""ONNX export of float checkpoints, optionally with ONNX Runtime's dynamic int8 quantization.

The legacy TorchScript exporter is used on purpose: it emits the LSTM's W, R and B as initializers,
whereas the dynamo exporter may leave them as computed values, which ORT's LSTM quantizer then skips
without a word (docs/design.md, "Known pitfalls"). Both properties are checked after export, so that a change in
either exporter or quantizer fails here rather than yielding a silently unquantized model.

The exported file is self-describing: its metadata holds the vocabulary and the sizes of the recurrent
state, so onnxruntime and numpy alone can run it (see docs/onnx_numpy_example.py).
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path

from wordlm.checkpoint import FORMAT_VERSION, Checkpoint
from wordlm.checkpoint.fileio import atomic_write
from wordlm.errors import WordLMError, require

log = logging.getLogger(__name__)

OPSET = 17  # supported by every onnxruntime >= 1.17 (the [onnx] extra's floor)
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def io_names(cfg) -> tuple[list[str], list[str]]:
    """The graph's inputs and outputs: ids and the state in (h0, c0 for an LSTM), logits and the
    state out (hn, cn)."""
    n = len(cfg.state_shapes(1))
    return ["ids", *("h0", "c0")[:n]], ["logits", *("hn", "cn")[:n]]


def _torch_export(ckpt: Checkpoint) -> bytes:
    """The fp32 model as ONNX bytes, via the legacy exporter with constant folding.

    Constant folding is what turns the exporter's gate reordering (torch's i,f,g,o to ONNX's i,o,f,c)
    into plain initializers. The dummy batch is 2, not 1, so that a batch size baked into the graph
    by mistake would show up as a shape error in the tests rather than pass unnoticed.
    """
    torch = require("torch", "torch")
    from wordlm.train.model import build_model

    if ckpt.config.proj_size:
        raise WordLMError("ONNX has no LSTM with a projection: a projected LSTM cannot be exported as float")
    model = build_model(ckpt)
    ids = torch.zeros(3, 2, dtype=torch.int64)
    inputs, outputs = io_names(ckpt.config)
    axes = {name: {1: "batch"} for name in inputs[1:] + outputs[1:]}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice, and its LSTM batch-size warning, which does not
        # apply here: h0 and c0 are graph inputs.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the LSTM's shape checks, traced as constants
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size")
        torch.onnx.export(
            model,
            (ids, model.init_hidden(2)),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={"ids": {0: "seq", 1: "batch"}, "logits": {0: "seq", 1: "batch"}, **axes},
            do_constant_folding=True,
        )
    return buf.getvalue()


def check_recurrent_weights_are_initializers(model) -> None:
    """Raise if any LSTM (GRU, RNN) node takes W or R from a computed value: ORT's quantizer would skip it.

    (B may come through an Identity: constant folding shares equal bias tensors between layers, e.g.
    for a freshly initialised model, and the quantizer leaves B alone.)
    """
    initializers = {t.name for t in model.graph.initializer}
    lstms = [n for n in model.graph.node if n.op_type in RECURRENT_OPS]
    if not lstms:
        raise WordLMError("ONNX export produced no recurrent node; the exporter's output has changed")
    for node in lstms:
        computed = [name for name in node.input[1:3] if name and name not in initializers]
        if computed:
            raise WordLMError(
                f"ONNX export left LSTM weights {computed} of node {node.name!r} as computed values, "
                "not initializers; quantize_dynamic would silently skip them"
            )


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    """Drop the quantizer's root-logger chatter (per-tensor INFO lines, pre-processing advice)."""
    if "onnxruntime" not in record.pathname:
        return True
    return record.levelno >= logging.WARNING and "pre-processing before quantization" not in record.getMessage()


def _quantize_dynamic(model_bytes: bytes) -> bytes:
    """ONNX Runtime's `quantize_dynamic`, int8 per-tensor weights: what a user would run today.

    per_channel stays off: it has had failures on the LSTM's 3-D weights (docs/design.md, "Known pitfalls").
    The quantizer works on paths, so it runs in a private temp directory. It logs to the root logger:
    its INFO lines and its advice to run shape-inference pre-processing (meant for static
    quantization) are muted; its real warnings pass.
    """
    quantization = require("onnxruntime.quantization")
    onnx = require("onnx")
    root = logging.getLogger()
    root.addFilter(_quiet_quantizer)
    try:
        with tempfile.TemporaryDirectory(prefix="wordlm-onnx-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(model_bytes)
            quantization.quantize_dynamic(src, dst, weight_type=quantization.QuantType.QInt8, per_channel=False)
            quantized = onnx.load(dst)
    finally:
        root.removeFilter(_quiet_quantizer)
    left = [n.name for n in quantized.graph.node if n.op_type == "LSTM"]
    if left:
        raise WordLMError(f"quantize_dynamic left LSTM nodes {left} in fp32; refusing a half-quantized model")
    return quantized.SerializeToString()


def metadata(ckpt: Checkpoint) -> dict[str, str]:
    """What a consumer needs besides the graph: the vocabulary and the recurrent state's sizes."""
    return {
        "wordlm_format_version": str(FORMAT_VERSION),
        "vocab_size": str(len(ckpt.vocab)),
        "vocab_sha256": ckpt.vocab.sha256,
        "cell": ckpt.config.cell,
        "num_layers": str(ckpt.config.num_layers),
        "hidden_dim": str(ckpt.config.hidden_dim),
        "out_dim": str(ckpt.config.out_dim),
        "vocab": ckpt.vocab.to_text(),
    }


def onnx_bytes(ckpt: Checkpoint, quantize_dynamic: bool = False) -> bytes:
    """The serialized ONNX model of a checkpoint, checked, with wordlm metadata.

    Float checkpoints go through torch's exporter (then, with `quantize_dynamic`, ONNX Runtime's
    quantizer). Quantized checkpoints are built as wordlm's own graph (wordlm.export.onnx_graph: same inputs
    and outputs, ONNX Runtime's com.microsoft int8 / 4-bit operators).
    """
    onnx = require("onnx")
    if ckpt.scheme is not None:
        if quantize_dynamic:
            raise WordLMError("quantize_dynamic applies to float checkpoints; this one is already quantized")
        from wordlm.export.onnx_graph import QuantizedGraph

        model_bytes = QuantizedGraph(ckpt).build()
    else:
        model_bytes = _torch_export(ckpt)
        check_recurrent_weights_are_initializers(onnx.load_from_string(model_bytes))
        if quantize_dynamic and ckpt.config.cell_spec.onnx_op != "LSTM":  # the only recurrent op ORT quantizes
            raise WordLMError(
                f"ONNX Runtime's quantize_dynamic leaves {ckpt.config.cell_spec.onnx_op} operators in fp32 "
                "(onnxruntime issue 9796): only the decoder would be int8"
            )
        if quantize_dynamic:
            model_bytes = _quantize_dynamic(model_bytes)
    model = onnx.load_from_string(model_bytes)
    for key, value in metadata(ckpt).items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def export_onnx(ckpt: Checkpoint, out_path: str | Path, quantize_dynamic: bool = False) -> Path:
    """Write the checkpoint as an ONNX file (atomically; missing parent directories are created)."""
    out = atomic_write(out_path, onnx_bytes(ckpt, quantize_dynamic=quantize_dynamic))
    log.debug("wrote %s (%d bytes, quantize_dynamic=%s)", out, out.stat().st_size, quantize_dynamic)
    return out
