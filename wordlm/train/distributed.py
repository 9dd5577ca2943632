"""Training on several processes: DistributedDataParallel under torchrun, the single-process recipe.

The recipe trains B independent token streams (the columns of `wordlm.data.batchify`) with a loss that
is the mean over all of them. Rank r of N owns streams [rB/N, (r+1)B/N) of that same layout, and DDP
averages the ranks' gradients in backward: with equal stream counts that average is the gradient of
the mean over all B streams, so a DDP run computes the single-process run with the same B, up to the
order of float sums (and dropout, which each rank draws from its own (seed, rank) generator).
Gradient clipping runs after backward, on the averaged (global) gradient, the same on every rank.
An untied input embedding is averaged apart from DDP, by the rows the batch touched (`data_parallel`).

What a run saves does not depend on the world size: the weights and the optimizer (identical on every
rank), the position, the hidden state of all B streams in the single-process layout, and one RNG
state per rank. A run may therefore resume on another number of ranks: the streams are re-sharded
(a rank that did not exist before draws its dropout from a fresh (seed, rank, position) generator).

One process (no torchrun, or a world of 1) never touches torch.distributed: `Group()` is a no-op and
the single-process path stays, bit for bit, what it was. CPU ranks talk through gloo, GPU ranks
through NCCL, one GPU per rank (`LOCAL_RANK`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from wordlm.errors import WordLMError

T = TypeVar("T")


class EchoedError(WordLMError):
    """An error that every rank raises alike because rank 0 found it and shared it: rank 0 reports it,
    the others exit quietly (so that a bad setting is one line, not one per rank)."""


def rank_seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from integers (seed, rank, ...): nearby inputs give unrelated streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class Group:
    """This process's place in the run, and the few collectives training needs (no-ops on one process)."""

    rank: int = 0
    world_size: int = 1
    backend: str = ""  # "gloo" or "nccl"; "" for a single process
    device: str = "cpu"  # where collectives' tensors live: NCCL moves only CUDA tensors

    @classmethod
    def current(cls, device: str) -> Group:
        """The process group this process has joined (see `setup`), or a single process."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()), device)
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def streams(self, n: int) -> tuple[int, int]:
        """This rank's share [start, stop) of n streams (as even as it goes)."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def error(self, message: str) -> WordLMError:
        """The error for a failure that every rank meets alike: rank 0 reports it, the others exit quietly."""
        return WordLMError(message) if self.main else EchoedError(message)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def from_main(self, values: Sequence[float]) -> list[float]:
        """Rank 0's values on every rank: decisions (the lr schedule) that must not differ by a bit."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return t.tolist()

    def gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t` (same shape and dtype on all), in rank order, on the CPU."""
        if not self.distributed:
            return [t]
        t = t.to(self.device).contiguous()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def share(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs `fn` (reads the run directory, checks it); every rank gets its result, or raises
        its error (`EchoedError` on the other ranks). Rank 0 alone touches the files, so a run whose
        other nodes do not see the run directory works, and no rank can decide differently."""
        if not self.distributed:
            return fn()
        box: list = [None]
        error: Exception | None = None
        if self.main:
            try:
                box[0] = (True, fn())
            except (WordLMError, OSError) as e:
                error, box[0] = e, (False, str(e))
        dist.broadcast_object_list(box, src=0, device=torch.device(self.device) if self.backend == "nccl" else None)
        ok, value = box[0]
        if error is not None:
            raise error
        if not ok:
            raise EchoedError(value)
        return value


def setup(device: str) -> str:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1): gloo on the
    CPU, NCCL on CUDA with one GPU per rank (`--device cuda` becomes cuda:LOCAL_RANK). Returns this
    rank's device; without torchrun, does nothing and returns `device`."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if device != "cuda":
            raise WordLMError(f"--device {device}: under torchrun each rank takes GPU LOCAL_RANK; pass --device cuda")
        if torch.cuda.device_count() <= local_rank:
            raise WordLMError(f"rank with LOCAL_RANK {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=torch.device(device))
    elif device == "cpu":
        dist.init_process_group("gloo")
    else:
        raise WordLMError(f"--device must be cpu or cuda, got {device!r}")
    return device


def data_parallel(model: nn.Module, device: str, row_sparse: Sequence[str] = ()) -> DistributedDataParallel:
    """DDP over `model`, but for the parameters named in `row_sparse` (embedding tables, whose gradient
    is zero outside the rows of the batch's ids): the caller averages those with `average_touched_rows`
    after backward. DDP would all-reduce them whole every step; an untied WikiText-2 embedding is 68 MB of
    the tutorial model's 114 MB of gradients, of which a batch of 20 x 35 tokens touches at most 700
    rows (1.4 MB); a WikiText-103 vocabulary (267k words) makes it 547 MB. A tied matrix cannot be
    left out (DDP finds it again under the decoder's name) and need not be: its gradient is dense."""
    if row_sparse:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(row_sparse))
    return DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)


def average_touched_rows(group: Group, grad: torch.Tensor, ids: torch.Tensor) -> None:
    """Average an embedding's gradient over the ranks in place, moving only the rows that some rank's
    batch `ids` touched: an all-gather of the ids, then one all-reduce of those rows. Every other row is
    zero on every rank, so the result is DDP's dense average (up to the order of float sums). Every
    rank calls it at the same step, with ids of the same shape."""
    flat = ids.reshape(-1).contiguous()
    rows = torch.cat(group.gather(flat)).to(grad.device).unique()
    part = grad.index_select(0, rows)
    dist.all_reduce(part)
    grad.index_copy_(0, rows, part.div_(group.world_size))


def teardown() -> None:
    """Leave the process group. What still holds it (DDP's reducer, in a reference cycle of the wrapped
    module) is collected first: freed only at interpreter exit, after the group was destroyed, gloo's
    threads were torn down unjoined and the rank died with "terminate called without an active
    exception" (status -6), now and then, on a loaded machine."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> None:
    """`wordlm ARGV` on `nproc` ranks of this machine, as `torchrun --standalone --nproc-per-node N -m
    wordlm ARGV` would run it (torch's launcher, in this process). A rank that failed with a wordlm
    error (status 2) has said why in one line: exit with that status, without torchrun's report."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "WORLD_SIZE" in os.environ:
        raise WordLMError("--nproc: already running under torchrun; pass --nproc-per-node to torchrun instead")
    # as torchrun does, so that N ranks do not each take every core (unless the user chose)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,
    )
    sys.stdout.flush()
    try:
        elastic_launch(config, sys.executable)("-m", "wordlm", *argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode == 2:
            raise SystemExit(2) from None
        raise WordLMError(f"rank {rank} of {nproc} failed (exit status {failure.exitcode})") from None


def _rng_key(kind: str, rank: int) -> str:
    """Rank 0's generator under the single-process name (`rng.cpu`), rank r's with a suffix."""
    return f"rng.{kind}" if rank == 0 else f"rng.{kind}.{rank}"


def gather_rank_state(group: Group, hidden: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """What differs by rank, in a form that does not depend on the world size: the hidden state of all
    B streams in the single-process layout (`hidden.h`, `hidden.c`: [layers, B, size]), and each
    rank's RNG states. Every rank calls it at the same batch."""
    tensors = {f"hidden.{name}": torch.cat(group.gather(h), dim=1) for name, h in zip("hc", hidden, strict=False)}
    for rank, rng in enumerate(group.gather(torch.get_rng_state())):
        tensors[_rng_key("cpu", rank)] = rng
    if torch.cuda.is_available():
        for rank, rng in enumerate(group.gather(torch.cuda.get_rng_state())):
            tensors[_rng_key("cuda", rank)] = rng
    return tensors


def restore_rank_state(
    group: Group, tensors: dict[str, torch.Tensor], batch_size: int, device: str, position: tuple[int, int, int]
) -> tuple[torch.Tensor, ...]:
    """This rank's RNG back as saved, and its streams of the saved hidden state. A rank that did not
    exist when the state was saved (the run grew) seeds its generator from (seed, rank, epoch, batch):
    `position`."""
    seed, *where = position
    if _rng_key("cpu", group.rank) in tensors:
        torch.set_rng_state(tensors[_rng_key("cpu", group.rank)])
    else:
        torch.manual_seed(rank_seed(seed, group.rank, *where))
    if _rng_key("cuda", group.rank) in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[_rng_key("cuda", group.rank)])
    lo, hi = group.streams(batch_size)
    names = [k for k in ("hidden.h", "hidden.c") if k in tensors]
    return tuple(tensors[k][:, lo:hi].contiguous().to(device) for k in names)
