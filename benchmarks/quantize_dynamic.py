"""Issue 24's figures: `wordlm.quantize_dynamic` against torch.ao's `quantize_dynamic` and the float model,
one thread: speed on the issue's four cases, per-module error against float, a word LM's loss, saved size,
and the Python overhead of a one-token call.

Run: .venv/bin/python benchmarks/quantize_dynamic.py [--reps 7] [--out benchmarks/quantize_dynamic.md]
Repetitions are interleaved (wordlm, torch.ao, float, wordlm, ...) and each figure is their median; "paired"
is the median of each repetition's own ratio (the two runs moments apart: steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from wordlm import native
from wordlm.bench.run import cpu_flags
from wordlm.nn import quantize_dynamic

ROOT = Path(__file__).resolve().parents[1]
VOCAB, EMB, HIDDEN = 10_000, 256, 256


class WordLM(nn.Module):
    """pytorch/examples' word LM shape: Embedding -> 2 x 256 LSTM -> Linear to 10k words."""

    def __init__(self):
        super().__init__()
        self.encoder, self.rnn = nn.Embedding(VOCAB, EMB), nn.LSTM(EMB, HIDDEN, 2)
        self.decoder = nn.Linear(HIDDEN, VOCAB)

    def forward(self, ids, state):
        y, state = self.rnn(self.encoder(ids), state)
        return self.decoder(y), state


class Tagger(nn.Module):
    """A batch-first 2-layer bidirectional LSTM tagger over packed sentences."""

    def __init__(self, words: int = 20_000, tags: int = 20):
        super().__init__()
        self.emb, self.rnn = nn.Embedding(words, 100), nn.LSTM(100, 256, 2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(512, tags)

    def forward(self, ids, lengths):
        y, _ = self.rnn(pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False))
        return self.out(y.data)


class Sequence(nn.Module):
    """pytorch/examples' time_sequence_prediction: two 51-unit LSTMCells and a Linear, one step per call."""

    def __init__(self):
        super().__init__()
        self.lstm1, self.lstm2, self.linear = nn.LSTMCell(1, 51), nn.LSTMCell(51, 51), nn.Linear(51, 1)

    def forward(self, x, state):
        h1, c1, h2, c2 = state
        h1, c1 = self.lstm1(x, (h1, c1))
        h2, c2 = self.lstm2(h1, (h2, c2))
        return self.linear(h2), (h1, c1, h2, c2)


def trained_like(m: nn.Module, seed: int = 0) -> nn.Module:
    """Rows of different scales, biases off zero (as trained weights have; init's rows share one range)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(torch.exp(0.5 * torch.randn(p.shape[0], 1, generator=g)))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m.eval()


def torch_ao(m: nn.Module, spec: set) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(m, spec, dtype=torch.qint8)


def beam_search(model: nn.Module, search: bool, steps: int = 50, beams: int = 10) -> Callable[[], None]:
    """A beam search's steps: one token for each of 10 hypotheses, the state carried; `search`: with its
    bookkeeping (log-softmax, top-k over the beams, the state reordered), the same work for every model."""

    def run() -> None:
        state = tuple(torch.zeros(2, beams, HIDDEN) for _ in range(2))
        tokens = torch.zeros(1, beams, dtype=torch.long)
        for _ in range(steps):
            logits, state = model(tokens, state)
            if search:
                top = F.log_softmax(logits[0], -1).view(-1).topk(beams).indices
                tokens, rows = (top % VOCAB)[None], top // VOCAB
                state = tuple(s.index_select(1, rows) for s in state)

    return run


def cell_steps(model: nn.Module, batch: int, steps: int = 20) -> Callable[[], None]:
    x = torch.sin(torch.arange(steps * batch, dtype=torch.float32).view(steps, batch, 1) / 4)

    def run() -> None:
        state = tuple(torch.zeros(batch, 51) for _ in range(4))
        for t in range(steps):
            _, state = model(x[t], state)

    return run


def cases() -> dict[str, tuple[nn.Module, set, Callable[[nn.Module], Callable[[], None]]]]:
    """name -> (float model, the qconfig_spec both quantizers get, model -> the timed call)."""
    torch.manual_seed(0)
    lm, tagger, seq = trained_like(WordLM()), trained_like(Tagger()), trained_like(Sequence())
    ids = torch.randint(0, VOCAB, (125, 4))
    lengths = torch.randint(5, 41, (64,))
    sentences = torch.randint(0, 20_000, (64, int(lengths.max())))
    state = tuple(torch.zeros(2, 4, HIDDEN) for _ in range(2))
    lm_spec, seq_spec = {nn.LSTM, nn.Linear}, {nn.LSTMCell, nn.Linear}
    return {
        "word LM, 4 x 125 batch": (lm, lm_spec, lambda m: lambda: m(ids, state)),
        "beam step, model only (10 hypotheses, 50 steps)": (lm, lm_spec, lambda m: beam_search(m, False)),
        "beam step with the search (log-softmax, top-k, reorder)": (lm, lm_spec, lambda m: beam_search(m, True)),
        "packed bidirectional tagger, 64 sentences": (tagger, lm_spec, lambda m: lambda: m(sentences, lengths)),
        "51-unit LSTMCell steps (batch 97, 20 steps)": (seq, seq_spec, lambda m: cell_steps(m, 97)),
        "51-unit LSTMCell steps (batch 3, 20 steps)": (seq, seq_spec, lambda m: cell_steps(m, 3)),
    }


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed(reps: int) -> list[str]:
    rows = [
        "| case | wordlm (ms) | torch.ao (ms) | float (ms) | wordlm vs torch.ao | the same, paired "
        "| torch.ao vs float | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (model, spec, make) in cases().items():
        fns = [make(quantize_dynamic(model, spec)), make(torch_ao(copy.deepcopy(model), spec)), make(model)]
        times: list[list[float]] = [[], [], []]
        with torch.no_grad():
            for fn in fns:
                fn()  # warm-up
            for _ in range(reps):
                for i, fn in enumerate(fns):
                    times[i].append(timed(fn))
        ours, ao, flt = (statistics.median(t) * 1e3 for t in times)
        paired = statistics.median(a / o for o, a in zip(times[0], times[1], strict=True))  # run by run
        load = Path("/proc/loadavg").read_text().split()[0]
        ratios = f"{ao / ours:.2f}x | {paired:.2f}x | {flt / ao:.2f}x"
        rows.append(f"| {name} | {ours:.2f} | {ao:.2f} | {flt:.2f} | {ratios} | {load} |")
    return rows


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def accuracy() -> list[str]:
    """Each module's output error against float (RMSE), on trained-like weights and random inputs."""
    torch.manual_seed(1)
    modules = {
        "LSTM 2 x 256": (nn.LSTM(256, 256, 2), torch.randn(35, 4, 256)),
        "LSTM 2 x 256 bidirectional": (nn.LSTM(100, 256, 2, bidirectional=True), torch.randn(30, 8, 100)),
        "GRU 2 x 256": (nn.GRU(256, 256, 2), torch.randn(35, 4, 256)),
        "Linear 256 -> 10000": (nn.Linear(256, 10_000), torch.randn(40, 256)),
        "LSTMCell 51": (nn.LSTMCell(51, 51), torch.randn(97, 51)),
    }
    rows = ["| module | wordlm RMSE | torch.ao RMSE | wordlm / torch.ao |", "|---|---|---|---|"]
    with torch.no_grad():
        for name, (m, x) in modules.items():
            m = trained_like(m, 1)
            ref = _first(m(x))
            ours, ao = _first(quantize_dynamic(m)(x)), _first(torch_ao(nn.Sequential(m), {type(m)})(x))
            a, b = rmse(ours, ref), rmse(ao, ref)
            rows.append(f"| {name} | {a:.2e} | {b:.2e} | {a / b:.2f} |")
    return rows


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def shipped_loss(tokens: int) -> list[str]:
    """The shipped WikiText-2 model (5 x 256 LSTM, 33k words): test loss, float vs each quantizer (LSTM and
    decoder quantized, embedding float: the tutorial's {nn.LSTM, nn.Linear})."""
    from wordlm.checkpoint import load_checkpoint
    from wordlm.data import load_split
    from wordlm.train.model import build_model

    ckpt = load_checkpoint(ROOT / "models" / "wikitext2-lstm")
    shared = ROOT.parent / "shared" / "data" / "wikitext-2"
    ids = torch.from_numpy(load_split(ckpt.vocab, "test", shared if shared.is_dir() else None)[: tokens + 1])
    model = build_model(ckpt)
    losses = {}
    for name, m in (("float", model), ("wordlm", quantize_dynamic(model, {nn.LSTM, nn.Linear})),
                    ("torch.ao", torch_ao(copy.deepcopy(model), {nn.LSTM, nn.Linear}))):  # fmt: skip
        state, total = tuple(torch.zeros(s) for s in ckpt.config.state_shapes(1)), 0.0
        with torch.no_grad():
            for i in range(0, tokens, 35):
                x, y = ids[i : min(i + 35, tokens)], ids[i + 1 : min(i + 36, tokens + 1)]
                logits, state = m(x[:, None], state)
                total += F.cross_entropy(logits.view(-1, logits.shape[-1]), y, reduction="sum").item()
        losses[name] = total / tokens
    rows = ["| model | loss | delta vs float |", "|---|---|---|"]
    rows += [f"| {k} | {v:.5f} | {v - losses['float']:+.5f} |" for k, v in losses.items()]
    return rows


def sizes() -> list[str]:
    rows = [
        "| model (qconfig_spec) | wordlm bytes | torch.ao bytes | float bytes | wordlm / torch.ao |",
        "|---|---|---|---|---|",
    ]
    for name, (model, spec, _) in cases().items():
        if name.startswith("beam") or "batch 3" in name:
            continue
        ours, ao, flt = (
            _saved(m) for m in (quantize_dynamic(model, spec), torch_ao(copy.deepcopy(model), spec), model)
        )
        specs = ", ".join(sorted(t.__name__ for t in spec))
        rows.append(
            f"| {name.split(',')[0].split(' (')[0]} ({specs}) | {ours:,} | {ao:,} | {flt:,} | {ours / ao:.4f} |"
        )
    return rows


def _saved(m: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    return len(buf.getvalue())


def beam_parts(reps: int, n: int = 200) -> list[str]:
    """A beam step's two quantized calls apart: the LSTM (one token, 10 hypotheses) and the decoder on 10 rows."""
    lm = trained_like(WordLM())
    ours, ao = quantize_dynamic(lm, {nn.LSTM, nn.Linear}), torch_ao(copy.deepcopy(lm), {nn.LSTM, nn.Linear})
    x, y = torch.randn(1, 10, EMB), torch.randn(1, 10, HIDDEN)
    state = tuple(torch.zeros(2, 10, HIDDEN) for _ in range(2))
    parts = {
        "LSTM 2 x 256, one token": lambda m: m.rnn(x, state),
        "Linear 256 -> 10000, 10 rows": lambda m: m.decoder(y),
    }
    rows = ["| call | wordlm (us) | torch.ao (us) | wordlm vs torch.ao |", "|---|---|---|---|"]
    with torch.no_grad():
        for name, call in parts.items():
            times: list[list[float]] = [[], []]
            for _ in range(reps):
                for i, m in enumerate((ours, ao)):
                    times[i].append(timed(lambda m=m, call=call: [call(m) for _ in range(n)]) / n * 1e6)
            a, b = (statistics.median(t) for t in times)
            rows.append(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    return rows


def overhead(n: int = 3000) -> list[str]:
    """One beam step's LSTM call (2 x 256, 10 hypotheses, one token): the module against the bare native call."""
    q = quantize_dynamic(nn.LSTM(EMB, HIDDEN, 2))
    x, h, c, y = (
        torch.randn(1, 10, EMB),
        torch.zeros(2, 10, HIDDEN),
        torch.zeros(2, 10, HIDDEN),
        torch.empty(1, 10, HIDDEN),
    )
    stack, kernel = q._stacks[0], native.kernel_index()

    def bare() -> None:
        native.recurrent_into(x.data_ptr(), 1, 10, stack, h.data_ptr(), c.data_ptr(), y.data_ptr(), kernel, 1)

    def module() -> None:
        q(x, (h, c))

    per: dict[str, list[float]] = {"bare": [], "module": []}
    with torch.no_grad():
        for _ in range(5):
            for name, fn in (("bare", bare), ("module", module)):
                per[name].append(timed(lambda fn=fn: [fn() for _ in range(n)]) / n * 1e6)
    b, m = statistics.median(per["bare"]), statistics.median(per["module"])
    return [
        f"- the native call alone (`wordlm.native.recurrent_into`): {b:.1f} us",
        f"- `wordlm.nn.LSTM.forward` around it: {m:.1f} us, so {m - b:.1f} us of Python per call",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--loss-tokens", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "quantize_dynamic.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    sections = {
        "Speed (one thread, medians of interleaved repetitions; ratios > 1: the first is faster)": speed(args.reps),
        "A beam step's quantized calls apart (medians of interleaved repetitions)": beam_parts(args.reps),
        "Python overhead of a one-token call": overhead(),
        "Per-module output error against the float module (trained-like weights)": accuracy(),
        f"The shipped WikiText-2 model, first {args.loss_tokens} test tokens (bptt 35, batch 1)": shipped_loss(
            args.loss_tokens
        ),
        "Saved size: torch.save(model.state_dict())": sizes(),
    }
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        "# wordlm.quantize_dynamic against torch.ao's quantize_dynamic",
        "",
        f"Command: `.venv/bin/python benchmarks/quantize_dynamic.py --reps {args.reps} "
        f"--loss-tokens {args.loss_tokens}`  ",
        f"CPU flags: {', '.join(cpu_flags())}; kernel: {native.active_isa()}; torch {torch.__version__}, "
        f"quantized engine {torch.backends.quantized.engine}; one thread (`torch.set_num_threads(1)`).  ",
        f"Load average (1, 5, 15 min) before: {' '.join(load_before)}; after: {' '.join(load_after)}.",
    ]
    for title, rows in sections.items():
        lines += ["", f"## {title}", "", *rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
