"""State dicts saved by other code, read into wordlm checkpoints (torch: `torch.load(weights_only=True)`)."""

from __future__ import annotations

from pathlib import Path

from wordlm.checkpoint import Checkpoint, tensor_spec, validate_tensors
from wordlm.config import ModelConfig
from wordlm.data import load_corpus
from wordlm.errors import WordLMError, require


def import_tutorial(state_dict_path: str | Path, data_dir: str | Path | None = None) -> Checkpoint:
    """A state_dict saved from the tutorial's `LSTMModel`, plus the corpus vocabulary, as a Checkpoint.

    Sizes come from the tensors' shapes; dropout is the tutorial's 0.5 (it does not change inference).
    """
    torch = require("torch", "torch")
    state_dict_path = Path(state_dict_path)
    if not state_dict_path.is_file():
        raise WordLMError(f"{state_dict_path}: no such file")
    try:
        sd = torch.load(state_dict_path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same to the user
        raise WordLMError(f"{state_dict_path}: not a loadable torch state_dict ({type(e).__name__})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WordLMError(f"{state_dict_path}: expected a dict of tensors (a model.state_dict())")
    for key in ("encoder.weight", "rnn.weight_hh_l0", "decoder.weight"):
        if key not in sd:
            raise WordLMError(f"{state_dict_path}: not a tutorial LSTMModel state_dict (no {key})")
    vocab_size, emb_dim = sd["encoder.weight"].shape
    num_layers = sum(1 for k in sd if k.startswith("rnn.weight_ih_l"))
    config = ModelConfig(
        vocab_size=vocab_size,
        emb_dim=emb_dim,
        hidden_dim=sd["rnn.weight_hh_l0"].shape[1],
        num_layers=num_layers,
        dropout=0.5,
    )
    floats = (torch.float32, torch.float16, torch.bfloat16)
    tensors = {k: v.float().numpy() if v.dtype in floats else v.numpy() for k, v in sd.items()}
    validate_tensors(tensors, tensor_spec(config, None), str(state_dict_path))
    vocab = load_corpus(data_dir).vocab
    if len(vocab) != vocab_size:
        raise WordLMError(f"vocab size mismatch: the state_dict has {vocab_size} words, the corpus {len(vocab)}")
    meta = {"imported_from": state_dict_path.name, "source": "tutorial LSTMModel state_dict"}
    return Checkpoint(config=config, vocab=vocab, tensors=tensors, meta=meta)
