"""wordlm.cells, the cell registry: every consumer reads it, and the library is held to it at load.

A toy cell is added to the registry alone (its C step: an existing one of kernels.c's table, under a
new name in Python): config, the torch model, the checkpoint round trip, the runtime's float and
native paths, the references and the CLI take it without any other change.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from wordlm import cells, native
from wordlm.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from wordlm.config import ModelConfig
from wordlm.errors import WordLMError
from wordlm.quant import get_scheme
from wordlm.quantize import quantize_checkpoint
from wordlm.runtime import Runtime
from wordlm.train.model import RecurrentLM, build_model, checkpoint_tensors


def toy_step(xp, hp, h, c):
    """A leaky ReLU cell: the C step 'rnn_relu' differs, so only the float paths may use this one."""
    a = xp + hp
    return np.where(a > 0, a, np.float32(0.1) * a).astype(np.float32), None


@pytest.fixture
def registry(monkeypatch):
    """The registry with room for a test's cells; the native library re-checked against it."""
    table = dict(cells.CELLS)
    monkeypatch.setattr(cells, "CELLS", table)
    monkeypatch.setattr(native, "_lib", None)  # the next call loads and checks again
    yield table
    native._lib = None


def add(table: dict, **changes) -> cells.Cell:
    cell = dataclasses.replace(cells.CELLS["rnn_relu"], **changes)
    table[cell.name] = cell
    return cell


def test_a_registry_cell_runs_everywhere_without_other_changes(registry, corpus, tmp_path):
    add(registry, name="toy")  # the ReLU RNN's C step, torch module and ONNX operator under a new name
    torch.manual_seed(0)
    cfg = ModelConfig(len(corpus.vocab), emb_dim=16, hidden_dim=12, num_layers=2, cell="toy")
    model = RecurrentLM(cfg)
    assert isinstance(model.rnn, torch.nn.RNN) and model.rnn.nonlinearity == "relu"
    ck = load_checkpoint(save_checkpoint(Checkpoint(cfg, corpus.vocab, checkpoint_tensors(model)), tmp_path / "f"))
    assert ck.config.cell == "toy" and ck.config.state_shapes(3) == ((2, 3, 12),)
    ids = corpus.test[:24].reshape(8, 3)
    fp, _ = Runtime(ck).logits(ids, Runtime(ck).init_state(3))
    with torch.no_grad():
        want, _ = build_model(ck)(torch.from_numpy(ids), tuple(torch.zeros(s) for s in cfg.state_shapes(3)))
    np.testing.assert_allclose(fp, want.numpy(), atol=1e-4)  # numpy's step from the registry = torch's
    q = Runtime(quantize_checkpoint(ck, get_scheme("int8")))
    assert q.kernels.startswith("toy native")  # the whole stack in C, through the registry's kernel name
    zq, _ = q.logits(ids, q.init_state(3))
    assert np.corrcoef(zq.ravel(), fp.ravel())[0, 1] > 0.99


def test_the_native_stack_runs_the_registry_step_of_its_kernel(registry):
    """A cell's C step is found by the registry's `kernel` name, not by its position in a Python list."""
    add(registry, name="toy", step=toy_step)  # the same C step, but a different numpy one: they differ
    rng = np.random.default_rng(0)
    w = [(rng.integers(-127, 128, (12, 8), dtype=np.int8), rng.random(12, np.float32) / 50, np.zeros(12, np.float32))]
    wh = (rng.integers(-127, 128, (12, 12), dtype=np.int8), rng.random(12, np.float32) / 50, np.zeros(12, np.float32))
    x, h = rng.standard_normal((5, 2, 8), np.float32), np.zeros((1, 2, 12), np.float32)
    packed = native.PackedRecurrent([(native.pack_linear(*w[0]), native.pack_linear(*wh))], "toy")
    got = native.recurrent(x, packed, h)
    relu = native.reference_recurrent("rnn_relu", x, [(w[0], wh)], h)
    toy = native.reference_recurrent("toy", x, [(w[0], wh)], h)
    assert all(np.array_equal(a, b) for a, b in zip(got, relu, strict=True))  # kernels.c's rnn_relu, bit for bit
    assert not np.allclose(toy[0], relu[0])  # and the registry's numpy step is the toy's own


def test_a_cell_without_its_c_step_is_refused_at_load(registry):
    add(registry, name="toy", kernel="toy_step_in_c")
    with pytest.raises(WordLMError, match="no cell step 'toy_step_in_c' \\(cell toy\\); rebuild"):
        native.lib()


def test_a_cell_that_disagrees_with_the_c_table_is_refused_at_load(registry):
    add(registry, name="toy", gates=2)
    with pytest.raises(WordLMError, match="cell toy: the registry's gates, c and projection differ"):
        native.lib()


def test_every_consumer_lists_the_registry(registry):
    from wordlm.cli import build_parser

    add(registry, name="toy")
    args = build_parser().parse_args(["train", "--out", "x", "--cell", "toy"])
    assert args.cell == "toy"
    with pytest.raises(WordLMError, match="cell must be one of lstm, gru, rnn_tanh, rnn_relu, toy"):
        ModelConfig(10, cell="conv")
