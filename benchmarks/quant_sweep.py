"""Accuracy and size of the quantization schemes on a trained checkpoint, one thread.

Run: .venv/bin/python benchmarks/quant_sweep.py CKPT [--max-tokens N]  (writes benchmarks/quant_sweep.md)
For each scheme (and int4 group size): bytes on disk, test loss by the tutorial protocol through
wordlm's engine, and the same through the slow reference (dequantize, then fp32 torch), so that the
weight-quantization error and the kernels' activation quantization can be told apart.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.engines.torch_fp32 import TorchEngine
from wordlm.quant import get_scheme
from wordlm.quantize import dequantize_checkpoint, quantize_checkpoint
from wordlm.tasks import evaluate
from wordlm.train.model import build_model

VARIANTS = [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128), ("int4", 256)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--max-tokens", type=int)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint)
    ids = load_split(ck.vocab, "test")[: args.max_tokens]
    fp32 = evaluate(load_engine("torch", ck), ids).loss
    fp32_bytes = sum(t.size for t in ck.tensors.values()) * 4  # as fp32 safetensors, header aside
    rows = [("fp32", "-", fp32_bytes, "torch", fp32, fp32)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, group in VARIANTS:
            q = quantize_checkpoint(ck, get_scheme(name, group_size=group))
            path = save_checkpoint(q, Path(tmp) / f"{name}-{group}")
            engine = load_engine("wordlm", load_checkpoint(path))
            fast = evaluate(engine, ids).loss
            ref = evaluate(TorchEngine(build_model(dequantize_checkpoint(q))), ids).loss
            rows.append((name, group or "row", q.size_bytes, engine.kernels, fast, ref))
    lines = [
        f"# Quantization sweep: {args.checkpoint}, test split, {ids.size:,} tokens, tutorial protocol",
        "",
        f"Produced by `.venv/bin/python benchmarks/quant_sweep.py {args.checkpoint}"
        + (f" --max-tokens {args.max_tokens}`" if args.max_tokens else "`")
        + ". int4 group sizes apply to the",
        "embedding and the decoder (the LSTM stays int8 per row); 'reference' is dequantize-then-fp32;",
        "'kernels': what computed the runtime's loss (wordlm's native kernels take one scale per row).",
        "",
        "| scheme | group | size (bytes) | size (MB) | kernels | loss, wordlm engine | delta vs fp32 | loss, reference "
        "| delta |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, group, size, kernels, fast, ref in rows:
        lines.append(
            f"| {name} | {group} | {size:,} | {size / 1e6:.2f} | {kernels} | {fast:.4f} | {fast - fp32:+.4f} | "
            f"{ref:.4f} | {ref - fp32:+.4f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_name("quant_sweep.md").write_text(text)


if __name__ == "__main__":
    main()
