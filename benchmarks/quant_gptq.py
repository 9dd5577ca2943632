"""GPTQ against round to nearest on a trained checkpoint (issue 14): the calibration sweep, and where
each quantized model's loss goes (the weights, or the kernels' 7-bit activations).

Run:
  .venv/bin/python benchmarks/quant_gptq.py sweep CKPT --calib 5000,20000,100000 --max-tokens 30000
      int4 GPTQ calibrated on N training tokens, loss on a VALID prefix (the default is chosen there,
      not on the test split)
  .venv/bin/python benchmarks/quant_gptq.py split CKPT Q1 Q2 ... --max-tokens 50000
      for each quantized checkpoint Qi, on a test prefix, side by side with the float model (torch):
      the loss through wordlm's engine and through the dequantized weights in fp32 (the weights'
      share), next-word KL(fp32 || engine) and how often both pick the same top word
Prints markdown rows; benchmarks/quant_gptq.md records them with the commands.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from wordlm.checkpoint import Checkpoint, load_checkpoint
from wordlm.data import batchify, bptt_batches, load_split
from wordlm.engines import load_engine
from wordlm.engines.torch_fp32 import TorchEngine
from wordlm.quant import get_scheme
from wordlm.quantize import dequantize_checkpoint
from wordlm.quantize.calibrate import calibration_ids, embedding_hessian, gptq_rounder, input_hessians
from wordlm.tasks import evaluate
from wordlm.train.model import build_model


def sweep(args) -> None:
    ck = load_checkpoint(args.checkpoint)
    ids = load_split(ck.vocab, "valid")[: args.max_tokens]
    fp32 = evaluate(load_engine("torch", ck), ids).loss
    print(f"| calib tokens | valid loss ({ids.size:,} tokens) | delta vs fp32 {fp32:.4f} |\n|---|---|---|")
    scheme = get_scheme("int4")
    embedding = gptq_rounder({"encoder.weight": embedding_hessian(ck)})(
        "encoder.weight", ck.tensors["encoder.weight"], scheme.encoder
    )
    for n in args.calib:  # the embedding's H does not depend on the sample: rounded once
        rounder = gptq_rounder(input_hessians(ck, calibration_ids(ck, n)))
        both = lambda name, w, spec, r=rounder: embedding if name == "encoder.weight" else r(name, w, spec)  # noqa: E731
        q = Checkpoint(ck.config, ck.vocab, scheme.quantize(ck.tensors, both), scheme=scheme)
        loss = evaluate(load_engine("wordlm", q), ids).loss
        print(f"| {n:,} | {loss:.4f} | {loss - fp32:+.4f} |", flush=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def split(args) -> None:
    ck = load_checkpoint(args.checkpoint)
    ids = load_split(ck.vocab, "test")[: args.max_tokens]
    source = batchify(ids, 1)
    fp32 = TorchEngine(build_model(ck))
    models = {}
    for path in args.quantized:
        q = load_checkpoint(path)
        models[path] = (load_engine("wordlm", q), TorchEngine(build_model(dequantize_checkpoint(q))))
    states = {"fp32": fp32.init_state(1)} | {
        (p, k): e.init_state(1) for p, pair in models.items() for k, e in zip(("engine", "ref"), pair, strict=True)
    }
    sums = dict.fromkeys(states, 0.0) | {(p, "kl"): 0.0 for p in models} | {(p, "top1"): 0 for p in models}
    count = 0
    for chunk, targets in bptt_batches(source, 25):
        z, states["fp32"] = fp32.forward(chunk, states["fp32"])
        base = log_softmax(z)
        t = targets[..., None]
        sums["fp32"] -= np.take_along_axis(base, t, -1).sum()
        for p, pair in models.items():
            for k, engine in zip(("engine", "ref"), pair, strict=True):
                zq, states[(p, k)] = engine.forward(chunk, states[(p, k)])
                lq = log_softmax(zq)
                sums[(p, k)] -= np.take_along_axis(lq, t, -1).sum()
                if k == "engine":
                    sums[(p, "kl")] += (np.exp(base) * (base - lq)).sum()
                    sums[(p, "top1")] += int((base.argmax(-1) == lq.argmax(-1)).sum())
        count += targets.size
    f = sums["fp32"] / count
    print(f"fp32 loss {f:.4f} on the first {ids.size:,} test tokens")
    print("| checkpoint | engine loss | delta | reference loss (weights only) | delta | KL | top-1 same |")
    print("|---|---|---|---|---|---|---|")
    for p in models:
        e, r = sums[(p, "engine")] / count, sums[(p, "ref")] / count
        kl, top1 = sums[(p, "kl")] / count, sums[(p, "top1")] / count
        print(f"| {p} | {e:.4f} | {e - f:+.4f} | {r:.4f} | {r - f:+.4f} | {kl:.4f} | {top1:.2%} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(required=True)
    sp = sub.add_parser("sweep")
    sp.add_argument("checkpoint")
    sp.add_argument("--calib", type=lambda s: [int(x) for x in s.split(",")], required=True)
    sp.add_argument("--max-tokens", type=int)
    sp.set_defaults(func=sweep)
    sp = sub.add_parser("split")
    sp.add_argument("checkpoint")
    sp.add_argument("quantized", nargs="+")
    sp.add_argument("--max-tokens", type=int)
    sp.set_defaults(func=split)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    args.func(args)


if __name__ == "__main__":
    main()
