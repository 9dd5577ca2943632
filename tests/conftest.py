"""Shared fixtures: a tiny corpus with learnable structure, and a tiny model checkpoint."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wordlm.checkpoint import Checkpoint, save_checkpoint
from wordlm.config import preset
from wordlm.data import load_corpus
from wordlm.train.model import RecurrentLM, checkpoint_tensors

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "<unk>"]
VERBS = ["sat on", "looked at", "ran to", "slept near"]
OBJECTS = ["the mat", "a tree", "the river", "the house", "her friend"]


def make_corpus(root: Path, lines: tuple[int, int, int] = (400, 60, 60), seed: int = 0) -> Path:
    """Write train/valid/test.txt of simple sentences (tiny vocabulary, learnable next words)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines, strict=True):
        text = []
        for _ in range(n):
            s = f" {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} ."
            text.append(s + (" and then it rained ." if rng.random() < 0.3 else ""))
        (root / f"{split}.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return root


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `wordlm ARGS` in a fresh process (as a user would), one thread."""
    return subprocess.run(
        [sys.executable, "-m", "wordlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
    )


def wait_for_saved_batch(run: Path, batch: int, timeout: float = 120) -> Path:
    """Wait until a training run's saved state has reached `batch` (for killing it mid-epoch); its
    state.json path. Reads may meet the file mid-replace: they are retried."""
    state, deadline = run / "state" / "state.json", time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads(state.read_text())["run"]["batch"] >= batch:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    return state


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def corpus(corpus_dir):
    return load_corpus(corpus_dir)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, corpus) -> Path:
    """A randomly initialised tiny model saved as a checkpoint."""
    torch.manual_seed(0)
    model = RecurrentLM(preset("tiny", len(corpus.vocab)))
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(Checkpoint(model.cfg, corpus.vocab, checkpoint_tensors(model)), out)
    return out


@pytest.fixture(scope="session")
def trained_ckpt(tmp_path_factory, corpus) -> Path:
    """A tiny model trained for a few epochs (its loss is well below uniform): for accuracy deltas."""
    from wordlm.train import TrainConfig, train

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(preset="tiny", emb_dim=32, hidden_dim=32, epochs=4, batch_size=4, bptt=8, lr=5, seed=0)
    train(cfg, corpus, run)
    return run / "best"
