"""`wordlm import`: pytorch/examples' RNNModel of every cell, tied or not, and the tutorial's
LSTMModel, held to that code's own evaluation (bptt 25, batch 1) by an independent re-typing of it;
then quantized and run by wordlm's runtime."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import run_cli

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.tasks import evaluate
from wordlm.train.importer import import_state_dict


class RNNModel(nn.Module):
    """pytorch/examples word_language_model/model.py's RNNModel, re-typed (forward returns log-probs)."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ["LSTM", "GRU"]:
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            if nhid != ninp:
                raise ValueError("When using the tied flag, nhid must be equal to emsize")
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output)
        decoded = decoded.view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def examples_evaluate(model, data, bptt=25):
    """main.py's evaluate() at eval_batch_size 1."""
    source = torch.as_tensor(data).view(-1, 1)
    model.eval()
    total_loss, hidden = 0.0, model.init_hidden(1)
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, bptt):
            seq_len = min(bptt, len(source) - 1 - i)
            d, targets = source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].view(-1)
            output, hidden = model(d, hidden)
            hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
            total_loss += len(d) * nn.NLLLoss()(output, targets).item()
    return total_loss / (len(source) - 1)


CASES = [(cell, tied) for cell in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") for tied in (False, True)]


def _saved(tmp_path, corpus, rnn_type, tied, seed=0):
    torch.manual_seed(seed)
    size = 24 if tied else 20
    model = RNNModel(rnn_type, len(corpus.vocab), size, 24, 2, tie_weights=tied)
    with torch.no_grad():
        for p in model.rnn.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # away from the init, so that a mixed-up gate shows
    path = tmp_path / f"{rnn_type}-{tied}.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.parametrize(("rnn_type", "tied"), CASES)
def test_import_then_eval_equals_examples_evaluate(corpus, corpus_dir, tmp_path, rnn_type, tied):
    torch.set_num_threads(1)
    model, path = _saved(tmp_path, corpus, rnn_type, tied)
    cell = rnn_type.lower() if rnn_type.startswith("RNN") else None  # tanh vs relu: shapes cannot tell
    ck = import_state_dict(path, corpus_dir, cell=cell)
    assert (ck.config.cell, ck.config.tied) == (rnn_type.lower(), tied)
    assert ("decoder.weight" in ck.tensors) != tied  # a tied matrix is stored once
    expected = examples_evaluate(model, corpus.test)
    for engine in ("torch", "wordlm"):  # the runtime's numpy path for float weights
        got = evaluate(load_engine(engine, ck), corpus.test, bptt=25, batch_size=1)
        assert abs(got.loss - expected) < 1e-4, (engine, got.loss, expected)
    q = quantize_checkpoint(ck, get_scheme("int8"))
    assert abs(evaluate(load_engine("wordlm", q), corpus.test).loss - expected) < 0.02
    if rnn_type in ("LSTM", "GRU"):  # torch.ao's dynamic int8 takes these cells
        assert abs(evaluate(load_engine("torch-dynamic", ck), corpus.test).loss - expected) < 0.02
    else:
        with pytest.raises(WordLMError, match="no dynamic int8 rnn_(tanh|relu) cell"):
            load_engine("torch-dynamic", ck)


def test_the_cli_imports_and_evaluates(corpus, corpus_dir, tmp_path):
    model, path = _saved(tmp_path, corpus, "GRU", True, seed=1)
    r = run_cli("import", str(path), "--out", str(tmp_path / "ck"), "--data", str(corpus_dir))
    assert r.returncode == 0 and "gru, tied" in r.stdout, r.stderr
    r = run_cli("eval", str(tmp_path / "ck"), "--engine", "torch", "--data", str(corpus_dir), "--json")
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["loss"] - examples_evaluate(model, corpus.test)) < 1e-4
    r = run_cli("quantize", str(tmp_path / "ck"), "--scheme", "int8", "--out", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr
    q = load_checkpoint(tmp_path / "q")
    assert "encoder.weight.qweight" in q.tensors and not any(k.startswith("decoder.weight") for k in q.tensors)
    r = run_cli("generate", str(tmp_path / "q"), "--words", "5", "--seed", "0", "--prompt", "the cat")
    assert r.returncode == 0 and r.stdout.startswith("the cat"), r.stderr


def test_a_projected_lstm_runs_on_every_engine_that_takes_it(corpus, tmp_path):
    from wordlm.checkpoint import Checkpoint
    from wordlm.config import ModelConfig
    from wordlm.train.model import RecurrentLM, checkpoint_tensors

    torch.manual_seed(0)
    cfg = ModelConfig(len(corpus.vocab), emb_dim=16, hidden_dim=32, num_layers=2, cell="lstm", proj_size=8)
    model = RecurrentLM(cfg)
    save_checkpoint(Checkpoint(cfg, corpus.vocab, checkpoint_tensors(model)), tmp_path / "p")
    ck = load_checkpoint(tmp_path / "p")
    ref = evaluate(load_engine("torch", ck), corpus.test).loss
    assert abs(evaluate(load_engine("wordlm", ck), corpus.test).loss - ref) < 1e-4
    q = quantize_checkpoint(ck, get_scheme("int8"))
    assert abs(evaluate(load_engine("wordlm", q), corpus.test).loss - ref) < 0.02
    with pytest.raises(WordLMError, match="cannot run a projection"):
        load_engine("torch-dynamic", ck)


@pytest.mark.parametrize(
    ("edit", "cell", "message"),
    [
        (lambda sd: sd.update(extra=torch.zeros(3)), None, "tensors not of a recurrent LM: ['extra']"),
        (lambda sd: sd.pop("rnn.weight_hh_l0"), None, "no rnn.weight_hh_l0"),
        (lambda sd: sd.update({"rnn.weight_ih_l0": torch.zeros(50, 24)}), None, "not 1, 3 or 4 gates"),
        (lambda sd: None, "gru", "--cell gru needs 3 gates, the tensors have 4"),
        (lambda sd: None, "conv", "--cell must be one of"),
    ],
)
def test_unmappable_state_dicts_are_one_line_errors(corpus, corpus_dir, tmp_path, edit, cell, message):
    _, path = _saved(tmp_path, corpus, "LSTM", False)
    sd = torch.load(path, weights_only=True)
    edit(sd)
    torch.save(sd, path)
    with pytest.raises(WordLMError, match=message.replace("[", r"\[").replace("]", r"\]")):
        import_state_dict(path, corpus_dir, cell=cell)


def test_a_vanilla_rnn_needs_its_nonlinearity(corpus, corpus_dir, tmp_path):
    _, path = _saved(tmp_path, corpus, "RNN_RELU", False)
    r = run_cli("import", str(path), "--out", str(tmp_path / "o"), "--data", str(corpus_dir))
    assert r.returncode == 2 and "pass --cell rnn_tanh or rnn_relu" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(cell="gru", proj_size=4), "proj_size applies to LSTM cells only"),
        (dict(tied=True, emb_dim=16, hidden_dim=24), "tying the embedding and the decoder needs emb_dim"),
        (dict(cell="transformer"), "cell must be one of"),
        (dict(proj_size=32, hidden_dim=32), "must be smaller than hidden_dim"),
    ],
)
def test_bad_model_configs_are_one_line_errors(fields, message):
    from wordlm.config import ModelConfig

    with pytest.raises(WordLMError, match=message):
        ModelConfig(**{"vocab_size": 10, "emb_dim": 16, "hidden_dim": 16, "num_layers": 1, **fields})
