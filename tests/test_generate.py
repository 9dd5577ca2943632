from __future__ import annotations

import numpy as np
import pytest

from wordlm.checkpoint import load_checkpoint
from wordlm.engines import load_engine
from wordlm.errors import WordLMError
from wordlm.runtime import Sampling, new_rng, sample
from wordlm.tasks.generate import context_ids, detokenize, generate_ids, generate_text


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
    x = np.array(context_ids(v, "the cat")).reshape(-1, 1)
    assert x[0, 0] == v.stoi["<eos>"]  # a text starts as after a line break
    for expected in ids:
        lp, state = e.next_logprobs(x, state)
        assert int(lp[0].argmax()) == expected
        x = np.array([[expected]])


def _lp(*p):
    return np.log(np.array(p, np.float32))


def test_top_p_keeps_the_smallest_nucleus():
    lp, g = _lp(0.5, 0.3, 0.15, 0.05), new_rng(0)
    draws = {sample(lp, Sampling(top_p=0.75), g) for _ in range(300)}
    assert draws == {0, 1}
    assert {sample(lp, Sampling(top_p=0.1), g) for _ in range(50)} == {0}


def test_top_k_keeps_the_k_most_likely():
    lp, g = _lp(0.1, 0.4, 0.2, 0.3), new_rng(0)
    assert {sample(lp, Sampling(top_k=2), g) for _ in range(300)} == {1, 3}


def test_draws_follow_the_distribution():
    p = np.array([0.05, 0.5, 0.15, 0.3])
    g = new_rng(1)
    freq = np.bincount([sample(np.log(p), Sampling(temperature=1.0), g) for _ in range(6000)], minlength=4) / 6000
    assert 0.5 * np.abs(freq - p).sum() < 0.03  # total variation distance
    hot = p**0.5 / (p**0.5).sum()  # temperature 2
    freq = np.bincount([sample(np.log(p), Sampling(temperature=2.0), g) for _ in range(6000)], minlength=4) / 6000
    assert 0.5 * np.abs(freq - hot).sum() < 0.03


def test_low_temperature_concentrates_on_the_mode():
    lp, g = _lp(0.4, 0.35, 0.25), new_rng(0)
    assert {sample(lp, Sampling(temperature=0.01), g) for _ in range(100)} == {0}


def test_temperature_zero_is_greedy():
    lp, g = _lp(0.2, 0.45, 0.35), new_rng(0)
    assert {sample(lp, Sampling(temperature=0, top_p=0.5), g) for _ in range(20)} == {1}


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=1e-38),  # below float32's smallest normal: greedy
        Sampling(temperature=1e-40),
        Sampling(temperature=1e-30, top_p=0.5),
        Sampling(top_p=1e-46),  # rounds to 0 in float32: keeps the most likely word
        Sampling(temperature=1e-45, top_p=1e-300, top_k=3),
        Sampling(temperature=100.0, top_p=1e-9),
    ],
)
def test_extreme_sampling_values_take_the_most_likely_word(sampling):
    """Never a NaN distribution, never the vocabulary's last word by accident: the mode."""
    lp = np.log(np.array([0.1, 0.2, 0.6, 0.1], np.float32))
    g = new_rng(0)
    sampling.check()
    assert {sample(lp, sampling, g) for _ in range(50)} == {2}


def test_detokenize_breaks_lines_at_eos():
    assert "".join(detokenize(iter(["a", "b", "<eos>", "c", "<eos>", "<eos>", "d"]))) == "a b\nc\n\nd"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampling=Sampling(temperature=-0.5)), "--temperature: must be a finite number in \\[0, inf\\)"),
        (dict(sampling=Sampling(top_p=1.5)), "top-p"),
        (dict(sampling=Sampling(top_k=-1)), "top-k"),
        (dict(sampling=Sampling(temperature=float("nan"))), "--temperature: must be a finite number"),
        (dict(sampling=Sampling(temperature=float("inf"))), "--temperature: must be a finite number"),
        (dict(seed=-1), "seed must be an integer >= 0"),
    ],
)
def test_bad_sampling_options(engine_vocab, kwargs, message):
    e, v = engine_vocab
    with pytest.raises(WordLMError, match=message):
        list(generate_ids(e, v, 5, **kwargs))


def test_seeds_of_any_size_work(engine_vocab):
    e, v = engine_vocab
    big = 18446744073709551616  # 2**64: once a traceback (torch's generator takes int64)
    assert "".join(generate_text(e, v, 8, seed=big)) == "".join(generate_text(e, v, 8, seed=big))


def test_zero_words_is_an_error(engine_vocab):
    e, v = engine_vocab
    with pytest.raises(WordLMError, match="at least 1"):
        list(generate_ids(e, v, 0))
