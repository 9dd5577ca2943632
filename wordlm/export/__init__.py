"""How a model leaves wordlm: ONNX files (`onnx`: float graphs through torch's exporter, optionally
quantized by ONNX Runtime; `onnx_graph`: wordlm's own quantized graphs, built without torch).

May import: wordlm.checkpoint, wordlm.quant, wordlm.train.model (torch, for float export), onnx and
onnxruntime (lazily: only the export that needs them).
"""

from wordlm.export.onnx import check_recurrent_weights_are_initializers, export_onnx, onnx_bytes

__all__ = ["check_recurrent_weights_are_initializers", "export_onnx", "onnx_bytes"]
