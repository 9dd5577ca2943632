"""State dicts saved by other code, read into wordlm checkpoints.

`import_state_dict` maps the tutorial's `LSTMModel` and pytorch/examples' `RNNModel` (LSTM, GRU,
RNN_TANH, RNN_RELU; tied or not) and torch's `nn.LSTM(proj_size=...)` names, inferring the cell and
the sizes from the tensors' names and shapes. The file is read with `torch.load(weights_only=True)`:
no pickled code runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from wordlm import cells
from wordlm.checkpoint import Checkpoint, tensor_spec, validate_tensors
from wordlm.config import ModelConfig
from wordlm.data import load_corpus
from wordlm.errors import WordLMError, require

RNN_KEY = re.compile(r"rnn\.(weight|bias)_(ih|hh|hr)_l(\d+)$")


def infer_config(sd: dict[str, np.ndarray], cell: str | None, where: str) -> ModelConfig:
    """The ModelConfig that a state_dict's names and shapes say; `cell` settles tanh vs relu."""
    unknown = sorted(
        k for k in sd if k not in ("encoder.weight", "decoder.weight", "decoder.bias") and not RNN_KEY.match(k)
    )
    if unknown:
        raise WordLMError(f"{where}: tensors not of a recurrent LM: {unknown[:4]}{' ...' if len(unknown) > 4 else ''}")
    for key in ("encoder.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "decoder.bias"):
        if key not in sd:
            raise WordLMError(f"{where}: not a word-level recurrent LM state_dict (no {key})")
    vocab_size, emb_dim = sd["encoder.weight"].shape
    gates_h, _ = sd["rnn.weight_ih_l0"].shape
    proj = sd["rnn.weight_hr_l0"].shape[0] if "rnn.weight_hr_l0" in sd else 0
    hidden = sd["rnn.weight_hr_l0"].shape[1] if proj else sd["rnn.weight_hh_l0"].shape[1]
    gates = gates_h // hidden if gates_h % hidden == 0 else None
    candidates = [c.name for c in cells.by_gates(gates)] if gates else []
    if not candidates:
        *most, last = sorted({str(c.gates) for c in cells.CELLS.values()})
        raise WordLMError(
            f"{where}: rnn.weight_ih_l0 has {gates_h} rows, not {', '.join(most)} or {last} gates of {hidden}"
        )
    if cell is not None:
        if cell not in cells.CELLS:
            raise WordLMError(f"--cell must be one of {', '.join(cells.CELLS)}, got {cell!r}")
        if cells.CELLS[cell].gates != gates:
            raise WordLMError(f"{where}: --cell {cell} needs {cells.CELLS[cell].gates} gates, the tensors have {gates}")
    elif len(candidates) > 1:
        raise WordLMError(
            f"{where}: its shapes cannot tell {' from '.join(candidates)}: pass --cell {' or '.join(candidates)}"
        )
    else:
        cell = candidates[0]
    tied = "decoder.weight" not in sd or (
        sd["decoder.weight"].shape == sd["encoder.weight"].shape
        and np.array_equal(sd["decoder.weight"], sd["encoder.weight"])
    )
    num_layers = 1 + max(int(RNN_KEY.match(k).group(3)) for k in sd if RNN_KEY.match(k))
    return ModelConfig(
        vocab_size=vocab_size,
        emb_dim=emb_dim,
        hidden_dim=hidden,
        num_layers=num_layers,
        dropout=0.5,  # training-only; the tutorial's and RNNModel's default
        cell=cell,
        tied=bool(tied),
        proj_size=proj,
    )


def import_state_dict(path: str | Path, data_dir: str | Path | None = None, cell: str | None = None) -> Checkpoint:
    """A state_dict (.pth) of a word-level recurrent LM, plus the corpus vocabulary, as a Checkpoint."""
    torch = require("torch", "torch")
    path = Path(path)
    if not path.is_file():
        raise WordLMError(f"{path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same to the user
        raise WordLMError(f"{path}: not a loadable torch state_dict ({type(e).__name__})") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise WordLMError(f"{path}: expected a dict of tensors (a model.state_dict())")
    floats = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    if any(v.dtype not in floats for v in sd.values()):
        raise WordLMError(f"{path}: every tensor of a state_dict to import must be floating point")
    tensors = {k: v.float().numpy() for k, v in sd.items()}
    config = infer_config(tensors, cell, str(path))
    if config.tied:
        tensors.pop("decoder.weight", None)
    validate_tensors(tensors, tensor_spec(config, None), str(path))
    vocab = load_corpus(data_dir).vocab
    if len(vocab) != config.vocab_size:
        raise WordLMError(f"vocab size mismatch: the state_dict has {config.vocab_size} words, the corpus {len(vocab)}")
    meta = {"imported_from": path.name, "source": f"state_dict of a {config.cell} LM{' (tied)' if config.tied else ''}"}
    return Checkpoint(config=config, vocab=vocab, tensors=tensors, meta=meta)
