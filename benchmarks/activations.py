"""Where the native kernels' activation quantization costs loss, and what fine activations buy (issue 14).

Run:
  .venv/bin/python benchmarks/activations.py simulate CKPT --scheme int8 --max-tokens 20000
      the model in torch, step by step, with the scheme's dequantized weights and each GEMM input
      fake-quantized per row (7-bit asymmetric as the kernels; 8-bit symmetric; 8-bit asymmetric), at
      every GEMM or at one place only (the embedding into layer 0, the upper layers' inputs, the
      recurrent h, the decoder's input): loss on a test prefix, one stream, bptt 25
  .venv/bin/python benchmarks/activations.py engine CKPT --scheme int8 --max-tokens 20000 --repeats 5
      wordlm's engine with --fine-activations none, inputs and all: loss, and seconds per pass
      (interleaved, median of the repeats); refused on a busy machine unless --allow-busy
Prints markdown rows; benchmarks/activations.md records them with the machine.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import numpy as np
import torch

from wordlm.bench.machine_load import BusyMachine, MachineLoad, add_argument
from wordlm.checkpoint import load_checkpoint
from wordlm.data import load_split
from wordlm.engines import load_engine
from wordlm.quant import FINE_ACTIVATIONS, get_scheme
from wordlm.quantize import dequantize_checkpoint, quantize_checkpoint
from wordlm.tasks import evaluate

PLACES = ("all", "embedding", "upper inputs", "recurrent h", "decoder")


def fake_quantize(x: torch.Tensor, mode: str) -> torch.Tensor:
    """x [M, K] through per-row quantization `mode` and back: what the GEMM sees of it."""
    if mode == "float":
        return x
    if mode == "sym8":  # [-127, 127] * max|x| / 127
        s = x.abs().amax(1, keepdim=True).clamp_min(1e-30) / 127
        return torch.round(x / s) * s
    top = {"asym7": 127, "asym8": 255}[mode]  # the kernels' codes: [0, top] over [min(x, 0), max(x, 0)]
    lo, hi = x.amin(1, keepdim=True).clamp_max(0), x.amax(1, keepdim=True).clamp_min(0)
    s = ((hi - lo) / top).clamp_min(1e-30)
    zp = torch.round(-lo / s).clamp(0, top)
    return (torch.clamp(torch.round(x / s) + zp, 0, top) - zp) * s


def simulated_loss(tensors: dict, layers: int, ids: torch.Tensor, mode: str, place: str) -> float:
    """Test loss of an LSTM LM whose GEMM inputs at `place` go through `mode`, one stream, bptt 25."""
    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tensors.items()}

    def q(x: torch.Tensor, here: str) -> torch.Tensor:
        return fake_quantize(x, mode) if place in ("all", here) else x

    hidden = t["rnn.weight_hh_l0"].shape[1]
    h = [torch.zeros(1, hidden) for _ in range(layers)]
    c = [torch.zeros(1, hidden) for _ in range(layers)]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, 25):
            x = t["encoder.weight"][ids[start : start + 25]]
            targets = ids[start + 1 : start + 26]
            x = x[: targets.numel()]
            for layer in range(layers):
                xp = q(x, "upper inputs" if layer else "embedding") @ t[f"rnn.weight_ih_l{layer}"].T
                xp = xp + t[f"rnn.bias_ih_l{layer}"]
                ys = []
                for step in range(x.shape[0]):
                    g = xp[step : step + 1] + q(h[layer], "recurrent h") @ t[f"rnn.weight_hh_l{layer}"].T
                    i, f, gg, o = (g + t[f"rnn.bias_hh_l{layer}"]).chunk(4, 1)
                    c[layer] = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(gg)
                    h[layer] = torch.sigmoid(o) * torch.tanh(c[layer])
                    ys.append(h[layer])
                x = torch.cat(ys)
            z = q(x, "decoder") @ t["decoder.weight"].T + t["decoder.bias"]
            total += torch.nn.functional.cross_entropy(z.double(), targets, reduction="sum").item()
            count += targets.numel()
    return total / count


def simulate(args) -> None:
    ck = load_checkpoint(args.checkpoint)
    if ck.config.cell != "lstm" or ck.config.proj_size or ck.config.tied:
        raise SystemExit("simulate: a plain untied LSTM, as the shipped model")
    ids = torch.from_numpy(load_split(ck.vocab, "test")[: args.max_tokens + 1].astype(np.int64))
    fp32 = simulated_loss(ck.tensors, ck.config.num_layers, ids, "float", "all")
    weights = dequantize_checkpoint(quantize_checkpoint(ck, get_scheme(args.scheme))).tensors
    base = simulated_loss(weights, ck.config.num_layers, ids, "float", "all")
    print(f"fp32 {fp32:.5f}; {args.scheme} weights, float activations {base:.5f} ({base - fp32:+.5f})")
    print("| activations | where | loss | vs float activations |\n|---|---|---|---|")
    for mode in args.modes:
        for place in args.places:
            loss = simulated_loss(weights, ck.config.num_layers, ids, mode, place)
            print(f"| {mode} | {place} | {loss:.5f} | {loss - base:+.5f} |", flush=True)


def engine(args) -> None:
    ck = load_checkpoint(args.checkpoint)
    ids = load_split(ck.vocab, "test")[: args.max_tokens]
    engines = {
        fine: load_engine("wordlm", quantize_checkpoint(ck, get_scheme(args.scheme, fine_activations=fine)))
        for fine in FINE_ACTIVATIONS
    }
    losses, seconds = {}, {fine: [] for fine in engines}
    try:
        load = MachineLoad.start(args.allow_busy)
        for _ in range(args.repeats):  # interleaved: the machine's load falls on both alike
            for fine, e in engines.items():
                start = time.perf_counter()
                losses[fine] = evaluate(e, ids).loss
                seconds[fine].append(time.perf_counter() - start)
        load.stop()
    except BusyMachine as e:
        sys.exit(f"benchmarks/activations.py: {e}")
    print(load.header() + "\n")
    print("| --fine-activations | loss | s per pass (median) | vs none |\n|---|---|---|---|")
    coarse = statistics.median(seconds["none"])
    for fine in engines:
        med = statistics.median(seconds[fine])
        print(f"| {fine} | {losses[fine]:.5f} | {med:.2f} | {med / coarse:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(required=True)
    sp = sub.add_parser("simulate")
    sp.add_argument("checkpoint")
    sp.add_argument("--scheme", default="int8")
    sp.add_argument("--max-tokens", type=int, default=20000)
    sp.add_argument("--modes", nargs="+", default=["asym7", "sym8", "asym8"])
    sp.add_argument("--places", nargs="+", default=list(PLACES), choices=PLACES)
    sp.set_defaults(func=simulate)
    sp = sub.add_parser("engine")
    sp.add_argument("checkpoint")
    sp.add_argument("--scheme", default="int8")
    sp.add_argument("--max-tokens", type=int, default=20000)
    sp.add_argument("--repeats", type=int, default=5)
    add_argument(sp)
    sp.set_defaults(func=engine)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    args.func(args)


if __name__ == "__main__":
    main()
