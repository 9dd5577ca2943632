"""wordlm: word-level LSTM language models, from text to a small, fast, quantized model."""

from wordlm.checkpoint import Checkpoint, build_model, import_tutorial, load_checkpoint, save_checkpoint
from wordlm.data import Corpus, Vocab, load_corpus, load_split
from wordlm.engines import Engine, load_engine
from wordlm.errors import WordLMError
from wordlm.evaluate import EvalResult, evaluate
from wordlm.model import LSTMLM, ModelConfig, preset

__version__ = "0.1.0"

__all__ = [
    "LSTMLM",
    "Checkpoint",
    "Corpus",
    "Engine",
    "EvalResult",
    "ModelConfig",
    "Vocab",
    "WordLMError",
    "build_model",
    "evaluate",
    "import_tutorial",
    "load_checkpoint",
    "load_corpus",
    "load_engine",
    "load_split",
    "preset",
    "save_checkpoint",
]
