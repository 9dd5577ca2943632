"""wordlm.nn's modules against their float modules, across the arguments torch takes; against torch.ao's
error; and the exact invariants of per-row arithmetic (a sequence gives the same bits alone or packed
with others, padded sizes give the unpadded arithmetic)."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_helpers import first, rmse, torch_ao, trained_like
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from wordlm import native
from wordlm.nn import quantize_dynamic
from wordlm.quant import SCHEMES, QSpec

FAMILIES = {
    "lstm": (nn.LSTM, {}),
    "gru": (nn.GRU, {}),
    "rnn_tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# int8 weights and 7-bit activations, through a few layers and steps: errors of ~1% of the outputs'
# range (of 400 random cases: 99th percentile 5% at the worst element, 2.7% RMS; worst 7% and 5%, a
# 2-unit ReLU RNN); a single unit more (it saturates: hidden 1 is in the reference test instead); a
# wrong state, direction or order is tens of percent
TOLERANCE, RMS_TOLERANCE = 0.15, 0.08
# the tests against float hold errors to a tolerance: their examples are the same at every run (a rare
# saturating case must not fail one CI run in many); the exact tests draw new ones each time


@st.composite
def recurrent_cases(draw):
    cell = draw(st.sampled_from(list(FAMILIES)))
    hidden = draw(st.integers(2, 21))
    return dict(
        cell=cell,
        input_size=draw(st.integers(1, 19)),
        hidden=hidden,
        layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        proj=draw(st.integers(1, hidden - 1)) if cell == "lstm" and hidden > 1 and draw(st.booleans()) else 0,
        bias=draw(st.booleans()),
        lengths=draw(st.lists(st.integers(1, 7), min_size=1, max_size=5)),
        layout=draw(st.sampled_from(["dense", "strided", "unbatched", "packed", "packed_sorted"])),
        dtype=draw(st.sampled_from(DTYPES)),
        with_state=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
    )


def build(case) -> nn.RNNBase:
    torch.manual_seed(case["seed"])
    cls, kw = FAMILIES[case["cell"]]
    kw = {**kw, "proj_size": case["proj"]} if case["proj"] else kw
    m = cls(
        case["input_size"], case["hidden"], case["layers"], bias=case["bias"], batch_first=case["batch_first"],
        bidirectional=case["bidirectional"], dropout=0.3 if case["layers"] > 1 else 0.0, **kw,
    )  # fmt: skip
    return trained_like(m, case["seed"]).eval()


def make_inputs(case, m: nn.RNNBase):
    """(input, state) as the case lays them out, float32; the state None or the float module's shape."""
    lengths = case["lengths"] if case["layout"].startswith("packed") else [max(case["lengths"])] * len(case["lengths"])
    if case["layout"] == "unbatched":
        lengths = lengths[:1]
    batch, steps = len(lengths), max(lengths)
    x = torch.randn(steps, batch, case["input_size"])
    if case["layout"] == "strided":  # every other column of a wider tensor
        x = torch.randn(steps, batch, 2 * case["input_size"])[..., ::2]
    state = None
    if case["with_state"]:
        n, out = m.num_layers * (2 if m.bidirectional else 1), m.proj_size or m.hidden_size
        state = [0.5 * torch.randn(n, batch, out)] + (
            [0.5 * torch.randn(n, batch, m.hidden_size)] if case["cell"] == "lstm" else []
        )
        state = [s[:, 0] if case["layout"] == "unbatched" else s for s in state]
    if case["layout"] == "unbatched":
        x = x[:, 0]
    elif case["batch_first"]:
        x = x.transpose(0, 1)
    if case["layout"] == "packed_sorted":
        lengths = sorted(lengths, reverse=True)
    if case["layout"].startswith("packed"):
        x = pack_padded_sequence(
            x, torch.tensor(lengths), case["batch_first"], enforce_sorted=case["layout"] == "packed_sorted"
        )
    return x, state


def cast(x, dtype):
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.to(dtype))
    if isinstance(x, (list, tuple)):
        return tuple(cast(t, dtype) for t in x)
    return x.to(dtype)


def call(m, x, state, cell):
    if state is None:
        return m(x)
    return m(x, tuple(state) if cell == "lstm" else state[0])


def flat(out) -> list[torch.Tensor]:
    """Every tensor of a recurrent module's output: y (a packed one's data) and the state."""
    y, state = out
    return [y.data if isinstance(y, PackedSequence) else y, *(state if isinstance(state, tuple) else (state,))]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(recurrent_cases())
def test_recurrent_modules_match_the_float_module(case):
    m = build(case)
    q = quantize_dynamic(m)
    x, state = make_inputs(case, m)
    dtype = case["dtype"]
    with torch.no_grad():
        ours = call(q, cast(x, dtype), cast(state, dtype), case["cell"])
        ref = call(copy.deepcopy(m).double(), cast(x, torch.float64), cast(state, torch.float64), case["cell"])
        shapes = call(m, x, state, case["cell"])
    if isinstance(x, PackedSequence):
        assert torch.equal(ours[0].batch_sizes, ref[0].batch_sizes)
        assert ours[0].unsorted_indices is None or torch.equal(ours[0].unsorted_indices, ref[0].unsorted_indices)
    for a, r, s in zip(flat(ours), flat(ref), flat(shapes), strict=True):
        assert a.dtype == dtype and a.shape == s.shape
        err, scale = (a.double() - r).abs().max().item(), max(r.abs().max().item(), 0.1)
        assert err <= TOLERANCE * scale, (err, scale)
        assert rmse(a, r) <= RMS_TOLERANCE * max(rmse(r, torch.zeros_like(r)), 0.05)


@pytest.mark.parametrize("layout", ["dense", "strided", "unbatched", "packed", "packed_sorted"])
@pytest.mark.parametrize(
    ("cell", "input_size", "hidden", "proj"), [("lstm", 8, 12, 0), ("gru", 7, 9, 0), ("lstm", 5, 11, 6)]
)
def test_every_layout_matches_the_float_module(layout, cell, input_size, hidden, proj):
    """The layouts one by one (hypothesis draws them at random), bidirectional, batch-first, with a state."""
    sizes = dict(cell=cell, input_size=input_size, hidden=hidden, proj=proj, layers=2, lengths=[5, 2, 7], seed=3)
    flags = dict(bidirectional=True, batch_first=True, bias=True, layout=layout, dtype=torch.float32, with_state=True)
    case = {**sizes, **flags}
    test_recurrent_modules_match_the_float_module.hypothesis.inner_test(case)


@settings(max_examples=30, deadline=None)
@given(recurrent_cases())
def test_a_sequence_gives_the_same_bits_alone_as_in_any_batch(case):
    """Per-row arithmetic: a sequence's outputs and final state do not depend on its neighbours, on
    packing, sorting, batch_first or strides (so this holds bit for bit)."""
    case = {**case, "layout": "packed" if case["layout"] == "unbatched" else case["layout"]}
    m = build(case)
    q = quantize_dynamic(m)
    x, state = make_inputs(case, m)
    with torch.no_grad():
        y, st_all = flat(call(q, x, state, case["cell"]))[0], flat(call(q, x, state, case["cell"]))[1:]
        out = call(q, x, state, case["cell"])[0]
        padded_y, lengths = pad_packed_sequence(out, False) if isinstance(out, PackedSequence) else (out, None)
        if lengths is None:
            padded_y = padded_y.transpose(0, 1) if case["batch_first"] else padded_y
            lengths = [padded_y.shape[0]] * padded_y.shape[1]
        dense = pad_packed_sequence(x, False)[0] if isinstance(x, PackedSequence) else x
        dense = dense.transpose(0, 1) if case["batch_first"] and not isinstance(x, PackedSequence) else dense
        for b, n in enumerate(int(v) for v in lengths):
            xb = dense[:n, b : b + 1]
            xb = xb.transpose(0, 1) if case["batch_first"] else xb
            sb = None if state is None else [s[:, b : b + 1] for s in state]
            yb, *sb_out = flat(call(q, xb, sb, case["cell"]))
            yb = yb.transpose(0, 1) if case["batch_first"] else yb
            assert torch.equal(yb[:, 0], padded_y[:n, b])
            for whole, alone in zip(st_all, sb_out, strict=True):
                assert torch.equal(whole[:, b], alone[:, 0])
    del y


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize(("input_size", "hidden", "proj"), [(1, 51, 0), (7, 13, 0), (5, 10, 3), (3, 6, 5), (2, 1, 0)])
def test_padded_sizes_give_the_unpadded_arithmetic(cell, input_size, hidden, proj):
    """Sizes the kernels do not take (not multiples of 4) are padded; the result is the numpy
    reference's on the unpadded codes (its cells: numpy's exp, ~1e-6 away)."""
    if proj and cell != "lstm":
        pytest.skip("a projection is an LSTM's")
    case = dict(cell=cell, input_size=input_size, hidden=hidden, layers=2, bidirectional=False, batch_first=False,
                proj=proj, bias=True, seed=1)  # fmt: skip
    q = quantize_dynamic(build(case))
    x, h = torch.randn(6, 3, input_size), 0.5 * torch.randn(2, 3, proj or hidden)
    c = 0.5 * torch.randn(2, 3, hidden)
    with torch.no_grad():
        y, *state = flat(q(x, (h, c) if cell == "lstm" else h))
    layers = []
    for layer in range(2):
        w = [(q.codes(n), q.scales(n)[:, 0]) for n in (f"weight_ih_l{layer}", f"weight_hh_l{layer}")]
        biases = q.bias_array(f"bias_ih_hh_l{layer}", len(w[0][1])) if cell != "gru" else None
        b_ih = biases if biases is not None else q.bias_array(f"bias_ih_l{layer}", len(w[0][1]))
        b_hh = np.zeros_like(b_ih) if biases is not None else q.bias_array(f"bias_hh_l{layer}", len(w[0][1]))
        mats = [(*w[0], b_ih), (*w[1], b_hh)]
        if proj:
            mats.append(
                (q.codes(f"weight_hr_l{layer}"), q.scales(f"weight_hr_l{layer}")[:, 0], np.zeros(proj, np.float32))
            )
        layers.append(tuple(mats))
    ref = native.reference_recurrent(cell, x.numpy(), layers, h.numpy(), *([c.numpy()] if cell == "lstm" else []))
    for a, r in zip([y, *state], ref, strict=True):
        np.testing.assert_allclose(a.numpy(), r, atol=2e-5)


@st.composite
def cell_cases(draw):
    return dict(
        cls=draw(st.sampled_from([nn.LSTMCell, nn.GRUCell, nn.RNNCell])),
        input_size=draw(st.integers(1, 40)),
        hidden=draw(st.integers(1, 40)),
        batch=draw(st.integers(0, 4)),  # 0: unbatched
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        with_state=draw(st.booleans()),
        seed=draw(st.integers(0, 1000)),
    )


@settings(max_examples=30, deadline=None, derandomize=True)
@given(cell_cases())
def test_cells_match_the_float_cells(case):
    torch.manual_seed(case["seed"])
    m = trained_like(case["cls"](case["input_size"], case["hidden"], bias=case["bias"]), case["seed"])
    q = quantize_dynamic(m)
    lead = (case["batch"],) if case["batch"] else ()
    x = torch.randn(*lead, case["input_size"])
    state = None
    if case["with_state"]:
        state = [0.5 * torch.randn(*lead, case["hidden"]) for _ in range(2 if case["cls"] is nn.LSTMCell else 1)]
        state = tuple(state) if case["cls"] is nn.LSTMCell else state[0]
    dtype = case["dtype"]
    with torch.no_grad():
        ours = q(x.to(dtype), cast(state, dtype)) if state is not None else q(x.to(dtype))
        ref = (
            copy.deepcopy(m).double()(x.double(), cast(state, torch.float64))
            if state is not None
            else m.double()(x.double())
        )
    ours, ref = (ours, ref) if isinstance(ours, tuple) else ((ours,), (ref,))
    for a, r in zip(ours, ref, strict=True):
        assert a.dtype == dtype and a.shape == r.shape
        assert (a.double() - r).abs().max().item() <= TOLERANCE * max(r.abs().max().item(), 0.1)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    k=st.integers(1, 70),
    n=st.integers(1, 40),
    lead=st.lists(st.integers(0, 3), max_size=2),
    bias=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 1000),
)
def test_linear_matches_the_float_linear(k, n, lead, bias, dtype, seed):
    torch.manual_seed(seed)
    m = trained_like(nn.Linear(k, n, bias=bias), seed)
    q = quantize_dynamic(m)
    x = torch.randn(*lead, k)
    with torch.no_grad():
        ours, ref = q(x.to(dtype)), copy.deepcopy(m).double()(x.double())
    assert ours.dtype == dtype and ours.shape == ref.shape
    if ref.numel():  # int8 weights and 7-bit inputs: ~1/127 + 1/254 of the products' magnitude, at most
        magnitude = x.double().abs() @ m.weight.double().abs().T + (m.bias.double().abs() if bias else 0)
        assert ((ours.double() - ref).abs() <= 0.015 * magnitude + 0.01 * ref.abs() + 1e-6).all()


def test_linear_is_the_kernels_gemm_bit_for_bit():
    m = nn.Linear(37, 21)  # 37 inputs: padded to 40 with zero columns
    q = quantize_dynamic(m)
    x = torch.randn(5, 37)
    with torch.no_grad():
        y = q(x)
    ref = native.reference_linear(x.numpy(), q.codes("weight"), q.scales("weight")[:, 0], q.bias.numpy())
    assert np.array_equal(y.numpy(), ref)


AO_CASES = {
    "LSTM": (lambda: nn.LSTM(64, 96, 2), lambda: torch.randn(20, 4, 64)),
    "LSTM bidirectional packed": (
        lambda: nn.LSTM(32, 48, 2, bidirectional=True, batch_first=True),
        lambda: pack_padded_sequence(torch.randn(6, 9, 32), torch.tensor([9, 3, 7, 1, 5, 9]), True, False),
    ),
    "GRU bidirectional": (lambda: nn.GRU(64, 96, 2, bidirectional=True), lambda: torch.randn(20, 4, 64)),
    "Linear": (lambda: nn.Linear(256, 1000), lambda: torch.randn(40, 256)),
    "LSTMCell": (lambda: nn.LSTMCell(51, 51), lambda: torch.randn(8, 51)),
    "GRUCell": (lambda: nn.GRUCell(40, 60), lambda: torch.randn(8, 40)),
    "RNNCell": (lambda: nn.RNNCell(40, 60), lambda: torch.randn(8, 40)),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(AO_CASES))
def test_error_is_no_larger_than_torch_ao(name, seed):
    make, inputs = AO_CASES[name]
    torch.manual_seed(seed)
    m = trained_like(make().eval(), seed)
    x = inputs()
    with torch.no_grad():
        ref, ours, ao = (first(f(x)) for f in (m, quantize_dynamic(m), torch_ao(m, {type(m)})))
    ref, ours, ao = (t.data if isinstance(t, PackedSequence) else t for t in (ref, ours, ao))
    assert rmse(ours, ref) <= rmse(ao, ref)


def test_time_sequence_prediction_in_float64():
    """pytorch/examples' time_sequence_prediction runs LSTMCells in double, which torch.ao refuses: float64
    comes back, with an error no larger than torch.ao's on a float32 copy."""

    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm1, self.lstm2, self.linear = nn.LSTMCell(1, 51), nn.LSTMCell(51, 51), nn.Linear(51, 1)

        def forward(self, x):
            h1 = c1 = h2 = c2 = torch.zeros(x.size(0), 51, dtype=x.dtype)
            outs = []
            for step in x.split(1, dim=1):
                h1, c1 = self.lstm1(step, (h1, c1))
                h2, c2 = self.lstm2(h1, (h2, c2))
                outs.append(self.linear(h2))
            return torch.cat(outs, dim=1)

    torch.manual_seed(0)
    m = trained_like(Sequence(), 0).double().eval()
    x = torch.sin(torch.arange(40, dtype=torch.float64)[None, :] / 4 + torch.rand(3, 1, dtype=torch.float64))
    q = quantize_dynamic(m)
    ao = torch.ao.quantization.quantize_dynamic(copy.deepcopy(m).float(), {nn.LSTMCell, nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ref, ours, theirs = m(x), q(x), ao(x.float())
    assert ours.dtype == torch.float64
    assert rmse(ours, ref) <= rmse(theirs, ref)


def test_a_gradient_is_refused_in_one_line():
    q = quantize_dynamic(nn.LSTM(8, 8))
    with pytest.raises(RuntimeError, match="inference-only") as e:
        q(torch.randn(3, 2, 8, requires_grad=True))
    assert "\n" not in str(e.value)
    with torch.no_grad():
        assert q(torch.randn(3, 2, 8, requires_grad=True))[0].shape == (3, 2, 8)


def test_embeddings_are_the_dequantized_tables():
    torch.manual_seed(0)
    emb, bag = nn.Embedding(50, 12), nn.EmbeddingBag(50, 12, mode="max", padding_idx=3)
    q_emb, q_bag = (quantize_dynamic(m, {type(m)}) for m in (emb, bag))
    table = torch.from_numpy(q_emb.codes("weight") * q_emb.scales("weight"))
    ids = torch.randint(0, 50, (4, 6))
    ids[0, 0] = 3
    assert torch.equal(q_emb(ids), table[ids])
    assert (table - emb.weight).abs().max() <= emb.weight.abs().max(1).values.max() / 127
    bag_table = torch.from_numpy(q_bag.codes("weight") * q_bag.scales("weight"))
    for mode in ("sum", "mean", "max"):
        q_bag.mode = mode
        w = torch.rand(ids.numel()) if mode == "sum" else None
        ours = q_bag(ids.flatten(), torch.tensor([0, 5, 11, 20]), per_sample_weights=w)
        ref = nn.functional.embedding_bag(
            ids.flatten(), bag_table, torch.tensor([0, 5, 11, 20]), mode=mode, per_sample_weights=w, padding_idx=3
        )
        torch.testing.assert_close(ours, ref)


def test_threads_change_the_speed_never_the_bits():
    torch.manual_seed(0)
    m = nn.LSTM(16, 70, 2, bidirectional=True)  # 3 blocks of units: work for 2 threads
    one, two = quantize_dynamic(m, threads=1), quantize_dynamic(m, threads=2)
    x = torch.randn(9, 3, 16)
    with torch.no_grad():
        for a, b in zip(flat(one(x)), flat(two(x)), strict=True):
            assert torch.equal(a, b)
    assert two.threads == 2


@pytest.mark.parametrize(
    ("k", "n", "m", "bits", "fine"), [(36, 70, 5, 4, True), (52, 33, 1, 3, False), (20, 17, 3, 2, False)]
)
def test_narrow_linears_read_nibbles_with_the_int8_layouts_bits(k, n, m, bits, fine):
    """Codes of 4 bits or fewer go to the kernels two a byte (half the memory a GEMV reads): the same bits."""
    scheme = replace(SCHEMES["int8"], decoder=QSpec(bits), fine_activations="all" if fine else "none")
    q = quantize_dynamic(nn.Linear(k, n), scheme=scheme)
    x = torch.randn(m, k)
    with torch.no_grad():
        y = q(x)
    codes, pad = q.codes("weight"), -k % 4
    int8_layout = native.pack_linear(np.pad(codes, ((0, 0), (0, pad))), q.scales("weight")[:, 0], q.bias.numpy(), fine)
    ref = native.decoder_nll(np.pad(x.numpy(), ((0, 0), (0, pad))), int8_layout, logits=True).logits
    assert q._packed.nibbles and np.array_equal(y.numpy(), ref)
