"""The commands: one function per subcommand, each a thin layer over the Python API (it parses
nothing: wordlm.cli.parser did), importing what it needs when it runs."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

from wordlm import settings
from wordlm.errors import WordLMError
from wordlm.models import SHIPPED_MODEL, default_checkpoint

log = logging.getLogger("wordlm")


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
    from wordlm.train import TrainConfig, train
    from wordlm.train.distributed import EchoedError, Group, launch, setup, teardown

    if args.threads is not None:
        torch.set_num_threads(args.threads)  # checked by the flag's validator
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
    from wordlm.tasks import evaluate

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
    from wordlm.runtime import Sampling
    from wordlm.tasks.generate import generate_text

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
