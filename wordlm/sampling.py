"""Choosing the next word from a distribution: temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wordlm.errors import WordLMError


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0  # 0: greedy (the most likely word), as in OpenAI's API
    top_k: int | None = None  # keep the k most likely words; None or 0: all
    # keep the smallest set with probability >= p (Holtzman et al. 2019, https://arxiv.org/abs/1904.09751)
    top_p: float | None = None  # None or 1.0: all

    def check(self) -> None:
        if not self.temperature >= 0:
            raise WordLMError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise WordLMError(f"top-k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise WordLMError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def plain(self) -> bool:
        """Only a temperature: what an engine may sample inside its graph."""
        return self.temperature > 0 and not self.top_k and (self.top_p is None or self.top_p >= 1.0)


def sample(logprobs: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    """Draw one word id from logprobs[vocab] under temperature, top-k and top-p (the tutorial's
    `multinomial(exp(logits / T))`, with filters); temperature 0 takes the most likely word."""
    if s.temperature == 0:
        return int(torch.argmax(logprobs))
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
