"""The word-level recurrent LM in torch, for training and the torch engines: the model of
pytorch/examples' word_language_model (`RNNModel`) and of the tutorial (`LSTMModel`), every cell.

Parameter names (`encoder`, `rnn`, `decoder`) are theirs, so that their state_dicts load as they are.
`forward` returns logits; the loss lives with whoever needs it. The recurrent state is a tuple:
(h, c) for an LSTM, (h,) for a GRU or a vanilla RNN (wordlm.config.ModelConfig.state_shapes).
`TorchEngine` runs such a module behind the Engine contract (the `torch` engines, training's validation).
"""

from __future__ import annotations

import io
from functools import cached_property

import numpy as np
import torch
import torch.nn as nn

from wordlm.config import ModelConfig
from wordlm.errors import WordLMError
from wordlm.runtime import Engine, State

Hidden = tuple[torch.Tensor, ...]  # (h, c) or (h,), each [num_layers, batch, size]


def recurrent_layer(cfg: ModelConfig) -> nn.Module:
    """torch's multi-layer recurrent module for the config's cell (its registry entry: wordlm.cells)."""
    cell = cfg.cell_spec
    extra = {"proj_size": cfg.proj_size} if cell.projection else {}
    module = getattr(nn, cell.torch_module)
    return module(cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, dropout=cfg.dropout, **cell.torch_kwargs, **extra)


class RecurrentLM(nn.Module):
    """Embedding -> dropout -> multi-layer LSTM / GRU / RNN -> dropout -> Linear (tied: the embedding)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.rnn = recurrent_layer(cfg)
        self.decoder = nn.Linear(cfg.out_dim, cfg.vocab_size)
        if cfg.tied:
            self.decoder.weight = self.encoder.weight
        self.init_weights("tutorial")

    def init_weights(self, scheme: str = "tutorial") -> None:
        """Initialise the weights.

        "tutorial": embedding and decoder U(-0.1, 0.1), decoder bias 0, the recurrent layers at
        torch's default U(-1/sqrt(H), 1/sqrt(H)). In a deep LSTM stack this shrinks the
        token-dependent part of the signal about 4x per layer (5e-5 of the input's at layer 5), so
        the top layer barely sees its input and training sits at unigram loss for thousands of batches.
        "scaled": embedding U(-1, 1), input weights N(0, 1/fan_in), recurrent weights orthogonal per
        gate (Saxe et al. 2013, https://arxiv.org/abs/1312.6120) and, for an LSTM, forget-gate bias 1
        (Jozefowicz et al. 2015, https://proceedings.mlr.press/v37/jozefowicz15.html): the signal keeps
        its scale through the stack. Measured on WikiText-2 (tutorial preset, SGD lr 20, one seed):
        loss 6.78 after 1,075 batches, against 7.15 for "scaled" with the tutorial's U(-0.1, 0.1)
        embedding and a plateau near 7.0 for ~4,700 batches with "tutorial" (docs/design.md, "Known pitfalls"). A tied
        matrix takes the embedding's initialisation.
        """
        if scheme not in ("tutorial", "scaled"):
            raise WordLMError(f"unknown init scheme {scheme!r}; choose tutorial or scaled")
        emb_range = 0.1 if scheme == "tutorial" else 1.0
        if not self.cfg.tied:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.encoder.weight, -emb_range, emb_range)
        nn.init.zeros_(self.decoder.bias)
        if scheme == "tutorial":
            self.rnn.reset_parameters()
            return
        h = self.cfg.hidden_dim
        for name, p in self.rnn.named_parameters():
            with torch.no_grad():
                if name.startswith("weight_ih"):
                    nn.init.normal_(p, 0.0, p.shape[1] ** -0.5)
                elif name.startswith("weight_hh"):
                    for gate in range(self.cfg.gates):  # i, f, g, o / r, z, n / one
                        nn.init.orthogonal_(p[gate * h : (gate + 1) * h])
                elif name.startswith("weight_hr"):
                    nn.init.orthogonal_(p)
                else:
                    nn.init.zeros_(p)
                    if name.startswith("bias_ih") and self.cfg.cell == "lstm":
                        p[h : 2 * h] = 1.0  # forget gate

    def init_hidden(self, batch_size: int) -> Hidden:
        w = self.encoder.weight  # never quantized by torch-dynamic, so always a tensor
        return tuple(w.new_zeros(shape) for shape in self.cfg.state_shapes(batch_size))

    def forward(self, ids: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        # ids: [seq, batch] -> logits: [seq, batch, vocab]
        emb = self.drop(self.encoder(ids))  # [seq, batch, emb]
        has_c = self.cfg.cell_spec.has_c  # torch takes (h, c) for an LSTM, h alone otherwise
        out, hidden = self.rnn(emb, hidden if has_c else hidden[0])  # [seq, batch, out_dim]
        return self.decoder(self.drop(out)), hidden if has_c else (hidden,)


def repackage_hidden(h: Hidden) -> Hidden:
    """Detach the hidden state from the graph of the previous chunk (truncated BPTT)."""
    return tuple(t.detach() for t in h)


def build_model(ckpt) -> RecurrentLM:
    """The fp32 torch model of a float checkpoint (fp16 weights are upcast), in eval mode."""
    if ckpt.scheme is not None:
        raise WordLMError(f"checkpoint is quantized ({ckpt.scheme.name}); run it with --engine wordlm")
    model = RecurrentLM(ckpt.config)
    tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in ckpt.tensors.items()}
    if ckpt.config.tied:
        tensors["decoder.weight"] = tensors["encoder.weight"]
    model.load_state_dict(tensors)
    return model.eval()


def checkpoint_tensors(model: nn.Module) -> dict:
    """A model's weights as the numpy arrays a Checkpoint holds (fp32, on the CPU; a tied matrix once)."""
    tensors = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    if model.cfg.tied:
        del tensors["decoder.weight"]
    return tensors


def state_dict_bytes(module: torch.nn.Module) -> int:
    """Size of `torch.save(module.state_dict())`: the tutorial's `print_size_of_model` measure."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


class TorchEngine(Engine):
    """Runs an `nn.Module` with the tutorial's forward signature; also used for validation in training.

    Its numpy inputs and state cross into torch without copies (torch.from_numpy) on the CPU.
    """

    def __init__(self, model: torch.nn.Module, *, name: str = "torch", device: str = "cpu", threads: int = 1):
        self.model = model.eval()
        self.name, self.device, self.threads = name, device, threads
        self.vocab_size = model.cfg.vocab_size

    @cached_property
    def size_bytes(self) -> int:
        return state_dict_bytes(self.model)

    def init_state(self, batch_size: int) -> State:
        return tuple(np.zeros(shape, np.float32) for shape in self.model.cfg.state_shapes(batch_size))

    @torch.no_grad()
    def forward(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        logits, state = self.forward_torch(torch.as_tensor(ids), tuple(torch.as_tensor(s) for s in state))
        return logits.cpu().numpy(), tuple(s.float().cpu().numpy() for s in state)

    @torch.no_grad()
    def forward_torch(self, ids: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """The same in torch tensors on the model's device (training's validation stays on its GPU)."""
        state = tuple(s.to(self.device) for s in state)
        logits, state = self.model(ids.to(self.device), state)
        return logits.float(), state
