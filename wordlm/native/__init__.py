"""wordlm's native kernels, built by `pip install` from wordlm/native/*.c and called through ctypes: the
entry points that libwordlm's public header (wordlm/native/wordlm.h) declares and its C context is built
on, so that Python and C programs run the same functions.

Two operations (kernels.c says how and why): the int8 decoder GEMM with the loss fused (`decoder_nll`:
NLL of targets, logits, log-sum-exp), and an int8 recurrent stack (`recurrent`: LSTM with or without a
projection, GRU, RNN with tanh or ReLU). `reference_linear` and `reference_recurrent` (reference.py) are
their slow numpy references, the same integer arithmetic: the GEMMs equal it bit for bit
(tests/test_native.py).

Kernels: one per instruction set of this machine's architecture, `ISAS` (x86: portable, avx2,
avx512-vnni; ARM64: portable, neon, dotprod, i8mm; elsewhere portable C only). `available_isas()` lists
those this CPU runs, `active_isa()` the one every call uses unless it names one (`isa=`): the
environment variable WORDLM_ISA (one of ISAS) when set, so that tests and benchmarks can force a lower
one, else the best. Threads (`threads=`) change how fast, never the bits: the work is cut the same way
for any count.

WORDLM_NATIVE_LIB: the path of another build of the same sources to load instead of the installed one
(`load_library`), e.g. tests/native_simde.py's, whose AVX2 and AVX-512 VNNI tables are SIMDe's portable C.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from wordlm import cells
from wordlm.errors import WordLMError
from wordlm.native.reference import cell_step as cell_step  # re-exported: the runtime's float cells
from wordlm.native.reference import quantize_activations as quantize_activations  # and the references
from wordlm.native.reference import reference_linear as reference_linear
from wordlm.native.reference import reference_recurrent as reference_recurrent
from wordlm.settings import check_threads

PANEL = 16  # rows of W per packed panel (kernels.h: NR)
# every kernel of an architecture, lowest first, by kernels.c's number (its isa_names)
ISAS_BY_ARCH = {"x86": ("portable", "avx2", "avx512-vnni"), "arm64": ("portable", "neon", "dotprod", "i8mm")}
# platform.machine() as Linux, macOS and Windows spell it
_ARCH = {"x86_64": "x86", "amd64": "x86", "i386": "x86", "i686": "x86", "aarch64": "arm64", "arm64": "arm64"}


def architecture(machine: str | None = None) -> str:
    """'x86', 'arm64' or 'other' (portable C only) for platform.machine(), or for `machine`."""
    return _ARCH.get((platform.machine() if machine is None else machine).lower(), "other")


ISAS: tuple[str, ...] = ISAS_BY_ARCH.get(architecture(), ("portable",))  # this machine's kernels


def load_library(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """The kernels' library with its functions' signatures: the one `pip install` built, or the one at
    `path`, another build of the same sources (tests/native_simde.py's, whose AVX2 and AVX-512 VNNI
    kernels are SIMDe's portable C and run on any x86-64). `lib()` loads the one WORDLM_NATIVE_LIB
    names, when set."""
    if path is None:
        try:
            from wordlm.native import _kernels
        except ImportError as e:  # a source tree that was never installed
            raise WordLMError(f"wordlm's native kernels are not built ({e}); run `pip install -e .`") from e
        path = _kernels.__file__
    try:
        lib = ctypes.CDLL(os.fspath(path))  # ctypes releases the GIL during each call
    except OSError as e:
        raise WordLMError(f"wordlm's native kernels: cannot load {os.fspath(path)!r} ({e})") from e
    # raw addresses of arrays whose dtype and layout the wrappers below guarantee: ndpointer's checks
    # cost ~40 us per call, more than a layer's step
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.wl_best_isa.restype = c_int
    lib.wl_unit_block.restype = c_int
    lib.wl_decoder_nll.restype = c_int
    # the scratch (the last two: NULL, 0): each call allocates its buffers once; libwordlm's context passes its own
    size = ctypes.c_size_t
    lib.wl_decoder_nll.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, c_int, ptr, ptr, ptr, ptr, c_int, c_int]
    lib.wl_decoder_nll.argtypes += [ptr, size]
    lib.wl_rnn.restype = c_int
    lib.wl_rnn.argtypes = [c_int, ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, c_int, c_int, ptr, size]
    lib.wl_sample.restype = i64
    lib.wl_sample.argtypes = [ptr, i64, ctypes.c_float, ctypes.c_float, ctypes.c_double, ptr, ptr, c_int]
    lib.wl_max.restype = ctypes.c_float
    lib.wl_max.argtypes = [ptr, i64, c_int]
    lib.wl_embed.restype = c_int
    lib.wl_embed.argtypes = [ptr, i64, c_int, ptr, i64, i64, i64, ptr, i64, ptr]
    lib.wl_isa_name.restype = ctypes.c_char_p
    lib.wl_isa_name.argtypes = [c_int]
    lib.wl_cell_name.restype = ctypes.c_char_p
    lib.wl_cell_name.argtypes = [c_int]
    lib.wl_cell_info.restype = c_int
    lib.wl_cell_info.argtypes = [c_int, ptr, ptr, ptr]
    built = []
    while (name := lib.wl_isa_name(len(built))) is not None:
        built.append(name.decode())
    if tuple(built) != ISAS:  # never expected: a library built for another architecture than this Python's
        raise WordLMError(f"wordlm's native kernels are {built}, but this {platform.machine()} machine's are {ISAS}")
    lib.cell_ids = _cell_ids(lib)
    return lib


def _cell_ids(lib: ctypes.CDLL) -> dict[str, int]:
    """wordlm.cells' name -> the library's number of its C step, checked as the ISA list is: a registry
    cell whose C step is missing, or whose gates or state differ from the C table's, is refused."""
    table, gates, has_c, proj = {}, ctypes.c_int64(), ctypes.c_int(), ctypes.c_int()
    while (name := lib.wl_cell_name(len(table))) is not None:
        lib.wl_cell_info(len(table), *(ctypes.byref(v) for v in (gates, has_c, proj)))
        table[name.decode()] = (len(table), gates.value, bool(has_c.value), bool(proj.value))
    ids = {}
    for cell in cells.CELLS.values():
        if cell.kernel not in table:
            raise WordLMError(f"wordlm's native kernels have no cell step {cell.kernel!r} (cell {cell.name}); rebuild")
        number, *shape = table[cell.kernel]
        if shape != [cell.gates, cell.has_c, cell.projection]:
            raise WordLMError(f"cell {cell.name}: the registry's gates, c and projection differ from kernels.c's")
        ids[cell.name] = number
    return ids


_lib: ctypes.CDLL | None = None
_active: str | None = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = load_library(os.environ.get("WORDLM_NATIVE_LIB") or None)
    return _lib


def best_isa() -> str:
    """The fastest kernel this CPU runs."""
    return ISAS[lib().wl_best_isa()]


def available_isas() -> tuple[str, ...]:
    """Every kernel this CPU runs, lowest first (portable C always)."""
    return ISAS[: ISAS.index(best_isa()) + 1]


def active_isa() -> str:
    """The kernel calls use when they name none: WORDLM_ISA if set, else the best; read once per process.

    A WORDLM_ISA that names no kernel, or one this CPU does not run, is a WordLMError here (the first
    use of the kernels), not at import.
    """
    global _active
    if _active is None:
        forced = os.environ.get("WORDLM_ISA", "")
        _active = _checked(forced, "WORDLM_ISA") if forced else best_isa()
    return _active


def _checked(isa: str, what: str) -> str:
    runs = available_isas()
    if isa not in ISAS:
        raise WordLMError(f"{what}={isa!r} is not a kernel; choose one of {', '.join(runs)}")
    if isa not in runs:
        raise WordLMError(f"{what}={isa!r}: this CPU does not run it; choose one of {', '.join(runs)}")
    return isa


def _isa(isa: str | None) -> int:
    return ISAS.index(active_isa() if isa is None else _checked(isa, "isa"))


def _addr(a: np.ndarray | None) -> int | None:
    """The address of a C-contiguous array (None for None): ~1 us where a.ctypes.data takes ~3."""
    if a is None:
        return None
    return ctypes.addressof(ctypes.c_char.from_buffer(a)) if a.flags.writeable else a.ctypes.data


def _threads(threads: int) -> int:
    return check_threads(int(threads) if isinstance(threads, np.integer) else threads, "native kernels: threads")


@dataclass
class PackedLinear:
    """Weights [N, K] as the kernels read them: int8 codes in panels of 16 rows, [N/16][K/4][16][4].

    `fine`: its inputs go through the GEMM as two 7-bit codes, a row's and its residual's (~14 bits,
    twice the work; kernels.c), as a scheme's fine_activations asks for the input projections and the
    decoder. `codes4`: every code is within [-8, 7] (int4 weights; `pack_linear` finds out), which a
    kernel may use to add more products in int16 (the same sums: kernels_x86.c). `nibbles` (int4 codes,
    asked for): the panels hold two codes a byte, half the memory that generation reads per word
    (kernels.c says how)."""

    panels: np.ndarray  # int8, flat, 64-byte aligned (nibbles: [N/16][ceil(K/8)][16][4] bytes)
    scales: np.ndarray  # float32 [n_pad]
    sums: np.ndarray  # int32 [n_pad]: sum_k q[n, k], for the activations' zero point
    bias: np.ndarray  # float32 [n_pad]
    n: int  # real rows (words)
    k: int
    fine: bool = False
    codes4: bool = False
    nibbles: bool = False

    def __post_init__(self) -> None:  # the addresses every call passes, taken once (2.7 us each)
        self._args = tuple(a.ctypes.data for a in (self.panels, self.scales, self.sums, self.bias))

    @property
    def n_pad(self) -> int:
        return self.scales.size

    @property
    def flags(self) -> int:
        """The kernels' flags of this matrix (wordlm.h): WL_FINE 1, WL_CODES4 2, WL_NIBBLES 4."""
        return int(self.fine) | int(self.codes4) << 1 | int(self.nibbles) << 2


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + align, np.uint8)
    offset = -raw.ctypes.data % align
    return raw[offset : offset + nbytes]


def pack_linear(
    q: np.ndarray, scales: np.ndarray, bias: np.ndarray, fine: bool = False, nibbles: bool = False
) -> PackedLinear:
    """codes q int8 [N, K] (K a multiple of 4), one scale per row [N] and bias [N] -> PackedLinear.
    nibbles: int4 codes (within [-8, 7]) kept two a byte."""
    n, k = q.shape
    if q.dtype != np.int8 or k % 4 or scales.shape != (n,) or bias.shape != (n,):
        raise WordLMError(f"native kernels: need int8 codes [N, K], K a multiple of 4, [N] scales; got {q.shape}")
    codes4 = n > 0 and int(q.min()) >= -8 and int(q.max()) <= 7  # int4 weights, as stored or quantized
    if nibbles and not codes4:
        raise WordLMError("native kernels: nibbles need int4 codes, within [-8, 7]")
    n_pad, full = -(-n // PANEL) * PANEL, n // PANEL
    panels = _aligned(n_pad * k).view(np.int8)
    # [N/16, 16, K/4, 4] -> [N/16, K/4, 16, 4]: each 64 bytes hold 4 inputs of 16 words. Written
    # through views, panel by panel for the last (padded) one: no full-size temporary copy of q,
    # which would double the memory a model takes while it loads
    out = panels.reshape(n_pad // PANEL, k // 4, PANEL, 4)
    out[:full] = q[: full * PANEL].reshape(full, PANEL, k // 4, 4).transpose(0, 2, 1, 3)
    if full * PANEL < n:
        tail = np.zeros((PANEL, k), np.int8)
        tail[: n - full * PANEL] = q[full * PANEL :]
        out[full] = tail.reshape(PANEL, k // 4, 4).transpose(1, 0, 2)
    if nibbles:
        panels = _nibbles(out)

    def pad(v: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(n_pad, dtype)
        out[:n] = v
        return out

    return PackedLinear(
        panels=panels,
        scales=pad(scales, np.float32),
        sums=pad(q.sum(1, dtype=np.int32), np.int32),  # summed in int32 without an int32 copy of q
        bias=pad(bias, np.float32),
        n=n,
        k=k,
        fine=fine,
        codes4=codes4,
        nibbles=nibbles,
    )


def _nibbles(panels: np.ndarray) -> np.ndarray:
    """int8 panels [P, G, 16, 4] of int4 codes -> kernels.c's nibbles, flat: per pair of groups (2i, 2i + 1)
    of a panel 64 bytes, group 2i's codes + 8 in the low nibbles, group 2i + 1's in the high (0 + 8 past
    an odd last group)."""
    p, groups = panels.shape[:2]
    biased = panels.reshape(p, groups, 64).view(np.uint8) + np.uint8(8)  # codes -8..7 -> 0..15
    if groups % 2:
        biased = np.concatenate([biased, np.full((p, 1, 64), 8, np.uint8)], axis=1)
    out = _aligned(p * (biased.shape[1] // 2) * 64).reshape(p, -1, 64)
    np.bitwise_or(biased[:, 0::2], biased[:, 1::2] << 4, out=out)
    return out.reshape(-1).view(np.int8)


class DecoderOutput(NamedTuple):
    """What `decoder_nll` computed; None where it was not asked for."""

    nll: np.ndarray | None  # float32 [M]: -log p(target) per row (when targets are given)
    logits: np.ndarray | None  # float32 [M, N] (logits=True)
    lse: np.ndarray | None  # float32 [M]: log sum_n exp(logits[m, n]) (lse=True); logits - lse = log p


def decoder_nll(
    x: np.ndarray,
    dec: PackedLinear,
    targets: np.ndarray | None = None,
    logits: bool = False,
    *,
    lse: bool = False,
    isa: str | None = None,
    threads: int = 1,
) -> DecoderOutput:
    """The decoder on x float32 [M, K]: any of the NLL of targets [M], the logits [M, N], and each row's
    log-sum-exp, in one pass over the weights (see DecoderOutput).

    `isa`: one of available_isas() (None: active_isa()). `threads` >= 1: every count gives the same bits.
    """
    kernel, n_threads = _isa(isa), _threads(threads)
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 2 or x.shape[1] != dec.k:
        raise WordLMError(f"native decoder: activations must be [M, {dec.k}], got {list(x.shape)}")
    m = x.shape[0]
    tgt = None if targets is None else np.ascontiguousarray(targets, np.int64)
    if tgt is not None and tgt.shape != (m,):
        raise WordLMError(f"native decoder: {m} rows need {m} targets, got {tgt.size}")
    out = DecoderOutput(
        nll=None if tgt is None else np.empty(m, np.float32),
        logits=np.empty((m, dec.n), np.float32) if logits else None,
        lse=np.empty(m, np.float32) if lse else None,
    )
    if m == 0:
        return out
    panels, scales, sums, bias = dec._args
    rc = lib().wl_decoder_nll(
        _addr(x), m, dec.k, panels, dec.n, dec.n_pad, scales, sums, bias, dec.flags,
        *map(_addr, (tgt, *out)), kernel, n_threads, None, 0,
    )  # fmt: skip
    if rc != 0:
        raise WordLMError("native decoder: bad arguments (a target outside the vocabulary?)")
    return out


UNIT_BLOCK = 32  # hidden units per block of the recurrent layers' partition among threads (kernels.c)


def _unit_block_order(hidden: int, gates: int) -> np.ndarray:
    """The gates x H rows (torch's order: gate by gate, each [H]) in the kernels' order: block by block of
    UNIT_BLOCK units (the last one what remains), that block's rows of each gate in turn."""
    return np.concatenate(
        [
            np.arange(gate * hidden + u, gate * hidden + min(u + UNIT_BLOCK, hidden))
            for u in range(0, hidden, UNIT_BLOCK)
            for gate in range(gates)
        ]
    )


def _codes(p: PackedLinear) -> np.ndarray:
    """p's codes int8 [n, k] in row order (the inverse of pack_linear's panels, nibbles or not)."""
    panels = p.panels
    if p.nibbles:  # per pair of groups 64 bytes: the first group's codes + 8 low, the second's high
        pairs = panels.view(np.uint8).reshape(p.n_pad // PANEL, -1, 1, 64)
        both = np.concatenate([pairs & 15, pairs >> 4], axis=2).reshape(p.n_pad // PANEL, -1, 64)
        panels = (both[:, : p.k // 4].astype(np.int8) - np.int8(8)).reshape(-1)
    codes = panels.reshape(p.n_pad // PANEL, p.k // 4, PANEL, 4).transpose(0, 2, 1, 3).reshape(p.n_pad, p.k)
    return codes[: p.n]


def _rows_reordered(p: PackedLinear, order: np.ndarray) -> PackedLinear:
    """p with its rows (codes, scale, code sum, bias) in `order` (of its p.n real rows)."""
    return pack_linear(_codes(p)[order], p.scales[: p.n][order], p.bias[: p.n][order], p.fine, p.nibbles)


class _Matrix(ctypes.Structure):
    """wordlm.h's wl_packed: a PackedLinear's addresses and its flags (all NULL: no matrix)."""

    _fields_ = [*((name, ctypes.c_void_p) for name in ("panels", "scales", "sums", "bias")), ("flags", ctypes.c_int64)]


@dataclass
class PackedRecurrent:
    """A stack of recurrent layers of `cell` (a wordlm.cells name) for the kernels: (W_ih with b_ih, W_hh with
    b_hh) per layer, W_hr per layer in `proj` for an LSTM with a projection (torch's proj_size: h = W_hr
    (o * tanh(c))), and the array of their addresses that `wl_rnn` takes (built once).

    Given packed in torch's row order, W_ih and W_hh are kept with their gate rows in blocks of hidden
    units (`_unit_block_order`), so that a thread owns whole blocks: all the gates of its units.
    """

    layers: list[tuple[PackedLinear, PackedLinear]]
    cell: str = "lstm"
    proj: list[PackedLinear] | None = None

    def __post_init__(self) -> None:
        try:
            spec = cells.get(self.cell)
        except WordLMError as e:
            raise WordLMError(f"native kernels: {e}") from None
        if self.proj and (not spec.projection or len(self.proj) != len(self.layers)):
            raise WordLMError(f"native {self.cell}: a projection is an LSTM's, one W_hr per layer")
        gates, hidden, out = spec.gates, self.hidden, self.out_dim
        if any(p.n != gates * hidden for pair in self.layers for p in pair):
            raise WordLMError(
                f"native {self.cell}: every W_ih and W_hh needs {gates} x {hidden} gate rows (hidden = "
                f"{'W_hr' if self.proj else 'W_hh'}'s inputs)"
            )
        ks = [p.k for pair in self.layers[1:] for p in pair] + [self.layers[0][1].k]
        if any(k != out for k in ks) or any((p.n, p.k) != (out, hidden) for p in self.proj or []):
            raise WordLMError(f"native {self.cell}: W_hh and the upper layers' W_ih need {out} inputs (h's size)")
        if any(b.fine for _, b in self.layers) or any(p.fine for p in self.proj or []):
            raise WordLMError(f"native {self.cell}: only the input projections (W_ih) take fine activations")
        order = _unit_block_order(hidden, gates)
        self.layers = [(_rows_reordered(a, order), _rows_reordered(b, order)) for a, b in self.layers]
        hr = self.proj or [None] * len(self.layers)
        mats = [p for (a, b), r in zip(self.layers, hr, strict=True) for p in (a, b, r)]  # [layers][W_ih, W_hh, W_hr]
        self._matrices = (_Matrix * len(mats))(*(_Matrix(*p._args, p.flags) if p else _Matrix() for p in mats))

    @property
    def hidden(self) -> int:
        return self.proj[0].k if self.proj else self.layers[0][1].k

    @property
    def out_dim(self) -> int:
        """The size of h: the projection's, else hidden."""
        return self.proj[0].n if self.proj else self.hidden


def recurrent(
    x: np.ndarray, packed: PackedRecurrent, *state: np.ndarray, isa: str | None = None, threads: int = 1
) -> tuple[np.ndarray, ...]:
    """The int8 recurrent stack: x [S, B, in] and the state, h [L, B, P] (and c [L, B, H] for an LSTM) ->
    (y [S, B, P] of the top layer, *the new state); P is the projection's size (proj), else H.

    Torch's gate orders; the state is not modified (new arrays come back). `isa` as for decoder_nll;
    `threads` (up to one per UNIT_BLOCK hidden units) each compute the input projection, the recurrent
    GEMM and the cell of their own units (and rows of the projection), meeting once per step (twice
    with a projection); every count gives the same bits.
    """
    kernel, n_threads = _isa(isa), _threads(threads)
    x = np.ascontiguousarray(x, np.float32)
    n_layers, hidden, out = len(packed.layers), packed.hidden, packed.out_dim
    has_c = cells.CELLS[packed.cell].has_c
    batch = x.shape[1] if x.ndim == 3 else 0
    shapes = [(n_layers, batch, out), (n_layers, batch, hidden)][: 2 if has_c else 1]
    if x.ndim != 3 or packed.layers[0][0].k != x.shape[2] or [np.shape(s) for s in state] != shapes:
        raise WordLMError(
            f"native {packed.cell}: shapes do not fit (x {list(x.shape)}, state {[list(np.shape(s)) for s in state]})"
        )
    state = tuple(np.array(s, np.float32, order="C") for s in state)  # copies: the kernel updates them in place
    y = np.empty((x.shape[0], batch, out), np.float32)
    c = _addr(state[1]) if has_c else None
    recurrent_into(_addr(x), x.shape[0], batch, packed, _addr(state[0]), c, _addr(y), kernel, n_threads)
    return (y, *state)


def kernel_index(isa: str | None = None) -> int:
    """The number of kernel `isa` (None: active_isa()) as the raw entry points below take it: resolved
    once by a caller that calls often (wordlm.nn)."""
    return _isa(isa)


def linear_into(x: int, m: int, dec: PackedLinear, out: int, kernel: int, threads: int) -> None:
    """`decoder_nll`'s logits by address, for a caller that owns its buffers (wordlm.nn's modules): x
    float32 [m, dec.k] and out float32 [m, dec.n], C-contiguous, m >= 1. No checks beyond the kernel's:
    a one-token call's Python overhead is most of its time."""
    panels, scales, sums, bias = dec._args
    args = (x, m, dec.k, panels, dec.n, dec.n_pad, scales, sums, bias, dec.flags)
    rc = lib().wl_decoder_nll(*args, None, None, out, None, kernel, threads, None, 0)  # no scratch: one allocation
    if rc != 0:
        raise WordLMError("native linear: bad arguments")


def recurrent_into(
    x: int, steps: int, batch: int, packed: PackedRecurrent, h: int, c: int | None, y: int, kernel: int, threads: int
) -> None:
    """`recurrent` by address, the state updated in place: x float32 [steps, batch, in], h [L, batch, P]
    (c [L, batch, H] for an LSTM), y [steps, batch, P], all C-contiguous and caller-owned (the lean
    path of wordlm.nn, as linear_into)."""
    raw = packed.__dict__.get("_raw")
    if raw is None:  # what every call passes, taken once
        sizes = (packed.layers[0][0].k, packed.hidden, packed.out_dim if packed.proj else 0, len(packed.layers))
        raw = packed._raw = (lib().wl_rnn, lib().cell_ids[packed.cell], sizes, ctypes.addressof(packed._matrices))
    wl_rnn, cell, sizes, weights = raw
    rc = wl_rnn(cell, x, steps, batch, *sizes, weights, h, c, y, kernel, threads, None, 0)
    if rc != 0:
        raise WordLMError(f"native {packed.cell}: bad arguments (sizes must be multiples of 4)")


@dataclass
class PackedEmbedding:
    """An embedding of codes of `bits` (2-8), packed as stored (table [V, row bytes], C-contiguous:
    wordlm.quant.primitives.pack_bits), float32 scales [V, groups] and `dim` codes a row, with the
    addresses every lookup passes, taken once."""

    table: np.ndarray
    scales: np.ndarray
    bits: int
    dim: int

    def __post_init__(self) -> None:
        self.table, self.scales = np.asarray(self.table), np.ascontiguousarray(self.scales, np.float32)
        if not self.table.flags.c_contiguous or self.table.ndim != 2 or self.scales.ndim != 2:
            raise WordLMError("native embedding: need a C-contiguous table [V, bytes] and scales [V, groups]")
        t, s = self.table, self.scales
        self._args = (t.ctypes.data, t.shape[1], self.bits, s.ctypes.data, s.shape[1], t.shape[0], self.dim)


def embed(emb: PackedEmbedding, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (any shape) of the embedding, each code times its group's scale -> float32 [*ids.shape,
    dim] (embed.c: one C call where unpacking in numpy took ~10)."""
    ids = np.ascontiguousarray(ids, np.int64)
    out = np.empty((*ids.shape, emb.dim), np.float32)
    if ids.size:
        embed_into(emb, ids.ctypes.data, ids.size, out.ctypes.data)
    return out


def embed_into(emb: PackedEmbedding, ids: int, n: int, out: int) -> None:
    """`embed` by address: ids int64 [n] -> out float32 [n, dim], caller-owned (the lean paths')."""
    if lib().wl_embed(*emb._args, ids, n, out) != 0:
        raise WordLMError(f"native embedding: bad arguments (ids must lie in [0, {emb.table.shape[0]}))")


def sample(z: np.ndarray, temperature: float, u: float, isa: str | None = None) -> int:
    """Draw a word from logits z float32 [V] at `temperature` > 0 by inverse CDF at u in [0, 1)
    (sample.c): the word i with cdf[i-1] <= u * total < cdf[i] of the weights exp((z - max z) / T)."""
    z = np.ascontiguousarray(z, np.float32)
    w, sums = np.empty(z.size, np.float32), np.empty(z.size // 256 + 1, np.float64)
    return sample_into(z.ctypes.data, z.size, temperature, u, w.ctypes.data, sums.ctypes.data, _isa(isa))


def sample_into(z: int, n: int, temperature: float, u: float, w: int, sums: int, kernel: int) -> int:
    """`sample` by address: logits z float32 [n], scratch w float32 [n] and sums float64 [n // 256 + 1],
    on kernel number `kernel` (kernel_index)."""
    zmax = lib().wl_max(z, n, kernel) if n > 0 else 0.0
    i = lib().wl_sample(z, n, zmax, 1.0 / temperature, u, w, sums, kernel)
    if i < 0:
        raise WordLMError(f"native sampler: bad arguments (temperature {temperature}, u {u}, {n} words)")
    return int(i)


def max_value(z: np.ndarray, isa: str | None = None) -> float:
    """max(z) of float32 logits [n >= 1] in the kernels' vector registers (the sampler's first pass)."""
    z = np.ascontiguousarray(z, np.float32)
    if z.size < 1:
        raise WordLMError("native max: no values")
    return float(lib().wl_max(z.ctypes.data, z.size, _isa(isa)))
