"""`wordlm`: a thin command line over the Python API. One function per command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from wordlm import settings
from wordlm.errors import WordLMError
from wordlm.models import DEFAULT_MODEL, SHIPPED_MODEL, default_checkpoint
from wordlm.settings import SEED_MAX

log = logging.getLogger("wordlm")
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


def _engine_for(args):
    from wordlm.checkpoint import load_checkpoint
    from wordlm.engines import default_engine, load_engine

    ckpt = load_checkpoint(default_checkpoint(args.checkpoint))
    return ckpt, load_engine(args.engine or default_engine(ckpt), ckpt, threads=args.threads)


def cmd_import(args) -> None:
    from wordlm.checkpoint import save_checkpoint
    from wordlm.train.importer import import_state_dict

    ckpt = import_state_dict(args.state_dict, args.data, cell=args.cell)
    out = save_checkpoint(ckpt, args.out)
    c = ckpt.config
    print(
        f"wrote {out} ({c.cell}{', tied' if c.tied else ''}{f', proj {c.proj_size}' if c.proj_size else ''}, "
        f"{c.num_layers} layers, emb {c.emb_dim}, hidden {c.hidden_dim}, vocab {c.vocab_size})"
    )


def cmd_train(args) -> None:
    from wordlm.errors import require

    torch = require("torch", "torch")
    from wordlm.data import load_corpus
    from wordlm.runtime import check_threads
    from wordlm.train import TrainConfig, train
    from wordlm.train.distributed import EchoedError, Group, launch, setup, teardown

    if args.threads is not None:
        torch.set_num_threads(check_threads(args.threads))
    cfg = settings.from_args(TrainConfig, args)
    if args.nproc > 1:  # this machine's ranks, started as torchrun would, each running this command
        cfg.check(args.nproc)  # a setting the ranks would refuse is refused before starting them
        launch(args.nproc, _without_nproc(sys.argv[1:]))
        return
    device = setup(args.device)  # joins torchrun's process group, if there is one
    group = Group.current(device)
    if not group.main:
        logging.getLogger("wordlm").setLevel(logging.WARNING)  # progress and logs come from rank 0
    command = "wordlm " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        corpus = load_corpus(args.data, max_vocab=args.max_vocab, min_count=args.min_count)
        st = train(
            cfg,
            corpus,
            args.out,
            resume=args.resume,
            max_minutes=args.max_minutes,
            device=device,
            command=command,
        )
    except EchoedError:  # every rank met it; rank 0 says so
        raise SystemExit(2) from None
    finally:
        teardown()
    if not group.main:
        return
    done = st.epoch > cfg.epochs
    best = Path(args.out) / "best"
    print(
        f"{'finished' if done else 'stopped'} at epoch {min(st.epoch, cfg.epochs)}, batch {st.batch}; "
        + (f"best val loss {st.best_val:.4f}; best checkpoint: {best}" if best.is_dir() else "no epoch finished yet")
        + ("" if done else "; continue with --resume")
    )


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus `--nproc N` (or `--nproc=N`, or a prefix argparse accepted): what each rank runs."""
    out, skip = [], False
    for a in argv:
        name = a.split("=", 1)[0]
        if not skip and len(name) > 3 and "--nproc".startswith(name):
            skip = "=" not in a
        elif skip:
            skip = False
        else:
            out.append(a)
    return out


def cmd_eval(args) -> None:
    from wordlm.data import load_split, prefix
    from wordlm.evaluate import evaluate

    ckpt, engine = _engine_for(args)
    ids = load_split(ckpt.vocab, args.split, args.data)
    ids = prefix(ids, args.max_tokens)
    res = evaluate(engine, ids, bptt=args.bptt, batch_size=args.batch_size, progress=not args.json, warmup=True)
    out = {
        **res.to_dict(),
        "engine": engine.name,
        "size_bytes": engine.size_bytes,
        "threads": args.threads,
        "split": args.split,
        "checkpoint": str(ckpt.path),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{engine.name}: loss {res.loss:.4f}  ppl {res.ppl:.2f}  {res.tokens} tokens in "
            f"{res.seconds:.1f} s ({res.tokens_per_s:,.0f} tokens/s)  size {engine.size_bytes / 1e6:.1f} MB"
        )


def cmd_generate(args) -> None:
    from wordlm.evaluate.generate import generate_text
    from wordlm.runtime import Sampling

    ckpt, engine = _engine_for(args)
    sampling = settings.from_args(Sampling, args)
    if args.prompt:
        sys.stdout.write(args.prompt)
    for piece in generate_text(engine, ckpt.vocab, args.words, prompt=args.prompt, sampling=sampling, seed=args.seed):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_export(args) -> None:
    from wordlm.checkpoint import load_checkpoint
    from wordlm.export import export_onnx

    if args.format != "onnx":
        raise WordLMError(f"unknown export format {args.format!r}; the only one is onnx")
    ckpt = load_checkpoint(default_checkpoint(args.checkpoint))
    out = export_onnx(ckpt, args.out, quantize_dynamic=args.quantize_dynamic)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.1f} MB, {size:,} bytes)")


def cmd_quantize(args) -> None:
    from wordlm.checkpoint import load_checkpoint, save_checkpoint
    from wordlm.quant import get_scheme, plan_from_dict
    from wordlm.quantize import make_rounder, quantize_checkpoint

    ckpt = load_checkpoint(default_checkpoint(args.checkpoint))
    if ckpt.scheme is not None:
        raise WordLMError(f"checkpoint is already quantized ({ckpt.scheme.name}); quantize a float one")
    if args.budget is not None and (args.plan or args.group_size):
        raise WordLMError("--plan and --group-size go with --scheme; --budget chooses every weight's width itself")
    if args.budget is not None:
        from wordlm.quantize.budget import BudgetConfig, search

        cfg = BudgetConfig(
            budget=args.budget,
            val_tokens=args.val_tokens,
            recurrent_min_bits=args.min_recurrent_bits,
            fine_activations=args.fine_activations,
            threads=args.threads,
        )
        cfg.check()  # before calibration's minutes
    rounder, provenance = make_rounder(ckpt, args.method, args.calib_tokens, args.data)
    report = None
    if args.budget is not None:
        scheme, report = search(ckpt, cfg, rounder, data_dir=args.data)
    else:
        plan = plan_from_dict(read_json(args.plan)) if args.plan else None
        scheme = get_scheme(args.scheme, group_size=args.group_size, plan=plan, fine_activations=args.fine_activations)
    qckpt = quantize_checkpoint(ckpt, scheme, rounder, provenance)
    out = save_checkpoint(qckpt, args.out)
    if report is not None:
        from wordlm.quantize.budget import write_report

        write_report(report, out)
        print(
            f"validation loss {report.loss:.4f} ({report.loss - report.float_loss:+.4f} within {report.budget:g}); "
            f"plan and report in {out}"
        )
    print(
        f"wrote {out}: {scheme.name} ({args.method}), {qckpt.size_bytes / 1e6:.2f} MB "
        f"(from {ckpt.size_bytes / 1e6:.2f} MB)"
    )


def read_json(path: str) -> object:
    """A JSON file's content, or a one-line error saying why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise WordLMError(f"{path}: cannot read ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WordLMError(f"{path}: not valid JSON ({e})") from None


def cmd_bench(args) -> None:
    from rich.console import Console

    from wordlm.bench import ALL_VARIANTS, BenchConfig, run_bench, write_results
    from wordlm.bench.report import rich_table

    variants = tuple(v.strip() for v in args.engines.split(",")) if args.engines else ALL_VARIANTS
    cfg = BenchConfig(
        variants=variants,
        split=args.split,
        max_tokens=args.max_tokens,
        reps=args.reps,
        gen_tokens=args.gen_tokens,
        measure_rss=not args.no_rss,
    )
    doc = run_bench(default_checkpoint(args.checkpoint), cfg, data_dir=args.data)
    if args.out:
        for path in write_results(doc, args.out):
            log.info("wrote %s", path)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 200).print(rich_table(doc))


def cmd_serve(args) -> None:
    from wordlm.errors import require

    require("fastapi", "serve")
    require("uvicorn", "serve")
    from wordlm.serve import serve

    serve(default_checkpoint(args.checkpoint), args.host, args.port, args.engine, args.threads, args.max_concurrent)


def cmd_demo(args) -> None:
    from wordlm.bench.demo import run_demo

    # no checkpoint anywhere: the demo runs an untrained tutorial-architecture model and says so
    path = default_checkpoint(args.checkpoint, required=False)
    if path == SHIPPED_MODEL:  # the packaged model is quantized; the demo compares float paths with int8
        path = None
    run_demo(path, max_tokens=None if args.full else args.max_tokens, words=args.words, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    from wordlm.cells import CELLS
    from wordlm.engines import ENGINES
    from wordlm.quant import FINE_ACTIVATIONS
    from wordlm.runtime import Sampling
    from wordlm.train.config import TrainConfig

    p = Parser(prog="wordlm", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def engine_opts(sp):
        sp.add_argument("checkpoint", nargs="?", help=DEFAULT_HELP)
        sp.add_argument(
            "--engine",
            choices=list(ENGINES),
            help="default: torch for float checkpoints, wordlm for quantized ones",
        )
        sp.add_argument("--threads", type=THREADS, default=1, help="CPU threads (default 1, the tutorial's)")
        sp.add_argument("--data", help="folder with train.txt / valid.txt / test.txt (default: bundled WikiText-2)")

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

    sp = sub.add_parser("eval", help="loss and perplexity by the tutorial's protocol")
    engine_opts(sp)
    sp.add_argument("--split", default="test", choices=["test", "valid", "train"])
    sp.add_argument("--max-tokens", type=integer(2), help="evaluate only the first N tokens")
    sp.add_argument("--bptt", type=integer(1), default=25)
    sp.add_argument("--batch-size", type=integer(1), default=1)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("generate", help="sample text")
    engine_opts(sp)
    sp.add_argument("--words", type=integer(1), default=100)
    settings.add_flags(sp, Sampling)
    sp.add_argument("--seed", type=integer(0, SEED_MAX))
    sp.add_argument("--prompt")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("export", help="export a float checkpoint to ONNX (optionally int8 via ORT)")
    sp.add_argument("checkpoint", nargs="?", help=DEFAULT_HELP)
    sp.add_argument("--format", default="onnx", help="output format (only onnx for now)")
    sp.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    sp.add_argument("--quantize-dynamic", action="store_true", help="int8 weights via onnxruntime's quantize_dynamic")
    sp.set_defaults(func=cmd_export)

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

    sp = sub.add_parser("demo", help="the tutorial's flow: model, sample, fp32 vs torch-dynamic table")
    sp.add_argument("checkpoint", nargs="?")
    sp.add_argument("--max-tokens", type=integer(2), default=20000, help="test prefix to evaluate (default 20000)")
    sp.add_argument("--full", action="store_true", help="the whole test split, as in the tutorial")
    sp.add_argument("--words", type=integer(1), default=60)
    sp.add_argument("--seed", type=integer(0, SEED_MAX), default=0)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except WordLMError as e:
        print(f"wordlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written, a full disk, a closed pipe
        if isinstance(e, BrokenPipeError):  # e.g. `wordlm generate | head`: the reader has gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"wordlm {args.command}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wordlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
