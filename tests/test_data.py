from __future__ import annotations

import numpy as np
import pytest

from wordlm.data import EOS, UNK, Vocab, batchify, bptt_batches, load_corpus, load_split, stream_slice
from wordlm.errors import WordLMError


def test_vocab_order_of_first_appearance_over_train_valid_test(tmp_path):
    (tmp_path / "train.txt").write_text("b a\n a c\n")
    (tmp_path / "valid.txt").write_text("d\n")
    (tmp_path / "test.txt").write_text("e b\n")
    c = load_corpus(tmp_path)
    assert c.vocab.itos == ["b", "a", EOS, "c", "d", "e"]
    assert c.train.tolist() == [0, 1, 2, 1, 3, 2]
    assert c.test.tolist() == [5, 0, 2]


def test_bundled_wikitext2_is_the_tutorials():
    c = load_corpus()
    assert len(c.vocab) == 33278
    assert (c.train.size, c.valid.size, c.test.size) == (2088628, 217646, 245569)
    assert c.test.dtype == np.int64


def test_batchify_columns_are_contiguous_text():
    b = batchify(np.arange(26), 4)
    assert b.shape == (6, 4)
    assert b[:, 1].tolist() == list(range(6, 12))


def test_a_slice_of_streams_is_those_columns_of_the_batch():
    data = np.arange(27)
    for start, stop in [(0, 4), (1, 3), (3, 4)]:
        assert np.array_equal(
            batchify(stream_slice(data, 4, start, stop), stop - start), batchify(data, 4)[:, start:stop]
        )


def _rare_words_corpus(d):
    # counts over all splits: a 4, <eos> 4, b 3, then c, d, e and <unk> once each
    (d / "train.txt").write_text("a b a c\n d a b\n")
    (d / "valid.txt").write_text("e a\n")
    (d / "test.txt").write_text("b <unk>\n")
    return d


def test_min_count_and_max_vocab_map_rare_words_to_unk(tmp_path):
    d = _rare_words_corpus(tmp_path)
    c = load_corpus(d, min_count=2)  # c, d, e become <unk>, which takes c's place (first appearance)
    assert c.vocab.itos == ["a", "b", UNK, EOS]
    assert c.train.tolist() == [0, 1, 0, 2, 3, 2, 0, 1, 3]
    assert (c.valid.tolist(), c.test.tolist()) == ([2, 0, 3], [1, 2, 3])
    c = load_corpus(d, max_vocab=3)  # the 2 most frequent (a and <eos>, a tie broken by first appearance) and <unk>
    assert c.vocab.itos == ["a", UNK, EOS]
    assert c.train.tolist() == [0, 1, 0, 1, 2, 1, 0, 1, 2]
    assert load_corpus(d, max_vocab=3, min_count=4).vocab.itos == ["a", UNK, EOS]
    plain = load_corpus(d)
    for same in (load_corpus(d, max_vocab=7), load_corpus(d, min_count=1)):  # nothing to drop: nothing changes
        assert same.vocab.itos == plain.vocab.itos and np.array_equal(same.train, plain.train)
    with pytest.raises(WordLMError, match="--max-vocab must be at least 2"):
        load_corpus(d, max_vocab=1)
    with pytest.raises(WordLMError, match="--min-count must be at least 1"):
        load_corpus(d, min_count=0)


def test_bptt_batches_targets_are_shifted_and_cover_everything():
    src = batchify(np.arange(11), 1)
    chunks = list(bptt_batches(src, 4))
    assert [len(c) for c, _ in chunks] == [4, 4, 2]
    assert np.array_equal(np.concatenate([t for _, t in chunks]).reshape(-1), np.arange(1, 11))


def test_unknown_words_map_to_unk_or_fail():
    assert Vocab(["a", "<unk>"]).encode(["a", "zzz"]) == [0, 1]
    with pytest.raises(WordLMError, match="not in the vocabulary"):
        Vocab(["a"]).encode(["zzz"])


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "has no train.txt"),
        (lambda d: [(d / f"{s}.txt").write_text("x\n") for s in ("train", "valid")], "has no test.txt"),
        (
            lambda d: [(d / f"{s}.txt").write_text("" if s == "valid" else "x\n") for s in ("train", "valid", "test")],
            "is empty",
        ),
        (
            lambda d: [
                (d / f"{s}.txt").write_bytes(b"\xff\xfe bad" if s == "test" else b"x\n")
                for s in ("train", "valid", "test")
            ],
            "not UTF-8",
        ),
    ],
)
def test_bad_data_directories(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(WordLMError, match=message):
        load_corpus(tmp_path)


def test_missing_directory_and_unknown_split(tmp_path):
    with pytest.raises(WordLMError, match="does not exist"):
        load_corpus(tmp_path / "nope")
    with pytest.raises(WordLMError, match="unknown split"):
        load_split(Vocab(["a"]), "dev", tmp_path)
