"""Where a DDP step's time goes on this CPU: one training step of the tutorial model, timed per step.

    .venv/bin/python benchmarks/ddp_step.py single              # one process, global batch 20
    torchrun --standalone --nproc-per-node 2 benchmarks/ddp_step.py ddp    # 2 ranks x 10 streams, as wordlm trains
    torchrun --standalone --nproc-per-node 2 benchmarks/ddp_step.py ddp-dense  # DDP all-reduces every gradient whole
    torchrun --standalone --nproc-per-node 2 benchmarks/ddp_step.py no-comm  # the same, gradients not sent

`ddp` is what `wordlm train` does: DDP for every weight but the embedding, whose touched rows are
averaged after backward (`wordlm.train.distributed.average_touched_rows`); `ddp-dense` leaves all 114 MB of
gradients to DDP's all-reduce (gloo over loopback TCP). `no-comm` registers a DDP communication hook
that returns each gradient bucket untouched: the ranks compute as in `ddp-dense` but exchange nothing,
so `ddp-dense` minus `no-comm` is what the dense all-reduce costs. Wall and CPU seconds (this
process's, all its threads) per step, medians after two warm-up steps; with several ranks, the
slowest rank's.
One thread per process (`torch.set_num_threads(1)`), WikiText-2's first tokens, bptt 35. The process
keeps freed memory for reuse as `wordlm train` does (`reuse_freed_memory`); `--malloc system` leaves
glibc's defaults (each large tensor mmap'd afresh), to measure what that costs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn as nn

from wordlm.config import preset
from wordlm.data import batchify, load_corpus
from wordlm.train import reuse_freed_memory
from wordlm.train.distributed import Group, average_touched_rows, data_parallel
from wordlm.train.model import RecurrentLM


def keep_local(state, bucket):  # unannotated: DDP refuses the strings that postponed annotations make
    """A DDP comm hook that sends nothing: every rank keeps its own gradient."""
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["single", "ddp", "ddp-dense", "no-comm"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=20, help="global batch")
    ap.add_argument("--malloc", choices=["reuse", "system"], default="reuse")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.malloc == "reuse":
        reuse_freed_memory()
    distributed = args.mode != "single"
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    model = RecurrentLM(preset("tutorial", 33278))
    net: nn.Module = model
    if distributed:
        net = data_parallel(model, "cpu", ["encoder.weight"] if args.mode == "ddp" else [])
        if args.mode == "no-comm":
            net.register_comm_hook(None, keep_local)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    criterion = nn.CrossEntropyLoss()
    per_rank = args.batch_size // world
    data = torch.from_numpy(batchify(load_corpus().train[:1_000_000], args.batch_size))
    data = data[:, rank * per_rank : (rank + 1) * per_rank]
    hidden = model.init_hidden(per_rank)
    wall, cpu = [], []
    for i in range(args.steps):
        ids, targets = data[i * 35 : (i + 1) * 35], data[i * 35 + 1 : (i + 1) * 35 + 1]
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        logits, hidden = net(ids, tuple(h.detach() for h in hidden))
        criterion(logits.view(-1, 33278), targets.reshape(-1)).backward()
        if args.mode == "ddp":
            average_touched_rows(Group(rank, world, "gloo"), model.encoder.weight.grad, ids)
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    medians = torch.tensor([statistics.median(wall[2:]), statistics.median(cpu[2:]), peak_mb], dtype=torch.float64)
    if distributed:
        dist.all_reduce(medians, op=dist.ReduceOp.MAX)
        dist.destroy_process_group()
    if rank == 0:
        w, c, peak = medians.tolist()
        tps = 35 * args.batch_size / w
        print(
            f"{args.mode} ({args.malloc} malloc): {world} x {per_rank} streams: {w:.3f} s/step wall, {c:.3f} s CPU, "
            f"{tps:,.0f} tokens/s, peak RSS {peak:,.0f} MB a process"
        )


if __name__ == "__main__":
    main()
