"""wl_check.c's numbers against the Python runtime's (numpy and wordlm.runtime only: no torch, so that it
also runs under QEMU with Debian's arm64 Python, tests/arm/run.sh).

    python compare.py input CKPT IN            write IN: tokens, targets and uniform numbers for CKPT
    python compare.py compare CKPT IN OUT ISA  OUT (wl_check run's) against Runtime on kernel ISA

tests/test_libwordlm.py imports the same functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# wl_check.c's SETTINGS: (temperature, top_k, top_p); 0 and 1.0 are "none" there
SETTINGS = [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.0, 0, 1.0), (1.0, 5, 1.0), (0.9, 0, 0.9), (1.3, 50, 0.8), (0.5, 1, 1.0)]


class Uniform:
    """An rng whose random() gives fixed numbers (those given to the C sampler)."""

    def __init__(self, *u: float) -> None:
        self.u = list(u)

    def random(self) -> float:
        return self.u.pop(0)


def make_input(vocab_size: int, steps: int, batch: int, n_u: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, (steps, batch))
    targets = rng.integers(0, vocab_size, (steps, batch))
    us = np.concatenate([[0.0, 0.5, 1 - 2**-53], rng.random(n_u - 3)])
    return ids, targets, us


def write_input(path: Path, ids: np.ndarray, targets: np.ndarray, us: np.ndarray) -> None:
    steps, batch = ids.shape
    Path(path).write_bytes(
        np.array([steps, batch, len(us)], np.int32).tobytes()
        + ids.astype(np.int32).tobytes()
        + targets.astype(np.int32).tobytes()
        + np.asarray(us, np.float64).tobytes()
    )


def read_input(path: Path):
    raw = Path(path).read_bytes()
    steps, batch, n_u = np.frombuffer(raw[:12], np.int32)
    tok = np.frombuffer(raw[12 : 12 + 8 * steps * batch], np.int32).astype(np.int64).reshape(2, steps, batch)
    return tok[0], tok[1], np.frombuffer(raw[12 + 8 * steps * batch :], np.float64)


def read_output(path: Path, steps: int, batch: int, n_u: int) -> dict:
    raw = Path(path).read_bytes()
    S, V = (int(v) for v in np.frombuffer(raw[:16], np.int64))
    pos = 16

    def take(dtype, *shape):
        nonlocal pos
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        a = np.frombuffer(raw[pos : pos + n], dtype).reshape(shape)
        pos += n
        return a

    out = {"steps": take(np.float32, steps, batch, V), "logits": take(np.float32, batch, V)}
    out["state"] = take(np.float32, batch, S)
    out["logprobs"] = take(np.float32, batch, V)
    out["nll"], out["total"] = take(np.float32, steps, batch), take(np.float64, 1)[0]
    out["top_ids"], out["top_values"] = take(np.int32, 10), take(np.float32, 10)
    out["samples"] = take(np.int32, len(SETTINGS), n_u)
    out["allocations"] = take(np.int64, 1)[0]
    assert pos == len(raw), "wl_check wrote more than this reads"
    return out


def per_stream(state: tuple[np.ndarray, ...]) -> np.ndarray:
    """The runtime's state (h [L, B, P], c [L, B, H]) as libwordlm's [B][h of every layer, c of every layer]."""
    return np.stack([np.concatenate([s[:, b].ravel() for s in state]) for b in range(state[0].shape[1])])


def same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def differences(rt, got: dict, ids: np.ndarray, targets: np.ndarray, us: np.ndarray) -> list[str]:
    """What differs between wl_check's numbers and Runtime `rt`'s (its kernel: native.active_isa())."""
    from wordlm.runtime import Sampling

    steps, batch = ids.shape
    bad = []
    state = rt.init_state(batch)
    for t in range(steps):  # one token at a time, the state carried
        z, state = rt.logits(ids[t : t + 1], state)
        if not same(got["steps"][t], z[0]):
            bad.append(f"step {t}'s logits")
    z, state = rt.logits(ids, rt.init_state(batch))
    if not same(got["logits"], z[-1]):
        bad.append("wl_eval_sequence's logits")
    if not same(got["state"], per_stream(state)):
        bad.append("wl_eval_sequence's state")
    lp, _ = rt.next_logprobs(ids, rt.init_state(batch))
    if not same(got["logprobs"], lp):
        bad.append("wl_next_logprobs")
    nll, _ = rt.token_nll(ids, targets, rt.init_state(batch))
    total, _ = rt.nll(ids, targets, rt.init_state(batch))
    if not same(got["nll"], nll) or got["total"] != total:
        bad.append(f"wl_nll (total {got['total']!r} vs {total!r})")
    words, values, _ = rt.top_k(ids, rt.init_state(batch), 10)
    k = min(10, rt.vocab_size)
    if list(got["top_ids"][:k]) != list(words[0]) or not same(got["top_values"][:k], values[0]):
        bad.append("wl_top_k")
    for (t, top_k, top_p), drawn in zip(SETTINGS, got["samples"], strict=True):
        sampling = Sampling(temperature=t, top_k=top_k or None, top_p=top_p if top_p < 1 else None)
        want = [int(rt.sample_next(ids, rt.init_state(batch), sampling, Uniform(*[u] * batch))[0][0]) for u in us]
        if list(drawn) != want:
            bad.append(f"wl_sample_next {sampling}: {list(drawn)} vs {want}")
    return bad


def float_errors(rt, got: dict, ids: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The largest relative error of each float32 number of a model with float parts (numpy's BLAS GEMMs
    against plain C: not the same order of additions), relative to the largest magnitude of its kind."""
    batch = ids.shape[1]

    def err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    out, state = {}, rt.init_state(batch)
    steps = []
    for t in range(ids.shape[0]):
        z, state = rt.logits(ids[t : t + 1], state)
        steps.append(err(got["steps"][t], z[0]))
    out["steps"] = max(steps)
    z, state = rt.logits(ids, rt.init_state(batch))
    out["logits"], out["state"] = err(got["logits"], z[-1]), err(got["state"], per_stream(state))
    out["logprobs"] = err(got["logprobs"], rt.next_logprobs(ids, rt.init_state(batch))[0])
    out["nll"] = err(got["nll"], rt.token_nll(ids, targets, rt.init_state(batch))[0])
    return out


def main(argv: list[str]) -> int:
    from wordlm import native
    from wordlm.checkpoint import load_checkpoint
    from wordlm.runtime import Runtime

    ck = load_checkpoint(argv[2])
    if argv[1] == "input":
        write_input(Path(argv[3]), *make_input(ck.config.vocab_size, 4, 2, 5))
        return 0
    ids, targets, us = read_input(Path(argv[3]))
    native._active = argv[5]  # the kernel of every call (WORDLM_ISA's effect, in this process)
    got = read_output(Path(argv[4]), *ids.shape, len(us))
    bad = differences(Runtime(ck), got, ids, targets, us)
    print(f"{argv[5]}: " + ("the same bits" if not bad else "differ: " + "; ".join(bad)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
