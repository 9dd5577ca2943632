"""DDP under torchrun on the CPU (gloo on loopback): the single-process recipe, resumable, multi-node.

Every run here is a real launch (torchrun, or `wordlm train --nproc`), one thread per rank.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from conftest import run_cli, wait_for_saved_batch
from safetensors.torch import load_file

from wordlm.cli import main
from wordlm.cli.commands import _without_nproc
from wordlm.config import preset
from wordlm.train import TrainConfig, train
from wordlm.train.distributed import Group, average_touched_rows, data_parallel
from wordlm.train.model import RecurrentLM

# dropout 0: two ranks then compute what one process computes, up to the order of float sums
EXACT = dict(preset="tiny", epochs=1, batch_size=4, bptt=8, lr=2.0, seed=3, dropout=0.0)
ARGS = ["--preset", "tiny", "--batch-size", "4", "--bptt", "8", "--lr", "2", "--seed", "3", "--threads", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _torchrun(launcher_args: list[str], train_args: list[str], **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher_args, "-m", "wordlm", "train", *train_args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **popen)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "state" / "state.safetensors").items() if k.startswith("model.")}


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k] - b[k]).abs().max().item()
        assert diff <= atol, f"{k}: {diff}"


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory) -> Path:
    """The single-process reference: one epoch, dropout 0."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("single") / "run"
    train(TrainConfig(**EXACT), corpus, run)
    return run


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _average_rows_rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same table on every rank, as DDP keeps it
    emb = nn.Embedding(50, 4)
    ids = torch.randint(0, 50, (3, 2), generator=torch.Generator().manual_seed(rank))  # each rank's own batch
    emb(ids).pow(2).sum().backward()
    dense = emb.weight.grad.clone()
    dist.all_reduce(dense)  # what DDP would have sent: the whole table
    average_touched_rows(Group(rank, world, "gloo"), emb.weight.grad, ids)

    model = RecurrentLM(preset("tiny", 50, dropout=0.0))  # same seed: the same weights on every rank
    net = data_parallel(model, "cpu", ["encoder.weight"])
    logits, _ = net(ids, model.init_hidden(2))
    nn.functional.cross_entropy(logits.view(-1, 50), ids.reshape(-1)).backward()  # DDP: all but the embedding
    grads = {"encoder": model.encoder.weight.grad, "decoder": model.decoder.weight.grad}
    torch.save({"dense": dense / world, "rows": emb.weight.grad, "ids": ids, **grads}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_average_touched_rows_is_the_dense_average(tmp_path):
    """Three ranks with different ids: sending only the rows some rank touched gives DDP's dense average;
    `data_parallel` leaves the embedding out of DDP."""
    world = 3
    mp.spawn(_average_rows_rank, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    touched = torch.cat([r["ids"].flatten() for r in results]).unique()
    for r in results:
        torch.testing.assert_close(r["rows"], r["dense"], rtol=0, atol=1e-7)
        nonzero = r["rows"].abs().sum(1).nonzero().flatten()
        assert nonzero.tolist() == touched.tolist()  # every touched row, from whichever rank, and no other
    # data_parallel left the embedding to average_touched_rows (its gradients still differ by rank), not
    # the decoder (DDP averaged it: the same on every rank)
    assert not torch.allclose(results[0]["encoder"], results[1]["encoder"])
    assert all(torch.allclose(results[0]["decoder"], r["decoder"]) for r in results)


def test_two_launchers_with_nnodes_2_compute_the_single_process_run(corpus_dir, corpus, single, tmp_path):
    """Two torchrun launchers (two "nodes" on 127.0.0.1, one rank each) train one model together; with
    dropout 0 it is the single-process run with the same global batch, to 1e-5."""
    run, port = tmp_path / "run", _free_port()
    args = ["--data", str(corpus_dir), "--out", str(run), *ARGS, "--epochs", "1", "--dropout", "0"]
    nodes = [
        _torchrun(
            ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank)]
            + ["--master-addr", "127.0.0.1", "--master-port", str(port)],
            args,
        )
        for rank in (0, 1)
    ]
    results = [_finish(p) for p in nodes]
    assert [rc for rc, _ in results] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert "DDP on 2 ranks (gloo), 2 of the 4 streams each" in results[0][1]
    assert "wordlm.train" not in results[1][1]  # logs come from rank 0 only
    _assert_close(_weights(single), _weights(run), atol=1e-5)
    state = json.loads((run / "state" / "state.json").read_text())
    assert state["world_size"] == 2 and state["run"]["commands"][0]["world_size"] == 2
    assert json.loads((run / "best" / "config.json").read_text())["meta"]["world_size"] == 2

    # the same run continues on one process: the 4 streams re-sharded onto 1 rank, still the single recipe
    torch.set_num_threads(1)
    longer = {**EXACT, "epochs": 2}
    train(TrainConfig(**longer), corpus, run, resume=True)
    train(TrainConfig(**longer), corpus, single, resume=True)
    _assert_close(_weights(single), _weights(run), atol=1e-5)


def test_tied_model_on_two_ranks_computes_the_single_process_run(corpus_dir, corpus, tmp_path):
    """A tied matrix (embedding and decoder: a dense gradient) goes through DDP whole, and the 2-rank
    run of a tied model is still the single-process one."""
    torch.set_num_threads(1)
    single, run = tmp_path / "single", tmp_path / "ddp"
    train(TrainConfig(**EXACT, tied=True), corpus, single)
    r = run_cli("train", "--data", str(corpus_dir), "--out", str(run), *ARGS, "--epochs", "1", "--dropout", "0",
                "--tied", "--nproc", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_close(_weights(single), _weights(run), atol=1e-5)


def test_killed_ddp_run_resumes_under_torchrun_to_the_uninterrupted_run(corpus_dir, tmp_path):
    """With dropout (drawn per rank), a 2-rank run killed with SIGKILL (the launcher and both ranks)
    resumes, under torchrun, to exactly the weights of an uninterrupted 2-rank run."""
    args = [*ARGS, "--epochs", "1", "--dropout", "0.2", "--save-every", "1"]
    ref = run_cli("train", "--data", str(corpus_dir), "--out", str(tmp_path / "ref"), *args, "--nproc", "2")
    assert ref.returncode == 0, ref.stderr[-3000:]

    run = tmp_path / "killed"
    train_args = ["--data", str(corpus_dir), "--out", str(run), *args]
    proc = _torchrun(["--standalone", "--nproc-per-node", "2"], train_args)
    state = wait_for_saved_batch(run, 40)
    for pid in [*_children(proc.pid), proc.pid]:  # the ranks run in sessions of their own
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    killed_at = json.loads(state.read_text())["run"]
    assert killed_at["epoch"] == 1, "the run should be killed mid-way through the first epoch"

    rc, err = _finish(_torchrun(["--standalone", "--nproc-per-node", "2"], [*train_args, "--resume"]))
    assert rc == 0, err[-3000:]
    assert f"resuming {run} at epoch 1, batch {killed_at['batch']}\n" in err  # same world size: no re-sharding
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors_are_one_line_from_rank_0(corpus_dir, tmp_path, capsys):
    """A setting the ranks would refuse is refused before they start; what rank 0 finds in the run
    directory, every rank acts on, and only rank 0 says it."""
    assert main(["train", "--data", str(corpus_dir), "--out", str(tmp_path / "r"), *ARGS, "--nproc", "3"]) == 2
    split = "wordlm train: error: --batch-size 4 does not split into 3 ranks' streams; use a multiple of 3\n"
    assert capsys.readouterr().err == split
    r = run_cli("train", "--data", str(corpus_dir), "--out", str(tmp_path / "r"), *ARGS, "--nproc", "2", "--resume")
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        f"wordlm train: error: --resume: {tmp_path / 'r'} has no training state to resume"
    ]
    assert not (tmp_path / "r").exists()


def test_nproc_is_taken_out_of_the_ranks_command_line():
    argv = ["-v", "train", "--out", "x", "--nproc", "2", "--lr", "1"]
    assert _without_nproc(argv) == ["-v", "train", "--out", "x", "--lr", "1"]
    assert _without_nproc(["train", "--nproc=4", "--npr", "2", "--num-layers", "3"]) == ["train", "--num-layers", "3"]
