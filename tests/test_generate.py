from __future__ import annotations

import pytest
import torch

from wordlm.checkpoint import load_checkpoint
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.generate import context_ids, detokenize, generate_ids, generate_text
from wordlm.sampling import Sampling, sample


@pytest.fixture(scope="module")
def engine_vocab(tiny_ckpt):
    ck = load_checkpoint(tiny_ckpt)
    return load_engine("torch", ck), ck.vocab


def test_same_seed_same_text_and_different_seed_differs(engine_vocab):
    e, v = engine_vocab
    a = "".join(generate_text(e, v, 40, seed=1))
    assert a == "".join(generate_text(e, v, 40, seed=1))
    assert a != "".join(generate_text(e, v, 40, seed=2))


def test_top_k_1_is_greedy(engine_vocab):
    e, v = engine_vocab
    ids = list(generate_ids(e, v, 10, prompt="the cat", sampling=Sampling(top_k=1), seed=0))
    # replay greedily by hand
    state = e.init_state(1)
    x = torch.tensor(context_ids(v, "the cat")).view(-1, 1)
    assert x[0, 0] == v.stoi["<eos>"]  # a text starts as after a line break
    for expected in ids:
        lp, state = e.next_logprobs(x, state)
        assert int(lp[0].argmax()) == expected
        x = torch.tensor([[expected]])


def test_top_p_keeps_the_smallest_nucleus():
    lp = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {sample(lp, Sampling(top_p=0.75), g) for _ in range(300)}
    assert draws == {0, 1}
    assert {sample(lp, Sampling(top_p=0.1), g) for _ in range(50)} == {0}


def test_low_temperature_concentrates_on_the_mode():
    lp = torch.log(torch.tensor([0.4, 0.35, 0.25]))
    g = torch.Generator().manual_seed(0)
    assert {sample(lp, Sampling(temperature=0.01), g) for _ in range(100)} == {0}


def test_temperature_zero_is_greedy():
    lp = torch.log(torch.tensor([0.2, 0.45, 0.35]))
    g = torch.Generator().manual_seed(0)
    assert {sample(lp, Sampling(temperature=0, top_p=0.5), g) for _ in range(20)} == {1}
    assert not Sampling(temperature=0).plain  # engines' fused samplers divide by the temperature


def test_detokenize_breaks_lines_at_eos():
    assert "".join(detokenize(iter(["a", "b", "<eos>", "c", "<eos>", "<eos>", "d"]))) == "a b\nc\n\nd"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampling=Sampling(temperature=-0.5)), "temperature must be >= 0"),
        (dict(sampling=Sampling(top_p=1.5)), "top-p"),
        (dict(sampling=Sampling(top_k=-1)), "top-k"),
    ],
)
def test_bad_sampling_options(engine_vocab, kwargs, message):
    e, v = engine_vocab
    with pytest.raises(WordLMError, match=message):
        list(generate_ids(e, v, 5, **kwargs))


def test_zero_words_is_an_error(engine_vocab):
    e, v = engine_vocab
    with pytest.raises(WordLMError, match="at least 1"):
        list(generate_ids(e, v, 0))
