"""Training: loss goes down, and a killed run resumes to exactly the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli, wait_for_saved_batch
from safetensors.torch import load_file

from wordlm.errors import WordLMError
from wordlm.train import TrainConfig, cpu_bf16, reuse_freed_memory, train

ARGS = [
    "--preset",
    "tiny",
    "--epochs",
    "2",
    "--batch-size",
    "2",
    "--bptt",
    "4",
    "--lr",
    "5",
    "--seed",
    "7",
    "--threads",
    "1",
]


def _train_cli(corpus_dir, out, *extra):
    return run_cli("train", "--data", str(corpus_dir), "--out", str(out), *ARGS, *extra)


def _weights(run):
    return load_file(run / "state" / "state.safetensors")


def test_training_lowers_validation_loss(corpus, tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(preset="tiny", epochs=3, batch_size=4, bptt=8, lr=5, seed=1)
    st = train(cfg, corpus, tmp_path / "run")
    losses = [h["val_loss"] for h in st.history]
    assert losses[-1] < losses[0] < 4.0  # well below uniform: log(V) ~ 3.3 at first, lower later
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "run" / "best" / "config.json").read_text())["meta"]
    assert meta["epochs"] >= 1 and meta["val_loss"] == pytest.approx(min(losses))


@pytest.mark.skipif(not cpu_bf16(), reason="this CPU has no bfloat16 support in oneDNN (the fallback is tested)")
def test_bf16_training_learns_and_can_be_switched_on_resume(corpus, tmp_path):
    torch.set_num_threads(1)
    cfg = TrainConfig(preset="tiny", epochs=1, batch_size=4, bptt=8, lr=5, seed=1)
    train(cfg, corpus, tmp_path / "run")
    bf16 = TrainConfig(preset="tiny", epochs=3, batch_size=4, bptt=8, lr=5, seed=1, precision="bf16")
    st = train(bf16, corpus, tmp_path / "run", resume=True)
    losses = [h["val_loss"] for h in st.history]
    assert len(losses) == 3 and losses[-1] < losses[0] < 4.0
    hidden = _weights(tmp_path / "run")["hidden.h"]
    assert hidden.dtype == torch.float32  # the saved state stays fp32


def test_bf16_on_a_cpu_without_bf16_trains_in_fp32_with_a_warning(corpus, tmp_path, monkeypatch, caplog):
    """Simulated where the CPU has bf16: the run is exactly an fp32 run, and says so."""
    import wordlm.train.loop

    torch.set_num_threads(1)
    monkeypatch.setattr(wordlm.train.loop, "cpu_bf16", lambda: False)
    kw = dict(preset="tiny", epochs=1, batch_size=4, bptt=8, lr=5, seed=1)
    train(TrainConfig(**kw), corpus, tmp_path / "fp32")
    with caplog.at_level("WARNING", logger="wordlm.train"):
        train(TrainConfig(**kw, precision="bf16"), corpus, tmp_path / "bf16")
    assert any("no bfloat16 support" in r.getMessage() and "fp32" in r.getMessage() for r in caplog.records)
    a, b = _weights(tmp_path / "fp32"), _weights(tmp_path / "bf16")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))
    with pytest.raises(WordLMError, match="precision"):
        TrainConfig(precision="fp8").check()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lr=float("nan")), "--lr: must be a finite number in \\(0, inf\\), got nan"),
        (dict(lr=float("inf")), "--lr: must be a finite number in \\(0, inf\\), got inf"),
        (dict(clip=0.0), "--clip: must be a finite number in \\(0, inf\\), got 0.0"),
        (dict(batch_size=100_000), "--batch-size 100000 leaves fewer than 2 tokens"),
    ],
)
def test_bad_training_values_are_one_line_errors_and_write_nothing(corpus, tmp_path, change, message):
    cfg = TrainConfig(**{**dict(preset="tiny", epochs=1, batch_size=4, bptt=8, seed=1), **change})
    with pytest.raises(WordLMError, match=message):
        train(cfg, corpus, tmp_path / "run")
    assert not (tmp_path / "run" / "best").exists()


def test_killed_run_resumes_to_identical_weights(corpus_dir, tmp_path):
    ref = _train_cli(corpus_dir, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wordlm.cli",
            "train",
            "--data",
            str(corpus_dir),
            "--out",
            str(run),
            *ARGS,
            "--save-every",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    state = wait_for_saved_batch(run, 40)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["run"]
    assert killed_at["epoch"] == 1, "the run should be killed mid-way through the first epoch"

    resumed = _train_cli(corpus_dir, run, "--save-every", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    # it continued from the saved batch instead of starting over
    assert f"resuming {run} at epoch 1, batch {killed_at['batch']}" in resumed.stderr
    assert sorted(p.name for p in run.iterdir()) == ["best", "state"]  # no half-written copies left
    a, b = _weights(tmp_path / "ref"), _weights(run)
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k
    best_a = load_file(tmp_path / "ref" / "best" / "model.safetensors")
    best_b = load_file(run / "best" / "model.safetensors")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_min_improvement_decays_on_a_slow_epoch_and_the_run_logs_its_commands(corpus, tmp_path):
    torch.set_num_threads(1)
    kw = dict(preset="tiny", batch_size=4, bptt=8, lr=5, seed=1)
    st = train(TrainConfig(epochs=2, **kw), corpus, tmp_path / "run", command="first")
    gain = st.history[0]["val_loss"] - st.history[1]["val_loss"]
    assert [h["lr"] for h in st.history] == [5, 5] and 0 < gain < 10  # the reference rule: it improved, no decay
    # from here on, an epoch gaining less than 10 nats is a plateau: the lr divides by 4 after each
    st = train(TrainConfig(epochs=4, min_improvement=10, **kw), corpus, tmp_path / "run", resume=True, command="again")
    assert [h["lr"] for h in st.history] == [5, 5, 5, 5 / 4]  # the lr each epoch trained with
    assert st.lr == 5 / 16
    assert [(c["epoch"], c["batch"], c["command"]) for c in st.commands] == [(1, 0, "first"), (3, 0, "again")]
    with pytest.raises(WordLMError, match="min-improvement"):
        TrainConfig(min_improvement=-1).check()


def test_time_limit_stops_and_resume_finishes(corpus_dir, tmp_path):
    r = _train_cli(corpus_dir, tmp_path / "r", "--max-minutes", "0.0001")
    assert r.returncode == 0 and "continue with --resume" in r.stdout
    assert json.loads((tmp_path / "r" / "state" / "state.json").read_text())["run"]["epoch"] == 1
    r = _train_cli(corpus_dir, tmp_path / "r", "--resume")
    assert r.returncode == 0 and "finished" in r.stdout


def test_resume_refuses_changed_settings_and_existing_runs(corpus, tmp_path):
    cfg = TrainConfig(preset="tiny", epochs=1, batch_size=4, bptt=8, seed=1)
    train(cfg, corpus, tmp_path / "run")
    with pytest.raises(WordLMError, match="already holds a run"):
        train(cfg, corpus, tmp_path / "run")
    with pytest.raises(WordLMError, match="settings differ"):
        train(
            TrainConfig(preset="tiny", epochs=1, batch_size=4, bptt=8, seed=1, lr=1.0),
            corpus,
            tmp_path / "run",
            resume=True,
        )
    with pytest.raises(WordLMError, match="no training state"):
        train(cfg, corpus, tmp_path / "other", resume=True)


def test_max_vocab_and_min_count_reach_the_model(corpus_dir, corpus, tmp_path):
    from wordlm.checkpoint import load_checkpoint
    from wordlm.cli import main

    counts = sum(np.bincount(ids, minlength=len(corpus.vocab)) for ids in (corpus.train, corpus.valid, corpus.test))
    frequent = {w for w, n in zip(corpus.vocab.itos, counts, strict=True) if n >= 100 and w != "<unk>"}
    assert 10 < len(corpus.vocab) and 1 < len(frequent) < len(corpus.vocab) - 1
    for flags, words in [(["--max-vocab", "10"], 9), (["--min-count", "100"], len(frequent))]:
        out = tmp_path / flags[0]
        assert main(["train", "--data", str(corpus_dir), "--out", str(out), *ARGS, "--epochs", "1", *flags]) == 0
        vocab = load_checkpoint(out / "best").vocab
        assert len(vocab) == words + 1 and "<unk>" in vocab
    assert set(vocab.itos) == frequent | {"<unk>"}


@pytest.mark.parametrize(
    "shape",
    [dict(cell="gru"), dict(cell="rnn_tanh"), dict(cell="rnn_relu"), dict(tied=True), dict(proj_size=8)],
    ids=["gru", "rnn_tanh", "rnn_relu", "tied", "proj"],
)
def test_every_cell_trains_resumes_exactly_and_evaluates(corpus, tmp_path, shape):
    """Each cell learns; its state (a 1-tuple for GRU/RNN) resumes to the uninterrupted run's weights; the
    best checkpoint carries the cell and runs on the wordlm runtime."""
    from wordlm.checkpoint import load_checkpoint
    from wordlm.engines import load_engine
    from wordlm.tasks import evaluate

    torch.set_num_threads(1)
    kw = dict(preset="tiny", batch_size=4, bptt=8, lr=5, seed=1, **shape)
    st = train(TrainConfig(**kw, epochs=2), corpus, tmp_path / "straight")
    losses = [h["val_loss"] for h in st.history]
    assert losses[-1] < 3.0  # log(V) of the tiny corpus is ~3.3
    train(TrainConfig(**kw, epochs=1), corpus, tmp_path / "resumed")
    train(TrainConfig(**kw, epochs=2), corpus, tmp_path / "resumed", resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ("hidden.c" in a) == (shape.get("cell", "lstm") == "lstm")

    ckpt = load_checkpoint(tmp_path / "straight" / "best")
    assert {k: getattr(ckpt.config, k) for k in shape} == shape
    assert ("decoder.weight" in ckpt.tensors) != bool(shape.get("tied"))
    loss = evaluate(load_engine("wordlm", ckpt), corpus.valid, bptt=8).loss
    assert loss == pytest.approx(st.best_val, abs=0.2)  # validation ran at batch 10, here batch 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cell", "gru", "--proj-size", "4"], "proj_size applies to LSTM cells only"),
        (["--tied", "--emb-dim", "8"], "tying the embedding and the decoder needs emb_dim"),
        (["--cell", "lstm2"], "--cell: must be one of lstm, gru, rnn_tanh, rnn_relu, got lstm2"),
    ],
)
def test_bad_model_shapes_are_one_line_errors(corpus_dir, tmp_path, args, message):
    r = _train_cli(corpus_dir, tmp_path / "run", *args)
    assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_reuse_freed_memory_takes_on_glibc():
    """glibc accepts both settings (a step's large tensors then come back from the heap, not from
    fresh mmaps); another C library reports False and training goes on as before."""
    assert reuse_freed_memory() is (platform.libc_ver()[0] == "glibc")
    big = torch.ones(20_000_000)  # 80 MB: mmap'd under glibc's defaults, from the heap now
    assert float(big.sum()) == 20_000_000
