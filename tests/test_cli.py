"""The CLI end to end, and its answers to bad input: one line on stderr, a non-zero exit."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import pytest
from conftest import make_corpus, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from wordlm.cli import build_parser


def _one_line_error(r, text):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("wordlm")]
    assert len(lines) == 1 and text in lines[0], r.stderr


def test_eval_json_and_max_tokens(tiny_ckpt, corpus_dir):
    r = run_cli("eval", str(tiny_ckpt), "--data", str(corpus_dir), "--max-tokens", "101", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens"] == 100 and out["engine"] == "torch" and out["size_bytes"] > 0
    assert out["ppl"] == pytest.approx(2.718281828 ** out["loss"], rel=1e-6)


def test_generate_streams_clean_text_and_is_reproducible(tiny_ckpt):
    a = run_cli("generate", str(tiny_ckpt), "--words", "30", "--seed", "3", "--prompt", "the cat")
    b = run_cli("generate", str(tiny_ckpt), "--words", "30", "--seed", "3", "--prompt", "the cat")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout[:8] in ("the cat ", "the cat\n")  # the continuation is spaced
    assert "b'" not in a.stdout and "<eos>" not in a.stdout


def test_unknown_prompt_word_without_unk(tmp_path):
    data = make_corpus(tmp_path / "d")
    for s in ("train", "valid", "test"):  # a corpus whose vocabulary has no <unk>
        p = data / f"{s}.txt"
        p.write_text(p.read_text().replace("<unk>", "someone"))
    r = run_cli(
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--bptt",
        "8",
        "--batch-size",
        "4",
    )
    assert r.returncode == 0, r.stderr
    _one_line_error(run_cli("generate", str(tmp_path / "run" / "best"), "--prompt", "the zebra"), "'zebra' is not in")


@pytest.mark.parametrize(
    "args, text",
    [
        (["generate", "{ckpt}", "--temperature", "-1"], "--temperature: must be a finite number in [0, inf)"),
        (["generate", "{ckpt}", "--temperature", "nan"], "--temperature: must be a finite number"),
        (["generate", "{ckpt}", "--top-p", "0"], "--top-p: must be a finite number in (0, 1]"),
        (["generate", "{ckpt}", "--seed", "-1"], "--seed: must be an integer from 0 to"),
        (["generate", "{ckpt}", "--seed", "18446744073709551616"], "--seed: must be an integer from 0 to"),
        (["generate", "{ckpt}", "--words", "0"], "--words: must be an integer >= 1"),
        (["eval", "{ckpt}", "--threads", "100000"], "--threads: must be an integer from 1 to 256"),
        (["serve", "{ckpt}", "--port", "70000"], "--port: must be an integer from 1 to 65535"),
        (
            ["train", "--out", "{tmp}/r", "--preset", "tiny", "--data", "{data}", "--lr", "nan"],
            "--lr: must be a finite",
        ),
        (["eval", "{tmp}/missing"], "no such checkpoint"),
        (["eval", "{tmp}"], "not a wordlm checkpoint"),
        (["eval", "{ckpt}", "--data", "{tmp}"], "has no test.txt"),
        (["eval", "{ckpt}", "--max-tokens", "1"], "--max-tokens"),
        (["eval", "{ckpt}", "--threads", "0"], "--threads"),
        (["import-tutorial", "{tmp}/none.pth", "--out", "{tmp}/o"], "no such file"),
        (
            ["train", "--out", "{tmp}/r", "--resume", "--preset", "tiny", "--data", "{data}"],
            "no training state",
        ),
        (
            ["train", "--out", "{tmp}/r", "--preset", "huge", "--data", "{data}"],
            "--preset: must be one of tutorial, tiny",
        ),
        (["train", "--out", "{tmp}/r", "--preset", "tiny", "--data", "{data}", "--dropout", "2"], "--dropout"),
        (["train", "--out", "{tmp}/r", "--preset", "tiny", "--data", "{data}", "--num-layers", "0"], "--num-layers"),
        (["train", "--out", "{tmp}/r", "--preset", "tiny", "--data", "{data}", "--threads", "0"], "--threads"),
        (["train", "--out", "{tmp}/r", "--preset", "tiny", "--data", "{data}", "--device", "gpu"], "--device"),
        (["train", "--out", "{tmp}/r", "--preset", "tiny", "--data", "{data}", "--max-minutes", "0"], "--max-minutes"),
        (["export", "{ckpt}", "--format", "onnx", "--out", "{tmp}"], "is a directory; name a file to write"),
        (["bench", "{ckpt}", "--data", "{data}", "--max-tokens", "-5"], "--max-tokens"),
        (["quantize", "{ckpt}", "--scheme", "int4", "--group-size", "24", "--out", "{tmp}/q"], "power of two"),
    ],
)
def test_bad_input_gives_one_line_error(tiny_ckpt, corpus_dir, tmp_path, args, text):
    fmt = {"ckpt": str(tiny_ckpt), "tmp": str(tmp_path), "data": str(corpus_dir)}
    _one_line_error(run_cli(*[a.format(**fmt) for a in args]), text)


def test_corrupt_checkpoint_on_the_cli(tiny_ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    (bad / "model.safetensors").write_bytes(b"\x00" * 10)
    _one_line_error(run_cli("eval", str(bad)), "corrupt or truncated")


def test_empty_text_split(tiny_ckpt, corpus_dir, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(corpus_dir, data)
    (data / "test.txt").write_text("")
    _one_line_error(run_cli("eval", str(tiny_ckpt), "--data", str(data)), "is empty")


NUMERIC = {
    "--threads": ("eval", 1, 256),
    "--port": ("serve", 1, 65535),
    "--seed": ("generate", 0, 2**63 - 1),
    "--words": ("generate", 1, None),
    "--top-k": ("generate", 0, None),
    "--temperature": ("generate", 0.0, None),
    "--top-p": ("generate", 0.0, 1.0),
    "--lr": ("train", 0.0, None),
}


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    flag=st.sampled_from(sorted(NUMERIC)),
    value=st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
        st.sampled_from(["1e-46", "1e-40", "-0", "0x10", "nan", "inf", "1_000", " 3 "]),
    ),
)
def test_every_numeric_option_parses_into_range_or_is_one_line_error(flag, value):
    """hypothesis on the CLI's value parsing: a value in range, or exit 2 with one line naming the flag."""
    command, lo, hi = NUMERIC[flag]
    argv = [command, *(["--out", "x"] if command == "train" else []), f"{flag}={value}"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as e:
        err = stderr.getvalue().strip()
        assert e.code == 2 and len(err.splitlines()) == 1 and flag in err, err
        return
    got = getattr(args, flag[2:].replace("-", "_"))
    assert math.isfinite(got) and got >= lo and (hi is None or got <= hi)
    if flag in ("--lr", "--top-p"):
        assert got > 0
