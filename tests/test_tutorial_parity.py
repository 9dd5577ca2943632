"""wordlm against an independent copy of the tutorial's own code (model class and evaluate loop).

A state_dict saved from the tutorial's LSTMModel goes through `wordlm import-tutorial` and
`wordlm eval`; the losses must equal the tutorial's `evaluate()` on the same tokens to 1e-4, for the
fp32 model and for `quantize_dynamic`.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
from conftest import run_cli

from wordlm.data import load_corpus


# ---- the tutorial, re-typed: LSTMModel, batchify, get_batch, evaluate ----
class LSTMModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.encoder.weight.data.uniform_(-0.1, 0.1)
        self.decoder.bias.data.zero_()
        self.decoder.weight.data.uniform_(-0.1, 0.1)
        self.nhid, self.nlayers = nhid, nlayers

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (
            weight.new_zeros(self.nlayers, bsz, self.nhid),
            weight.new_zeros(self.nlayers, bsz, self.nhid),
        )


def tutorial_evaluate(model_, data, bptt=25, eval_batch_size=1):
    data = torch.as_tensor(data)  # wordlm's corpus is numpy; the tutorial's is a tensor
    nbatch = data.size(0) // eval_batch_size  # batchify(data, eval_batch_size)
    data_source = data.narrow(0, 0, nbatch * eval_batch_size).view(eval_batch_size, -1).t().contiguous()
    ntokens = model_.encoder.weight.size(0)
    criterion = nn.CrossEntropyLoss()
    model_.eval()
    total_loss = 0.0
    hidden = model_.init_hidden(eval_batch_size)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, bptt):
            seq_len = min(bptt, len(data_source) - 1 - i)
            d, targets = data_source[i : i + seq_len], data_source[i + 1 : i + 1 + seq_len].reshape(-1)
            output, hidden = model_(d, hidden)
            hidden = tuple(h.detach() for h in hidden)
            total_loss += len(d) * criterion(output.view(-1, ntokens), targets).item()
    return total_loss / (len(data_source) - 1)


@pytest.fixture(scope="module")
def tutorial_pth(tmp_path_factory, corpus):
    torch.manual_seed(3)
    model = LSTMModel(len(corpus.vocab), 24, 20, 3)
    # perturb so the weights are not the init distribution alone
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp("tut") / "word_language_model_quantize.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def imported(tmp_path_factory, tutorial_pth, corpus_dir):
    _, pth = tutorial_pth
    out = tmp_path_factory.mktemp("imp") / "ckpt"
    r = run_cli("import-tutorial", str(pth), "--out", str(out), "--data", str(corpus_dir))
    assert r.returncode == 0, r.stderr
    return out


def _cli_eval(ckpt, corpus_dir, engine):
    r = run_cli("eval", str(ckpt), "--engine", engine, "--data", str(corpus_dir), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_import_reads_sizes_from_shapes(imported):
    cfg = json.loads((imported / "config.json").read_text())["model"]
    assert (cfg["emb_dim"], cfg["hidden_dim"], cfg["num_layers"]) == (24, 20, 3)


def test_fp32_eval_matches_tutorial(imported, tutorial_pth, corpus_dir):
    model, _ = tutorial_pth
    torch.set_num_threads(1)
    expected = tutorial_evaluate(model, load_corpus(corpus_dir).test)
    got = _cli_eval(imported, corpus_dir, "torch")
    assert abs(got["loss"] - expected) < 1e-4
    assert got["tokens"] == load_corpus(corpus_dir).test.size - 1
    for key in ("loss", "ppl", "tokens", "seconds", "tokens_per_s", "engine", "size_bytes"):
        assert key in got


def test_dynamic_int8_eval_matches_tutorial(imported, tutorial_pth, corpus_dir):
    model, _ = tutorial_pth
    torch.set_num_threads(1)
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)
    expected = tutorial_evaluate(quantized, load_corpus(corpus_dir).test)
    got = _cli_eval(imported, corpus_dir, "torch-dynamic")
    assert got["engine"] == "torch-dynamic"
    assert abs(got["loss"] - expected) < 1e-4
    # int8 changes the numbers a little, not a lot
    assert abs(got["loss"] - tutorial_evaluate(model, load_corpus(corpus_dir).test)) < 0.2


def test_batched_eval_matches_tutorial(imported, tutorial_pth, corpus_dir):
    """Batch > 1 (what training validates with) is the tutorial's evaluate() with eval_batch_size > 1."""
    from wordlm.checkpoint import load_checkpoint
    from wordlm.engines import load_engine
    from wordlm.tasks import evaluate

    model, _ = tutorial_pth
    test = load_corpus(corpus_dir).test
    got = evaluate(load_engine("torch", load_checkpoint(imported)), test, bptt=10, batch_size=4)
    assert abs(got.loss - tutorial_evaluate(model, test, bptt=10, eval_batch_size=4)) < 1e-4


def test_tutorial_architecture_sizes_match_tutorial():
    """The tutorial prints 113.9 MB (fp32) and 79.7 MB (quantize_dynamic) for its state_dicts."""
    from wordlm.config import preset
    from wordlm.engines.torch_dynamic import quantize_dynamic_int8
    from wordlm.engines.torch_fp32 import state_dict_bytes
    from wordlm.train.model import RecurrentLM

    model = RecurrentLM(preset("tutorial", 33278)).eval()
    assert f"{state_dict_bytes(model) / 1e6:.1f}" == "113.9"
    assert f"{state_dict_bytes(quantize_dynamic_int8(model)) / 1e6:.1f}" == "79.7"


def test_import_rejects_vocab_mismatch(tmp_path, corpus_dir):
    torch.save(LSTMModel(7, 8, 8, 2).state_dict(), tmp_path / "m.pth")
    r = run_cli("import-tutorial", str(tmp_path / "m.pth"), "--out", str(tmp_path / "o"), "--data", str(corpus_dir))
    assert r.returncode != 0
    assert "vocab size mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "o")


def test_import_rejects_non_state_dict(tmp_path, corpus_dir):
    (tmp_path / "junk.pth").write_bytes(b"not a zip file at all")
    r = run_cli("import-tutorial", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "o"), "--data", str(corpus_dir))
    assert r.returncode != 0 and "not a loadable torch state_dict" in r.stderr
    assert "Traceback" not in r.stderr
