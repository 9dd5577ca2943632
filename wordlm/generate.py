"""Text generation by sampling: the tutorial's loop (multinomial over softmax(logits / T)), plus a
prompt, top-k and top-p (nucleus) filtering, a seed, and clean text out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from wordlm.data import EOS, Vocab
from wordlm.engines import Engine
from wordlm.errors import WordLMError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None  # keep the k most likely words; None or 0: all
    top_p: float | None = None  # keep the smallest set with probability >= p (Holtzman et al. 2019,
    # https://arxiv.org/abs/1904.09751); None or 1.0: all

    def check(self) -> None:
        if not self.temperature > 0:
            raise WordLMError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise WordLMError(f"top-k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise WordLMError(f"top-p must be in (0, 1], got {self.top_p}")


def sample(logprobs: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    """Draw one word id from logprobs[vocab] under temperature, top-k and top-p."""
    logits = logprobs.float() / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if s.top_p is not None and s.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        # drop a word when the words strictly more likely than it already reach top_p
        drop = (torch.cumsum(sorted_p, 0) - sorted_p) >= s.top_p
        probs = probs.scatter(0, order[drop], 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))


def encode_prompt(vocab: Vocab, prompt: str) -> list[int]:
    """Whitespace-split words, as in the corpus; a line break becomes `<eos>`."""
    words = []
    lines = prompt.split("\n")
    for i, line in enumerate(lines):
        words += line.split()
        if i < len(lines) - 1:
            words.append(EOS)
    return vocab.encode(words)


def generate_ids(
    engine: Engine,
    vocab: Vocab,
    num_words: int,
    prompt: str | None = None,
    sampling: Sampling = Sampling(),
    seed: int | None = None,
) -> Iterator[int]:
    """Yield `num_words` sampled word ids, one at a time, continuing `prompt`.

    Without a prompt the text starts as after a line break (`<eos>`), or, for a vocabulary without
    one, from a random word, as the tutorial does.
    """
    if num_words < 1:
        raise WordLMError(f"number of words must be at least 1, got {num_words}")
    sampling.check()
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    if prompt and prompt.strip():
        context = encode_prompt(vocab, prompt)
    elif EOS in vocab:
        context = [vocab.stoi[EOS]]
    else:
        context = [int(torch.randint(len(vocab), (1,), generator=gen))]
    state = engine.init_state(1)
    ids = torch.tensor(context, dtype=torch.int64).view(-1, 1)  # [seq, 1]
    for _ in range(num_words):
        logprobs, state = engine.next_logprobs(ids, state)
        word = sample(logprobs[0], sampling, gen)
        yield word
        ids = torch.tensor([[word]], dtype=torch.int64)


def detokenize(words: Iterator[str]) -> Iterator[str]:
    """Words -> text pieces: spaces between words, a line break at `<eos>`."""
    at_line_start = True
    for w in words:
        if w == EOS:
            at_line_start = True
            yield "\n"
        else:
            yield w if at_line_start else " " + w
            at_line_start = False


def generate_text(engine: Engine, vocab: Vocab, num_words: int, **kwargs) -> Iterator[str]:
    """Text pieces of a sampled continuation, ready to stream."""
    return detokenize(vocab.itos[i] for i in generate_ids(engine, vocab, num_words, **kwargs))
