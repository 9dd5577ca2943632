"""Text generation by sampling: the tutorial's loop (multinomial over softmax(logits / T)), plus a
prompt, top-k and top-p (nucleus) filtering, a seed, and clean text out.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wordlm.data import EOS, Vocab
from wordlm.errors import WordLMError
from wordlm.runtime import Engine, Sampling, new_rng


def encode_prompt(vocab: Vocab, prompt: str) -> list[int]:
    """Whitespace-split words, as in the corpus; a line break becomes `<eos>`."""
    words = []
    lines = prompt.split("\n")
    for i, line in enumerate(lines):
        words += line.split()
        if i < len(lines) - 1:
            words.append(EOS)
    return vocab.encode(words)


def context_ids(vocab: Vocab, prompt: str) -> list[int]:
    """What the model reads before predicting: `<eos>` (every line of the corpus starts after one,
    so a text starts as after a line break), then the prompt's words."""
    return ([vocab.stoi[EOS]] if EOS in vocab else []) + encode_prompt(vocab, prompt)


def generate_ids(
    engine: Engine,
    vocab: Vocab,
    num_words: int,
    prompt: str | None = None,
    sampling: Sampling | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Yield `num_words` sampled word ids, one at a time, continuing `prompt` (see `context_ids`).

    With neither a prompt nor an `<eos>` in the vocabulary, it starts from a random word, as the
    tutorial does.
    """
    if num_words < 1:
        raise WordLMError(f"number of words must be at least 1, got {num_words}")
    sampling = sampling or Sampling()
    sampling.check()
    rng = new_rng(seed)
    context = context_ids(vocab, prompt or "") or [int(rng.integers(len(vocab)))]
    state = engine.init_state(1)
    ids = np.array(context, np.int64).reshape(-1, 1)  # [seq, 1]
    for _ in range(num_words):
        words, state = engine.sample_next(ids, state, sampling, rng)
        yield int(words[0])
        ids = words.reshape(1, 1)


def detokenize(words: Iterator[str], at_line_start: bool = True) -> Iterator[str]:
    """Words -> text pieces: spaces between words, a line break at `<eos>`.

    `at_line_start=False` continues a text that ends mid-line: the first word gets its space.
    """
    for w in words:
        if w == EOS:
            at_line_start = True
            yield "\n"
        else:
            yield w if at_line_start else " " + w
            at_line_start = False


def generate_text(engine: Engine, vocab: Vocab, num_words: int, **kwargs) -> Iterator[str]:
    """Text pieces of a sampled continuation, ready to stream."""
    prompt = kwargs.get("prompt")
    continues_line = bool(prompt and prompt.strip()) and not prompt[-1].isspace()
    words = (vocab.itos[i] for i in generate_ids(engine, vocab, num_words, **kwargs))
    return detokenize(words, at_line_start=not continues_line)
