"""wordlm.nn: torch modules on wordlm's native int8 kernels, and `quantize_dynamic`, torch.ao's call that
swaps a model's float modules for them.

The modules hold codes and scales (their state_dict is the quantized size) and run the runtime's
kernels on zero-copy views of torch tensors: one native call per layer and direction for a whole
sequence. They sit above the runtime and import torch; wordlm.runtime and wordlm.native never do.
"""

from wordlm.nn.cells import GRUCell, LSTMCell, RNNCell
from wordlm.nn.convert import DEFAULT_QINT8, DEFAULT_QUINT8, MAPPING, quantize_dynamic
from wordlm.nn.embedding import Embedding, EmbeddingBag
from wordlm.nn.linear import Linear
from wordlm.nn.rnn import GRU, LSTM, RNN

__all__ = [
    "DEFAULT_QINT8",
    "DEFAULT_QUINT8",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "Linear",
    "MAPPING",
    "RNN",
    "RNNCell",
    "Embedding",
    "EmbeddingBag",
    "quantize_dynamic",
]
