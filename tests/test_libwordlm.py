"""libwordlm (wordlm/native/wordlm.h): the runtime as a C library, held to the Python runtime.

C programs with no Python in their process (tests/c/wl_check.c, examples/c/next_words) load checkpoint
directories of every scheme (int8, int4, a mixed per-weight plan, fine activations, GRU, a projected and
tied LSTM, float and group-wise embeddings, the shipped model): where the Python runtime runs the native
kernels, their logits, state, log-probs, NLL, top-k and sampled words equal wordlm.runtime.Runtime's bit
for bit on every kernel this CPU runs (WORDLM_ISA for the C process, native._active for this one); where
it runs numpy float32 (float checkpoints, float recurrent weights, group-wise decoders), within 1e-5 of
numpy's numbers and with the same words. A second round of every call allocates nothing (the test program
counts malloc); every corrupt checkpoint of tests/test_checkpoint.py gives an error code and the Python
loader's message.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import test_checkpoint
from tests.c import compare
from wordlm import native
from wordlm.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from wordlm.config import preset
from wordlm.quant import QSpec, get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.runtime import Runtime, Sampling
from wordlm.tasks.generate import context_ids, encode_prompt
from wordlm.train.model import RecurrentLM, checkpoint_tensors

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "wikitext2-lstm-15mb"
CODES = {"ARGUMENT": 1, "NOT_FOUND": 2, "IO": 3, "CONFIG": 4, "WEIGHTS": 5, "VOCAB": 6}
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> dict[str, Path]:
    """`make -C examples/c` (libwordlm.so and next_words), and tests/c/wl_check.c linked to that library."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "c")], check=True, capture_output=True)
    lib = ROOT / "examples" / "c"
    check = tmp_path_factory.mktemp("wl_check") / "wl_check"
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'wordlm' / 'native'}"]
    link = [f"-L{lib}", "-lwordlm", f"-Wl,-rpath,{lib}"]
    subprocess.run([CC, *flags, str(ROOT / "tests" / "c" / "wl_check.c"), *link, "-o", str(check)], check=True)
    return {"check": check, "next_words": lib / "next_words"}


def _model(corpus, root: Path, name: str, **sizes) -> Checkpoint:
    torch.manual_seed(0)
    model = RecurrentLM(preset("tiny", len(corpus.vocab), **sizes))
    ck = Checkpoint(model.cfg, corpus.vocab, checkpoint_tensors(model))
    save_checkpoint(ck, root / name)
    return load_checkpoint(root / name)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, corpus) -> dict[str, Path]:
    """Small checkpoints of each scheme and cell the native path takes, quantized from random models."""
    root = tmp_path_factory.mktemp("libwordlm")
    lstm = _model(corpus, root, "float")
    plan = {
        "encoder.weight": QSpec(3),
        "rnn.weight_ih_l0": QSpec(6),
        "rnn.weight_hh_l0": QSpec(5),
        "rnn.weight_ih_l1": QSpec(2),
        "decoder.weight": QSpec(6),
    }
    schemes = {
        "int8": get_scheme("int8"),
        "int4": get_scheme("int4", group_size=16),  # one scale per row at the tiny model's 16 inputs
        "mixed": get_scheme("mixed", plan=plan, fine_activations="inputs"),
        "int8-fine": get_scheme("int8", fine_activations="all"),
    }
    out = {"float": root / "float"}
    for name, scheme in schemes.items():
        save_checkpoint(quantize_checkpoint(lstm, scheme), root / name)
        out[name] = root / name
    gru = _model(corpus, root, "gru-float", cell="gru", hidden_dim=20)
    save_checkpoint(quantize_checkpoint(gru, get_scheme("int8")), root / "gru")
    proj = _model(corpus, root, "proj-float", hidden_dim=24, proj_size=16, tied=True)
    save_checkpoint(quantize_checkpoint(proj, get_scheme("int4", group_size=16)), root / "proj-tied")
    # a float embedding beside native parts (a plan's null bits), and a group-wise one (2 scales per row)
    save_checkpoint(
        quantize_checkpoint(lstm, get_scheme("mixed", plan={"encoder.weight": QSpec(None)})), root / "float-emb"
    )
    wide = _model(corpus, root, "wide-float", emb_dim=32)
    save_checkpoint(quantize_checkpoint(wide, get_scheme("int4", group_size=16)), root / "emb-groups")
    # what the Python runtime runs in numpy float32: a float LSTM layer, a decoder of 2 scales per row
    save_checkpoint(
        quantize_checkpoint(lstm, get_scheme("mixed", plan={"rnn.weight_hh_l1": QSpec(None)})), root / "float-rnn"
    )
    deep = _model(corpus, root, "deep-float", hidden_dim=32)
    save_checkpoint(quantize_checkpoint(deep, get_scheme("int4", group_size=16)), root / "dec-groups")
    # a float checkpoint stored as bfloat16 (as torch saves it): read as float32, exactly (tensorfile.py)
    from safetensors.torch import save_file

    shutil.copytree(root / "float", root / "float-bf16")
    bf16 = {k: torch.from_numpy(np.array(v)).bfloat16() for k, v in lstm.tensors.items()}
    save_file(bf16, root / "float-bf16" / "model.safetensors")
    names = ("gru", "proj-tied", "float-emb", "emb-groups", "float-rnn", "dec-groups", "gru-float", "proj-float")
    names += ("float-bf16",)
    out.update({name: root / name for name in names})
    return out


def _check_against_python(programs, ckpt, isa, threads, monkeypatch, tmp_path, steps=7, batch=3, n_u=16):
    monkeypatch.setattr(native, "_active", isa)  # the kernel this process's calls run (WORDLM_ISA's effect)
    rt = Runtime(load_checkpoint(ckpt), threads=threads)
    ids, targets, us = compare.make_input(rt.vocab_size, steps, batch, n_u)
    compare.write_input(tmp_path / "in.bin", ids, targets, us)
    cmd = [str(programs["check"]), "run", str(ckpt), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), str(threads)]
    done = subprocess.run(cmd, env={**os.environ, "WORDLM_ISA": isa}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = compare.read_output(tmp_path / "out.bin", steps, batch, n_u)
    assert compare.differences(rt, got, ids, targets, us) == []
    assert got["allocations"] == 0, f"{got['allocations']} allocations in the second round of calls"


@pytest.mark.parametrize("isa", native.available_isas())
@pytest.mark.parametrize("name", ["int8", "int4", "mixed", "int8-fine", "gru", "proj-tied", "float-emb", "emb-groups"])
def test_every_scheme_equals_the_python_runtime(programs, ckpts, name, isa, monkeypatch, tmp_path):
    _check_against_python(programs, ckpts[name], isa, 1, monkeypatch, tmp_path)


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_same_bits_and_no_allocations(programs, ckpts, threads, monkeypatch, tmp_path):
    _check_against_python(programs, ckpts["mixed"], native.best_isa(), threads, monkeypatch, tmp_path)


@pytest.mark.parametrize("isa", native.available_isas())
def test_the_shipped_model_equals_the_python_runtime(programs, isa, monkeypatch, tmp_path):
    _check_against_python(programs, SHIPPED, isa, 1, monkeypatch, tmp_path, steps=5, batch=2, n_u=6)


def _load(programs, path: Path) -> tuple[int, str]:
    done = subprocess.run([str(programs["check"]), "load", str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout.strip()


@pytest.mark.parametrize("name", ["float", "float-rnn", "dec-groups", "gru-float", "proj-float", "float-bf16"])
def test_float_parts_are_numpys_within_float32_rounding(programs, ckpts, name, monkeypatch, tmp_path):
    """Parts the Python runtime runs in numpy float32 (float recurrent weights, a decoder of 2 scales per
    row, float checkpoints of every cell) are plain C float32 here: BLAS adds in another order, so the
    numbers are numpy's to ~3e-7 of their largest magnitude (held to 1e-5), not to the bit; the words
    (top-k, every sampler) are the same; the native parts beside them stay exact (state of dec-groups)."""
    isa = native.best_isa()
    monkeypatch.setattr(native, "_active", isa)
    rt = Runtime(load_checkpoint(ckpts[name]))
    assert "numpy float32" in rt.kernels
    ids, targets, us = compare.make_input(rt.vocab_size, 7, 3, 16)
    compare.write_input(tmp_path / "in.bin", ids, targets, us)
    cmd = [str(programs["check"]), "run", str(ckpts[name]), str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), "1"]
    done = subprocess.run(cmd, env={**os.environ, "WORDLM_ISA": isa}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = compare.read_output(tmp_path / "out.bin", 7, 3, 16)
    errors = compare.float_errors(rt, got, ids, targets)
    assert max(errors.values()) < 1e-5, errors
    exact = compare.differences(rt, got, ids, targets, us)
    floats = ("step", "wl_eval_sequence's", "wl_next_logprobs", "wl_nll", "wl_top_k")  # float_errors bounds them
    assert not [d for d in exact if not d.startswith(floats)]
    words, _, _ = rt.top_k(ids, rt.init_state(3), 10)
    assert list(got["top_ids"]) == list(words[0])
    if name == "dec-groups":
        assert "wl_eval_sequence's state" not in exact  # the native recurrent stack: exact
    assert got["allocations"] == 0


# every corrupt checkpoint of tests/test_checkpoint.py, made the same way (its parameters)
CORRUPT = next(m for m in test_checkpoint.test_bad_checkpoints_give_clear_errors.pytestmark if m.name == "parametrize")
EXPECTED_CODES = {
    "not a wordlm checkpoint": "NOT_FOUND",
    "corrupt or truncated": "WEIGHTS",
    "not valid JSON": "CONFIG",
    "format_version 99": "CONFIG",
    "has shape": "WEIGHTS",
    "emb_dim must be a positive integer": "CONFIG",
    "dropout must be a number": "CONFIG",
    "format_version '1'": "CONFIG",
    "nested too deeply": "CONFIG",
    "overlap|do not hold": "WEIGHTS",
    "vocabulary mismatch": "VOCAB",
    "sha256 differs": "VOCAB",
}


@pytest.mark.parametrize("base", ["float", "int8"])
@pytest.mark.parametrize("corrupt, message", CORRUPT.args[1])
def test_every_corrupt_checkpoint_gives_a_code_and_a_message(programs, ckpts, tmp_path, base, corrupt, message):
    path = tmp_path / "bad"
    shutil.copytree(ckpts[base], path)
    corrupt(path)
    code, out = _load(programs, path)
    assert code == CODES[EXPECTED_CODES[message]], out
    assert out.startswith(f"error {code} ") and re.search(message, out), out


def test_a_missing_directory(programs, tmp_path):
    assert _load(programs, tmp_path / "missing") == (
        CODES["NOT_FOUND"],
        f"error 2 {tmp_path / 'missing'}: no such checkpoint directory",
    )


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_vocab_newlines_are_pythons(programs, ckpts, tmp_path, newline):
    """vocab.txt is read with universal newlines, as Python's read_text reads it: the same words and hash."""
    path = tmp_path / "c"
    shutil.copytree(ckpts["int8"], path)
    words = (path / "vocab.txt").read_text().split("\n")
    (path / "vocab.txt").write_bytes(newline.join(words).encode())
    assert load_checkpoint(path).vocab.itos == words[:-1]
    code, out = _load(programs, path)
    assert code == 0, out


@pytest.mark.parametrize("text", ["the cat sat on", "the  cat\nsat\ton zzz-unknown\n", "\n\na", "   ", "a\x1fb"])
def test_encode_reads_a_prompt_as_generate_does(programs, ckpts, text):
    done = subprocess.run([str(programs["check"]), "encode", str(ckpts["int8"]), text], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == [
        str(i) for i in encode_prompt(load_checkpoint(ckpts["int8"]).vocab, text)
    ]


def _splitmix(n: int) -> list[float]:
    """examples/c/next_words.c's uniform numbers."""
    out, s, m = [], 0, 2**64 - 1
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & m
        z = ((s ^ (s >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        out.append(((z ^ (z >> 31)) >> 11) * 2.0**-53)
    return out


@pytest.mark.parametrize("which", ["shipped", "mixed"])
def test_the_example_prints_the_python_runtimes_numbers(programs, ckpts, which):
    """examples/c/next_words: its top words and their log-probs (printed as %a) are Runtime.top_k's, its
    continuation Runtime.sample_next's for the same uniform numbers, and the restored state repeats it."""
    ckpt = SHIPPED if which == "shipped" else ckpts[which]
    ck = load_checkpoint(ckpt)
    text = "the meaning of life is" if which == "shipped" else "the cat sat on"
    done = subprocess.run([str(programs["next_words"]), str(ckpt), text], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    rt = Runtime(ck)
    ids = np.array(context_ids(ck.vocab, text))[:, None]  # what `wordlm generate --prompt` reads
    words, values, _ = rt.top_k(ids, rt.init_state(1), 10)
    printed = [line.split() for line in lines[2 : 2 + len(words[0])]]
    assert [p[0] for p in printed] == [ck.vocab.itos[w] for w in words[0]]
    assert [float.fromhex(p[2]) for p in printed] == [float(v) for v in values[0]]
    rng, state, x, drawn = compare.Uniform(*_splitmix(12)), rt.init_state(1), ids, []
    for _ in range(12):
        w, state = rt.sample_next(x, state, Sampling(temperature=0.8), rng)
        drawn.append(int(w[0]))
        x = w[None, :]
    assert next(line for line in lines if line.startswith("ids:")).split()[1:] == [str(w) for w in drawn]
    assert lines[-1].endswith("same continuation: yes")
