"""Training: the pytorch/examples word_language_model recipe, resumable to the batch.

A run directory holds `best/` (a checkpoint: the best validation loss so far) and `state/` (everything
needed to continue: weights, hidden state, RNG state, optimizer, position, history). `state/` is
written atomically every `save_every` batches, at each epoch's end and when time runs out, so a
killed run resumes where it stopped and, on one thread with the same seed, ends with the same weights
as one that was never interrupted.

Under torchrun, every rank runs `train` on its share of the batch's streams with DDP (the how and the
why: wordlm.train.distributed); rank 0 writes `best/` and `state/`, and a run resumes on any number of ranks.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from wordlm.checkpoint import Checkpoint, save_checkpoint
from wordlm.checkpoint.fileio import atomic_write_dir, settle_dir
from wordlm.data import Corpus, batchify, bptt_batches, stream_slice
from wordlm.errors import WordLMError
from wordlm.progress import progress as progress_bar
from wordlm.tasks import evaluate
from wordlm.train.config import TrainConfig
from wordlm.train.distributed import (
    Group,
    average_touched_rows,
    data_parallel,
    gather_rank_state,
    rank_seed,
    restore_rank_state,
)
from wordlm.train.model import Hidden, RecurrentLM, TorchEngine, checkpoint_tensors, repackage_hidden

log = logging.getLogger(__name__)
STATE_MARKER = "state.json"
# settings that a resumed run may change: train longer, save more or less often, the arithmetic, and
# when the learning rate decays from here on
RESUMABLE_CHANGES = ("epochs", "save_every", "precision", "min_improvement")


@dataclass
class RunState:
    """Where a run stands: what `state/` holds besides tensors."""

    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # batches of that epoch already done
    lr: float = 20.0
    best_val: float = math.inf
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)  # one row per finished epoch
    commands: list[dict] = field(default_factory=list)  # each start or resume: where, and the command line


def _save_state(
    run_dir: Path,
    cfg: TrainConfig,
    st: RunState,
    model: RecurrentLM,
    hidden: Hidden,
    opt: torch.optim.Optimizer,
    vocab_sha256: str,
    group: Group,
) -> None:
    """Every rank calls this at the same batch (it gathers the ranks' hidden states and RNGs); rank 0 writes."""
    # named_parameters, not state_dict: a tied matrix once (safetensors refuses shared storage)
    weights = {f"model.{k}": v.detach() for k, v in model.named_parameters()}
    tensors = weights | gather_rank_state(group, hidden)
    if not group.main:
        return
    opt_sd = opt.state_dict()
    for pid, pstate in opt_sd["state"].items():
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
    doc = {
        "train_config": asdict(cfg),
        "run": asdict(st),
        "optim_groups": opt_sd["param_groups"],
        "vocab_sha256": vocab_sha256,
        "world_size": group.world_size,
    }

    def fill(tmp: Path) -> None:
        tensors_cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        (tmp / "state.safetensors").write_bytes(save(tensors_cpu))
        (tmp / STATE_MARKER).write_text(json.dumps(doc, indent=1), encoding="utf-8")

    atomic_write_dir(run_dir / "state", fill, marker=STATE_MARKER)


def _read_state(run_dir: Path, cfg: TrainConfig, vocab_sha256: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """state/'s document and tensors, checked against this run's settings and corpus."""
    state_dir = run_dir / "state"
    try:
        doc = json.loads((state_dir / STATE_MARKER).read_text(encoding="utf-8"))
        tensors = load_file(state_dir / "state.safetensors")
        saved_cfg, saved_vocab = doc["train_config"], doc.get("vocab_sha256")  # absent from early development states
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise WordLMError(f"{state_dir}: cannot resume, training state unreadable ({e!r})") from None
    if saved_vocab is not None and saved_vocab != vocab_sha256:
        raise WordLMError(f"cannot resume {run_dir}: it was trained on another corpus (vocabulary differs)")
    defaults = {f.name: f.default for f in fields(TrainConfig)}  # a field absent from an older state: its default
    diff = sorted(
        k for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES and saved_cfg.get(k, defaults[k]) != v
    )
    if diff:
        raise WordLMError(f"cannot resume {run_dir}: settings differ from the run's ({', '.join(diff)})")
    return doc, tensors


def _restore(
    saved: tuple[dict, dict[str, torch.Tensor]],
    cfg: TrainConfig,
    model: RecurrentLM,
    opt: torch.optim.Optimizer,
    device: str,
    group: Group,
) -> tuple[RunState, Hidden]:
    """Load a saved state into this rank: weights, optimizer, its RNG and its streams' hidden state
    (re-sharded when the run was saved by another number of ranks)."""
    doc, tensors = saved
    st = RunState(**doc["run"])
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    if model.cfg.tied:  # saved once (see _save_state); the decoder reads the embedding's matrix
        weights["decoder.weight"] = weights["encoder.weight"]
    model.load_state_dict(weights)
    opt_sd = {"state": {}, "param_groups": doc["optim_groups"]}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_sd["state"].setdefault(int(pid), {})[name] = v.to(device)
    opt.load_state_dict(opt_sd)
    return st, restore_rank_state(group, tensors, cfg.batch_size, device, (cfg.seed, st.epoch, st.batch))


def reuse_freed_memory() -> bool:
    """Let glibc's malloc keep what a training step frees for the next step; False where it cannot.

    A step allocates and frees the same large tensors every time: the logits, their log-softmax and
    gradients (tokens x vocab floats: 93 MB each at the tutorial's batch 20), the embedding's dense
    gradient (68 MB). glibc serves each allocation over 32 MB with a fresh mmap and unmaps it on free,
    so every step page-faults those hundreds of MB in again and the kernel zeroes them. Served from the
    heap, which is never trimmed, the memory comes back warm: the tutorial model on one thread of a
    2-core EPYC, 1.18 instead of 1.62 s per step (benchmarks/distributed.md). The cost: the heap keeps
    what it held at the peak (+240 MB of peak RSS there) until the process exits.
    Process-wide and idempotent; a no-op on other C libraries (macOS's has no mallopt, musl's ignores it).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: Windows, where CDLL needs a name
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    # mmap_max 0: no allocation is mmap'd; trim_threshold -1: freed memory never goes back (man mallopt)
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, -1))


def cpu_bf16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 primitives (the LSTM's among them): AVX-512 (BW, VL, DQ)
    or better; an AVX2-only CPU has none and autocast dies inside oneDNN (docs/design.md, "Known pitfalls")."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def effective_precision(precision: str, device: str) -> str:
    """The precision a run can use here: bf16 on a CPU without bf16 falls back to fp32, with a warning
    (a run resumed on another machine keeps going rather than dying)."""
    if precision == "bf16" and device == "cpu" and not cpu_bf16():
        log.warning("--precision bf16: this CPU has no bfloat16 support in oneDNN; training in fp32")
        return "fp32"
    return precision


def _prepare(
    cfg: TrainConfig, corpus: Corpus, run_dir: Path, resume: bool, max_minutes: float | None, world_size: int
) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Check the settings and the run directory; returns the saved state to resume from, if any.
    Rank 0 runs this (`Group.share`) and every rank acts on its verdict."""
    cfg.check(world_size)
    if max_minutes is not None and max_minutes <= 0:
        raise WordLMError(f"--max-minutes must be positive, got {max_minutes}")
    if len(corpus.train) // cfg.batch_size < 2:
        raise WordLMError(
            f"--batch-size {cfg.batch_size} leaves fewer than 2 tokens per stream of the {len(corpus.train)}-token "
            "training split; use a smaller batch"
        )
    has_state = (settle_dir(run_dir / "state") / STATE_MARKER).exists()
    if resume and not has_state:
        raise WordLMError(f"--resume: {run_dir} has no training state to resume")
    if not resume and has_state:
        raise WordLMError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --out")
    return _read_state(run_dir, cfg, corpus.vocab.sha256) if resume else None


def _validate(model: RecurrentLM, corpus: Corpus, cfg: TrainConfig, device: str, group: Group) -> float:
    """The validation loss, the same number on every rank. Ranks evaluate their share of the
    `eval_batch_size` streams and add up; rank 0's result is everyone's, so the lr schedule agrees."""
    lo, hi = group.streams(cfg.eval_batch_size)
    if hi == lo:  # more ranks than validation streams
        nll, count = group.sum([0.0, 0.0])
        return group.from_main([nll / count])[0]
    shard = stream_slice(corpus.valid, cfg.eval_batch_size, lo, hi)
    res = evaluate(TorchEngine(model, device=device), shard, bptt=cfg.bptt, batch_size=hi - lo)
    if not group.distributed:
        return res.loss
    nll, count = group.sum([res.loss * res.tokens, res.tokens])
    return group.from_main([nll / count])[0]


@dataclass
class _Run:
    """One process's part of a run: what every step and epoch of `train` reads and updates."""

    cfg: TrainConfig
    corpus: Corpus
    run_dir: Path
    device: str
    command: str | None
    group: Group
    model: RecurrentLM
    net: nn.Module  # the model, or DDP around it
    opt: torch.optim.Optimizer
    st: RunState
    hidden: Hidden
    train_data: torch.Tensor  # [n, this rank's streams]
    row_sparse: bool  # the untied embedding's gradient is averaged by touched rows, not by DDP
    deadline: float
    autocast: dict  # torch.autocast's arguments: bf16 where asked for and the device has it
    started: float = field(default_factory=time.monotonic)
    elapsed0: float = 0.0  # the run's time before this process started

    def save_state(self) -> None:
        self.st.elapsed_s = self.elapsed0 + time.monotonic() - self.started
        _save_state(
            self.run_dir, self.cfg, self.st, self.model, self.hidden, self.opt, self.corpus.vocab.sha256, self.group
        )


def train(
    cfg: TrainConfig,
    corpus: Corpus,
    run_dir: str | Path,
    *,
    resume: bool = False,
    max_minutes: float | None = None,
    device: str = "cpu",
    command: str | None = None,
) -> RunState:
    """Train (or continue training) a model; returns where the run stands when it stops.

    Stops after `cfg.epochs` epochs or, saving its state first, once `max_minutes` have passed. In a
    process group of several ranks (torchrun, `wordlm.train.distributed.setup`), every rank calls this with
    the same arguments and `device` its own: DDP over the ranks' shares of the batch's streams.
    """
    run = _start(cfg, corpus, Path(run_dir), resume, max_minutes, device, command)
    while run.st.epoch <= cfg.epochs:
        speed = _epoch(run)
        if speed is None:  # out of time: the state is saved
            return run.st
        _end_epoch(run, speed)
    return run.st


def _check_device(device: str) -> None:
    if device != "cpu" and not device.startswith("cuda"):
        raise WordLMError(f"--device must be cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise WordLMError("--device cuda: no CUDA device is available on this machine")
    if device == "cpu" and not reuse_freed_memory():
        log.debug("this C library's malloc cannot be told to keep freed memory; steps page-fault more")


def _start(
    cfg: TrainConfig,
    corpus: Corpus,
    run_dir: Path,
    resume: bool,
    max_minutes: float | None,
    device: str,
    command: str | None,
) -> _Run:
    """The model, optimizer, state (fresh or resumed) and this rank's data of a run."""
    _check_device(device)
    group = Group.current(device)
    saved = group.share(lambda: _prepare(cfg, corpus, run_dir, resume, max_minutes, group.world_size))
    B, per_rank = cfg.batch_size, cfg.batch_size // group.world_size  # global and per-rank streams
    torch.manual_seed(cfg.seed)
    model = RecurrentLM(cfg.model_config(len(corpus.vocab)))
    model.init_weights(cfg.init)
    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    if saved is not None:
        st, hidden = _restore(saved, cfg, model, opt, device, group)
        was = saved[0].get("world_size", 1)
        moved = (
            f" (its {B} streams re-sharded from {was} to {group.world_size} ranks)" if was != group.world_size else ""
        )
        log.info("resuming %s at epoch %d, batch %d%s", run_dir, st.epoch, st.batch, moved)
    else:
        st, hidden = RunState(lr=cfg.lr), model.init_hidden(per_rank)
        if group.distributed:  # dropout draws differ by rank (the weights were drawn alike above)
            torch.manual_seed(rank_seed(cfg.seed, group.rank))
    st.commands.append({"epoch": st.epoch, "batch": st.batch, "command": command, "world_size": group.world_size})
    net: nn.Module = model
    row_sparse = group.distributed and not model.cfg.tied  # a tied matrix's gradient is dense (the decoder's)
    if group.distributed:
        net = data_parallel(model, device, ["encoder.weight"] if row_sparse else [])
        log.info("DDP on %d ranks (%s), %d of the %d streams each", group.world_size, group.backend, per_rank, B)
    lo, hi = group.streams(B)
    train_data = torch.from_numpy(batchify(stream_slice(corpus.train, B, lo, hi), per_rank)).to(device)
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else math.inf
    bf16 = effective_precision(cfg.precision, device) == "bf16"
    autocast = dict(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    return _Run(
        cfg, corpus, run_dir, device, command, group, model, net, opt, st, hidden, train_data, row_sparse, deadline,
        autocast, elapsed0=st.elapsed_s,
    )  # fmt: skip


def _step(run: _Run, ids: torch.Tensor, targets: torch.Tensor) -> tuple[float, bool]:
    """One batch: forward, backward, the gradients averaged over the ranks, clipped, applied. Returns
    the loss averaged over the ranks and whether any rank ran out of time."""
    run.hidden = repackage_hidden(run.hidden)
    run.opt.zero_grad(set_to_none=True)
    with torch.autocast(**run.autocast):
        logits, hidden = run.net(ids, run.hidden)
        loss = F.cross_entropy(logits.view(-1, run.model.cfg.vocab_size).float(), targets.reshape(-1))
    run.hidden = tuple(h.float() for h in hidden)  # the carried state stays fp32 (and so does its save)
    # one collective a batch: the mean loss over the ranks, and whether any rank ran out of time
    loss_total, late = run.group.sum([loss.item(), float(time.monotonic() > run.deadline)])
    loss_value = loss_total / run.group.world_size
    if not math.isfinite(loss_value):  # the last saved state stays as it was
        raise run.group.error(
            f"training diverged at epoch {run.st.epoch}, batch {run.st.batch + 1} (loss {loss_value}); "
            "lower --lr or --clip"
        )
    loss.backward()  # DDP averages the ranks' gradients here, so clipping sees the global gradient
    if run.row_sparse:
        average_touched_rows(run.group, run.model.encoder.weight.grad, ids)
    nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip)
    run.opt.step()
    return loss_value, bool(late)


def _epoch(run: _Run) -> str | None:
    """Train the rest of the current epoch; its speed, or None if the time ran out (the state saved at
    that batch)."""
    cfg, st, group = run.cfg, run.st, run.group
    for g in run.opt.param_groups:
        g["lr"] = st.lr
    run.model.train()
    n_batches = math.ceil((run.train_data.size(0) - 1) / cfg.bptt)
    bar = progress_bar(
        total=n_batches, initial=st.batch, desc=f"epoch {st.epoch}", unit="batch", disable=not group.main
    )
    t_epoch, tokens, losses = time.monotonic(), 0, []
    for i, (ids, targets) in enumerate(bptt_batches(run.train_data, cfg.bptt)):
        if i < st.batch:
            continue
        loss, late = _step(run, ids, targets)
        st.batch += 1
        tokens += ids.numel() * group.world_size
        losses.append(loss)
        if st.batch % 10 == 0 or st.batch == n_batches:
            mean, tps = sum(losses) / len(losses), tokens / max(time.monotonic() - t_epoch, 1e-9)
            bar.set_postfix(loss=f"{mean:.3f}", ppl=f"{math.exp(min(mean, 50)):.0f}", tok_s=f"{tps:.0f}")
            losses = []
        bar.update(1)
        if st.batch % cfg.save_every == 0 or late:
            run.save_state()
        if late:
            bar.close()
            log.info("time limit reached at epoch %d, batch %d; state saved (%s)", st.epoch, st.batch,
                     _throughput(tokens, t_epoch, group))  # fmt: skip
            return None
    bar.close()
    return _throughput(tokens, t_epoch, group)


def _throughput(tokens: int, since: float, group: Group) -> str:
    """Of this epoch's training so far (the tokens of all ranks)."""
    tps = tokens / max(time.monotonic() - since, 1e-9)
    return f"{tps:,.0f} tokens/s on {group.world_size} rank{'s' if group.distributed else ''}"


def _end_epoch(run: _Run, speed: str) -> None:
    """Validate, keep the best checkpoint, decay the learning rate on a plateau, save the state."""
    cfg, st, group = run.cfg, run.st, run.group
    val_loss = _validate(run.model, run.corpus, cfg, run.device, group)
    run.model.train()
    gain = st.best_val - val_loss  # inf on the first epoch
    elapsed = run.elapsed0 + time.monotonic() - run.started
    st.history.append(
        {"epoch": st.epoch, "lr": st.lr, "val_loss": val_loss, "val_ppl": math.exp(val_loss), "elapsed_s": elapsed}
    )
    log.info("epoch %d: val loss %.4f (ppl %.1f), lr %g%s; %s", st.epoch, val_loss, math.exp(val_loss), st.lr,
             " (best)" if gain > 0 else "", speed)  # fmt: skip
    if gain > 0:
        st.best_val = val_loss
        if group.main:
            _save_best(run, val_loss)
    if gain <= cfg.min_improvement:
        st.lr /= cfg.lr_decay
    st.epoch, st.batch = st.epoch + 1, 0
    run.hidden = run.model.init_hidden(cfg.batch_size // group.world_size)
    run.save_state()


def _save_best(run: _Run, val_loss: float) -> None:
    st = run.st
    meta = {
        "command": run.command,
        "commands": st.commands,
        "train_config": asdict(run.cfg),
        "epochs": st.epoch,
        "val_loss": val_loss,
        "history": st.history,
        "hardware": " ".join(filter(None, (platform.machine(), platform.processor(), f"({run.device})"))),
        "world_size": run.group.world_size,
        "torch": torch.__version__,
    }
    ckpt = Checkpoint(run.model.cfg, run.corpus.vocab, checkpoint_tensors(run.model), meta=meta)
    save_checkpoint(ckpt, run.run_dir / "best")
