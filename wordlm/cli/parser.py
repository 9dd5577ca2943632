"""`wordlm`'s flags: one function per subcommand, the settings' flags made from their dataclasses
(wordlm.settings), every value checked by its one validator. Imports no workflow at module level, so
that `wordlm --help` costs no torch."""

from __future__ import annotations

import argparse

from wordlm import settings
from wordlm.cli.commands import (
    cmd_bench,
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_import,
    cmd_quantize,
    cmd_serve,
    cmd_train,
)
from wordlm.models import DEFAULT_MODEL, SHIPPED_MODEL
from wordlm.settings import SEED_MAX

# a clone's float model, else (an installed wheel) the packaged quantized one: wordlm.models
DEFAULT_HELP = f"checkpoint (default: {DEFAULT_MODEL.name} in a clone, else the packaged {SHIPPED_MODEL.name})"


def integer(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (wordlm.settings' validator), else a one-line error."""
    return settings.arg_type(int, settings.integer(lo, hi))


def number(lo: float, hi: float | None = None, lo_open: bool = False):
    """An argparse type: a finite number in [lo, hi] (or (lo, hi]), else a one-line error."""
    return settings.arg_type(float, settings.number(lo, hi, lo_open))


THREADS = settings.arg_type(int, settings.threads)


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (no usage dump), as every other error of wordlm."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _engine_opts(sp) -> None:
    """The flags every command that runs a model on an engine takes."""
    from wordlm.engines import ENGINES

    sp.add_argument("checkpoint", nargs="?", help=DEFAULT_HELP)
    sp.add_argument(
        "--engine",
        choices=list(ENGINES),
        help="default: torch for float checkpoints, wordlm for quantized ones",
    )
    sp.add_argument("--threads", type=THREADS, default=1, help="CPU threads (default 1, the tutorial's)")
    sp.add_argument("--data", help="folder with train.txt / valid.txt / test.txt (default: bundled WikiText-2)")


def _import_command(sub) -> None:
    from wordlm.cells import CELLS

    sp = sub.add_parser(
        "import",
        aliases=["import-tutorial"],
        help="convert a state_dict (.pth) of the tutorial's LSTMModel or pytorch/examples' RNNModel to a checkpoint",
    )
    sp.add_argument("state_dict")
    sp.add_argument("--out", required=True)
    sp.add_argument("--data", help="corpus folder whose vocabulary the model uses (default: bundled WikiText-2)")
    sp.add_argument(
        "--cell", choices=list(CELLS), help="the recurrent cell (default: from the shapes, where they tell)"
    )
    sp.set_defaults(func=cmd_import)


def _train_command(sub) -> None:
    from wordlm.train.config import TrainConfig

    sp = sub.add_parser("train", help="train a model (resumable)")
    sp.add_argument("--out", required=True, help="run directory: best/ checkpoint and state/ to resume from")
    sp.add_argument("--data")
    settings.add_flags(sp, TrainConfig)
    sp.add_argument("--max-minutes", type=number(0, lo_open=True), help="stop (state saved) after this many minutes")
    sp.add_argument("--resume", action="store_true")
    sp.add_argument(
        "--max-vocab", type=integer(2), help="keep the N - 1 most frequent words and <unk>; the rest become <unk>"
    )
    sp.add_argument("--min-count", type=integer(1), default=1, help="words seen fewer times (all splits) become <unk>")
    sp.add_argument("--device", default="cpu", help="cpu or cuda[:N]; with several ranks, cuda: GPU LOCAL_RANK each")
    sp.add_argument("--threads", type=THREADS, help="CPU threads (default: torch's; per rank)")
    sp.add_argument(
        "--nproc",
        type=integer(1, 1024),
        default=1,
        help="train on N ranks of this machine with DDP, as `torchrun --nproc-per-node N -m wordlm train ...`",
    )
    sp.set_defaults(func=cmd_train)


def _eval_command(sub) -> None:
    sp = sub.add_parser("eval", help="loss and perplexity by the tutorial's protocol")
    _engine_opts(sp)
    sp.add_argument("--split", default="test", choices=["test", "valid", "train"])
    sp.add_argument("--max-tokens", type=integer(2), help="evaluate only the first N tokens")
    sp.add_argument("--bptt", type=integer(1), default=25)
    sp.add_argument("--batch-size", type=integer(1), default=1)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_eval)


def _generate_command(sub) -> None:
    from wordlm.runtime import Sampling

    sp = sub.add_parser("generate", help="sample text")
    _engine_opts(sp)
    sp.add_argument("--words", type=integer(1), default=100)
    settings.add_flags(sp, Sampling)
    sp.add_argument("--seed", type=integer(0, SEED_MAX))
    sp.add_argument("--prompt")
    sp.set_defaults(func=cmd_generate)


def _export_command(sub) -> None:
    sp = sub.add_parser("export", help="export a float checkpoint to ONNX (optionally int8 via ORT)")
    sp.add_argument("checkpoint", nargs="?", help=DEFAULT_HELP)
    sp.add_argument("--format", default="onnx", help="output format (only onnx for now)")
    sp.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    sp.add_argument("--quantize-dynamic", action="store_true", help="int8 weights via onnxruntime's quantize_dynamic")
    sp.set_defaults(func=cmd_export)


def _quantize_command(sub) -> None:
    from wordlm.quant import FINE_ACTIVATIONS

    sp = sub.add_parser("quantize", help="write a quantized checkpoint (run it with --engine wordlm)")
    sp.add_argument("checkpoint", nargs="?", help="float checkpoint (default: the shipped model)")
    how = sp.add_mutually_exclusive_group(required=True)
    how.add_argument("--scheme", help="int8 or int4 (see wordlm.quant.SCHEMES)")
    how.add_argument(
        "--budget",
        type=number(0, lo_open=True),
        help="the smallest per-weight plan costing at most this many nats of validation loss (wordlm.quantize.budget)",
    )
    sp.add_argument(
        "--val-tokens", type=integer(100), default=20000, help="--budget: validation tokens that measure each cost"
    )
    sp.add_argument(
        "--fine-activations",
        choices=list(FINE_ACTIVATIONS),
        default="none",
        help="GEMM inputs as two 7-bit codes (~14 bits): 'inputs' the input projections (5-13%% slower), "
        "'all' the decoder too (~1.6x slower); see benchmarks/activations.md",
    )
    sp.add_argument(
        "--min-recurrent-bits",
        type=int,
        default=6,
        help="--budget: the recurrent weights' narrowest width (2-3-bit ones drift over a long context)",
    )
    sp.add_argument("--threads", type=THREADS, default=1, help="--budget: CPU threads of its evaluations")
    sp.add_argument(
        "--group-size", type=integer(16), help="inputs per scale for the sub-8-bit parts (default: the scheme's)"
    )
    sp.add_argument(
        "--method",
        choices=["rtn", "gptq"],
        default="rtn",
        help="rtn: round to nearest; gptq: error-compensating rounding calibrated on training text",
    )
    sp.add_argument(
        "--calib-tokens",
        type=integer(40),
        help="gptq: tokens of the training split to calibrate on (default: wordlm.quantize.calibrate.CALIB_TOKENS)",
    )
    sp.add_argument("--data", help="gptq: corpus directory with train.txt (default: the shipped WikiText-2)")
    sp.add_argument(
        "--plan", help='JSON file of per-weight overrides, e.g. {"rnn.weight_ih_l0": {"bits": 6, "group_size": null}}'
    )
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_quantize)


def _bench_command(sub) -> None:
    sp = sub.add_parser("bench", help="every engine side by side: size, loss, speed, latency, memory")
    sp.add_argument("checkpoint", nargs="?")
    sp.add_argument(
        "--engines",
        help="comma-separated variants (default: all but the -fine ones): torch, torch-dynamic, onnxruntime, "
        "onnxruntime-int8, wordlm-int8, wordlm-int4, wordlm-mixed, and wordlm-int8 or wordlm-int4 with "
        "-fine-inputs or -fine-all (quantize --fine-activations)",
    )
    sp.add_argument("--split", default="test", choices=["test", "valid", "train"])
    sp.add_argument("--max-tokens", type=integer(2), help="evaluate a prefix (default: the whole split)")
    sp.add_argument("--reps", type=integer(1), default=3, help="timed eval passes per variant (median)")
    sp.add_argument("--gen-tokens", type=integer(1), default=200, help="generated tokens timed per variant")
    sp.add_argument("--no-rss", action="store_true", help="skip the separate peak-RSS process")
    sp.add_argument("--data")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--out", help="write results.json, results.md and plots here")
    sp.set_defaults(func=cmd_bench)


def _serve_command(sub) -> None:
    from wordlm.engines import ENGINES

    sp = sub.add_parser("serve", help="HTTP server: OpenAI-compatible completions, next words, scores, a web page")
    sp.add_argument("checkpoint", nargs="?", help=DEFAULT_HELP)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sp.add_argument("--port", type=integer(1, 65535), default=8000)
    sp.add_argument(
        "--engine",
        choices=list(ENGINES),
        help="default: torch for float checkpoints, wordlm for quantized ones",
    )
    sp.add_argument("--threads", type=THREADS, default=1, help="CPU threads of the engine (default 1)")
    sp.add_argument(
        "--max-concurrent",
        type=integer(1, 10000),
        default=80,  # wordlm.serve.DEFAULT_MAX_CONCURRENT, written out so that --help does not import fastapi
        help="requests to the model in flight at once; past that a 503 with Retry-After (default 80)",
    )
    sp.set_defaults(func=cmd_serve)


def _demo_command(sub) -> None:
    sp = sub.add_parser("demo", help="the tutorial's flow: model, sample, fp32 vs torch-dynamic table")
    sp.add_argument("checkpoint", nargs="?")
    sp.add_argument("--max-tokens", type=integer(2), default=20000, help="test prefix to evaluate (default 20000)")
    sp.add_argument("--full", action="store_true", help="the whole test split, as in the tutorial")
    sp.add_argument("--words", type=integer(1), default=60)
    sp.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    sp.set_defaults(func=cmd_demo)


COMMANDS = (
    _import_command,
    _train_command,
    _eval_command,
    _generate_command,
    _export_command,
    _quantize_command,
    _bench_command,
    _serve_command,
    _demo_command,
)  # each adds its subcommand, in --help's order


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="wordlm", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p
