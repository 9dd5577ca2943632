"""`quantize_dynamic`: torch.ao's call and meaning, state_dict persistence and size, the modules it leaves
float (one warning), schemes and GPTQ, and the tutorial's model against `wordlm quantize`."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nn_helpers import first, rmse, torch_ao, trained_like
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import pack_padded_sequence

import wordlm.nn as wnn
from wordlm.errors import WordLMError
from wordlm.nn import quantize_dynamic
from wordlm.quant import SCHEMES, QSpec

ROOT = Path(__file__).resolve().parents[2]


class Tagger(nn.Module):
    """A batch-first bidirectional LSTM tagger on packed sequences, with a GRU cell and RNN on top."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 20)
        self.rnn = nn.LSTM(20, 18, 2, batch_first=True, bidirectional=True)
        self.cell = nn.GRUCell(36, 10)
        self.vanilla = nn.RNN(10, 12, nonlinearity="relu")
        self.out = nn.Linear(12, 5)

    def forward(self, ids, lengths):
        y, _ = self.rnn(pack_padded_sequence(self.emb(ids), lengths, batch_first=True, enforce_sorted=False))
        h = self.cell(y.data)
        return self.out(self.vanilla(h[:, None])[0][:, 0])


def _tagger(seed: int = 0) -> Tagger:
    torch.manual_seed(seed)
    return trained_like(Tagger(), seed).eval()


TAGGER_INPUT = (torch.randint(0, 100, (4, 7)), torch.tensor([7, 2, 5, 3]))


def _saved_size(m: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    return len(buf.getvalue())


def test_import_wordlm_does_not_import_torch():
    code = "import sys, wordlm; assert 'torch' not in sys.modules; print(wordlm.quantize_dynamic.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "wordlm.nn.convert"


def test_the_default_set_is_torch_aos_plus_rnn_and_a_copy_unless_inplace():
    m = _tagger()
    q = quantize_dynamic(m, inplace=False)
    assert [type(q.rnn), type(q.cell), type(q.vanilla), type(q.out), type(q.emb)] == [
        wnn.LSTM, wnn.GRUCell, wnn.RNN, wnn.Linear, nn.Embedding,  # embeddings only when asked (quint8)
    ]  # fmt: skip
    assert type(m.rnn) is nn.LSTM  # the original is untouched
    assert type(quantize_dynamic(m, dtype=torch.quint8).emb) is wnn.Embedding
    same = quantize_dynamic(m, {nn.Linear}, inplace=True)
    assert same is m and type(m.out) is wnn.Linear and type(m.rnn) is nn.LSTM
    with pytest.raises(WordLMError, match="qint8 or quint8"):
        quantize_dynamic(_tagger(), dtype=torch.float16)
    with pytest.raises(WordLMError, match="qint8 or quint8"):  # torch.ao's fp16 weights: not run as int8
        quantize_dynamic(_tagger(), {nn.LSTM: torch.ao.quantization.float16_dynamic_qconfig})


def test_qconfig_spec_by_name_and_none_as_torch_ao_propagates_it():
    q = quantize_dynamic(_tagger(), {"rnn": True, "out": True, nn.GRUCell: True, "cell": None})
    assert (type(q.rnn), type(q.out), type(q.cell), type(q.vanilla)) == (wnn.LSTM, wnn.Linear, nn.GRUCell, nn.RNN)
    wrapped = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), nn.Linear(8, 8))
    q = quantize_dynamic(wrapped, {"0": torch.ao.quantization.default_dynamic_qconfig})  # a parent's entry
    assert [type(m) for m in (q[0][0], q[0][1], q[1])] == [wnn.Linear, wnn.Linear, nn.Linear]
    assert type(quantize_dynamic(nn.LSTM(4, 4))) is wnn.LSTM  # the root itself


def test_a_mapping_chooses_the_classes():
    q = quantize_dynamic(_tagger(), mapping={nn.Linear: wnn.Linear})  # the default set, one class mapped
    assert (type(q.out), type(q.rnn), type(q.cell)) == (wnn.Linear, nn.LSTM, nn.GRUCell)


def test_the_tagger_runs_and_prints_its_scheme():
    m = _tagger()
    q = quantize_dynamic(m, {nn.LSTM, nn.GRUCell, nn.RNN, nn.Linear, nn.Embedding})
    with torch.no_grad():
        ref, ours = m(*TAGGER_INPUT), q(*TAGGER_INPUT)
    assert (ours - ref).abs().max() <= 0.05 * ref.abs().max()
    text = str(q)
    assert text.count("scheme=int8 per row") == 5 and "bidirectional=True" in text and "nonlinearity=relu" in text


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    spec = {nn.LSTM, nn.GRUCell, nn.RNN, nn.Linear, nn.Embedding}
    q = quantize_dynamic(_tagger(0), spec)
    torch.save(q.state_dict(), tmp_path / "q.pt")
    fresh = quantize_dynamic(_tagger(1), spec)  # other weights
    fresh.load_state_dict(torch.load(tmp_path / "q.pt"))
    with torch.no_grad():
        assert torch.equal(fresh(*TAGGER_INPUT), q(*TAGGER_INPUT))
    assert q.state_dict()["rnn.weight_ih_l0"].dtype == torch.int8
    assert q.state_dict()["rnn.weight_ih_l0_scale"].shape == (72, 1)


def test_a_deep_copy_or_a_pickle_packs_its_own_kernels(tmp_path):
    q = quantize_dynamic(_tagger(0), {nn.LSTM, nn.GRUCell, nn.RNN, nn.Linear, nn.Embedding})
    with torch.no_grad():
        expected = q(*TAGGER_INPUT)
        twin = copy.deepcopy(q)
        torch.save(q, tmp_path / "whole.pt")
        del q
        assert torch.equal(twin(*TAGGER_INPUT), expected)
        assert torch.equal(torch.load(tmp_path / "whole.pt", weights_only=False)(*TAGGER_INPUT), expected)


def test_saved_size_is_no_larger_than_torch_aos_for_recurrent_modules():
    for m in (nn.LSTM(256, 256, 2), nn.LSTMCell(51, 51), nn.LSTM(64, 100, 2, bidirectional=True)):
        assert _saved_size(quantize_dynamic(m)) <= _saved_size(torch_ao(m, {type(m)}))


def test_a_tied_embedding_and_decoder_are_quantized_and_saved_once():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.rnn, self.decoder = nn.Embedding(1000, 64), nn.LSTM(64, 64), nn.Linear(64, 1000)
            self.decoder.weight = self.encoder.weight

    m = LM()
    q = quantize_dynamic(m, {nn.LSTM, nn.Linear, nn.Embedding})
    assert q.encoder.weight is q.decoder.weight
    assert _saved_size(q) < 0.5 * _saved_size(torch_ao(m, {nn.LSTM, nn.Linear}))


class OwnForward(nn.LSTM):
    def forward(self, x, hx=None):
        return super().forward(x * 2, hx)


class SameForward(nn.LSTM):
    pass


def test_modules_it_cannot_take_stay_float_with_one_warning():
    model = nn.ModuleDict(
        {
            "own": OwnForward(4, 4),
            "same": SameForward(4, 4),
            "normed": torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4)),
            "old_norm": torch.nn.utils.weight_norm(nn.Linear(4, 4)),
            "plain": nn.Linear(4, 4),
            "grouped": nn.Linear(20, 4),
        }
    )
    scheme = replace(SCHEMES["int8"], name="int4", decoder=QSpec(4, 16))  # 16 does not divide 20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize_dynamic(model, scheme=scheme, inplace=True)  # the old weight_norm cannot be deep-copied
    ours = [w for w in caught if "wordlm.quantize_dynamic" in str(w.message)]
    assert len(ours) == 1
    text = str(ours[0].message)
    for name in ("own", "normed", "old_norm", "grouped"):
        assert f"{name} (" in text
    assert "same" not in text and "plain" not in text
    assert type(q["own"]) is OwnForward and type(q["grouped"]) is nn.Linear
    assert parametrize.is_parametrized(q["normed"]) and hasattr(q["old_norm"], "weight_g")
    assert type(q["same"]) is wnn.LSTM and type(q["plain"]) is wnn.Linear


def test_forward_hooks_are_kept():
    m = nn.Sequential(nn.Linear(8, 8))
    seen = []
    m[0].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    with torch.no_grad():
        quantize_dynamic(m)(torch.randn(2, 8))
    assert seen == [(2, 8)]


def test_schemes_narrower_widths_and_fine_activations():
    torch.manual_seed(0)
    m = trained_like(nn.Sequential(nn.Linear(64, 200), nn.Tanh(), nn.LSTM(200, 64)), 0).eval()
    x = torch.randn(30, 2, 64)
    with torch.no_grad():
        ref = first(m(x))
        err = {}
        for name, scheme in {
            "int8": None,
            "fine": replace(SCHEMES["int8"], fine_activations="all"),
            "int6": replace(SCHEMES["int8"], rnn=QSpec(6), decoder=QSpec(6)),
            "int4": replace(SCHEMES["int8"], rnn=QSpec(4), decoder=QSpec(4)),
        }.items():
            q = quantize_dynamic(m, scheme=scheme)
            err[name] = rmse(first(q(x)), ref)
    assert err["fine"] < err["int8"] < err["int6"] < err["int4"] < 0.1
    assert "int4 per row" in str(quantize_dynamic(m, scheme=replace(SCHEMES["int8"], rnn=QSpec(4))))


def test_group_wise_linear_is_the_dequantized_float_linear():
    m = nn.Linear(64, 10)
    q = quantize_dynamic(m, scheme="int4")  # decoder: 4 bits in groups of 256 -> one group here
    q16 = quantize_dynamic(m, scheme=replace(SCHEMES["int4"], decoder=QSpec(4, 16)))
    x = torch.randn(3, 64)
    w = torch.from_numpy((q16.codes("weight").reshape(10, 4, 16) * q16.scales("weight")[..., None]).reshape(10, 64))
    with torch.no_grad():
        torch.testing.assert_close(q16(x), F.linear(x, w, q16.bias.float()), rtol=1e-6, atol=1e-6)  # fp16 biases
        assert "groups of 16" in repr(q16) and "int4 per row" in repr(q)


def test_gptq_beats_round_to_nearest_on_the_inputs_it_saw():
    torch.manual_seed(0)
    mix = torch.randn(48, 48) * torch.logspace(0, -2, 48)  # correlated, uneven inputs
    m = trained_like(nn.Sequential(nn.Linear(48, 64), nn.Tanh(), nn.LSTM(64, 32)), 0).eval()
    calib = [torch.randn(20, 4, 48) @ mix for _ in range(4)]
    test = torch.randn(20, 4, 48) @ mix
    scheme = replace(SCHEMES["int8"], rnn=QSpec(4), decoder=QSpec(4))
    with torch.no_grad():
        ref = first(m(test))
        rtn = rmse(first(quantize_dynamic(m, scheme=scheme)(test)), ref)
        gptq = rmse(first(quantize_dynamic(m, scheme=scheme, method="gptq", calibration=calib)(test)), ref)
    assert gptq < 0.9 * rtn
    with pytest.raises(WordLMError, match="calibration"):
        quantize_dynamic(m, method="gptq")


def _wikitext_test_ids(vocab, n: int) -> np.ndarray:
    from wordlm.data import load_split

    shared = ROOT.parent / "shared" / "data" / "wikitext-2"
    return load_split(vocab, "test", shared if (shared / "test.txt").is_file() else None)[:n]


def test_the_tutorial_model_gives_the_loss_of_wordlm_quantize():
    """The shipped WikiText-2 model through quantize_dynamic (embedding, LSTM and decoder asked: what the
    int8 scheme quantizes) and through `wordlm quantize` + the runtime: the same loss."""
    from wordlm.checkpoint import load_checkpoint
    from wordlm.quantize import quantize_checkpoint
    from wordlm.runtime import Runtime
    from wordlm.train.model import build_model

    ckpt = load_checkpoint(ROOT / "models" / "wikitext2-lstm")
    ids = _wikitext_test_ids(ckpt.vocab, 201).astype(np.int64)
    runtime = Runtime(quantize_checkpoint(ckpt, SCHEMES["int8"]))
    nll, _ = runtime.nll(ids[:-1, None], ids[1:, None], runtime.init_state(1))
    q = quantize_dynamic(build_model(ckpt), {nn.LSTM, nn.Linear, nn.Embedding})
    state = tuple(torch.zeros(s) for s in ckpt.config.state_shapes(1))
    with torch.no_grad():
        logits, _ = q(torch.from_numpy(ids[:-1, None]), state)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]).double(), torch.from_numpy(ids[1:])).item()
    assert abs(loss - nll / (len(ids) - 1)) < 2e-5


def test_the_tutorial_code_runs_with_only_the_import_changed():
    """The tutorial's LSTMModel and its call, `quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)`."""
    from test_tutorial_parity import LSTMModel  # the tutorial's class, as tests/ re-types it

    torch.manual_seed(0)
    model = trained_like(LSTMModel(300, 32, 40, 2), 0).eval()
    quantized = quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    data, hidden = torch.randint(0, 300, (25, 1)), model.init_hidden(1)
    with torch.no_grad():
        ref, ours, ao = (
            f(data, hidden)[0] for f in (model, quantized, copy.deepcopy(torch_ao(model, {nn.LSTM, nn.Linear})))
        )
    assert rmse(ours, ref) <= rmse(ao, ref)
