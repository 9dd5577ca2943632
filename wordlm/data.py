"""Text -> ids, exactly as the tutorial (and pytorch/examples word_language_model) does it.

Tokenization: split each line on whitespace and append `<eos>`. Vocabulary: ids in order of first
appearance over train, then valid, then test (33,278 words for WikiText-2). Ids are numpy int64
arrays, so that inference never needs torch; training wraps them with `torch.from_numpy`. Text is read
in one streaming pass, line by line, into 8 bytes per token, so that a corpus of any size loads in
about eight times its token count of memory (WikiText-103: ~0.9 GB) rather than a list of strings.
WikiText-2 is bundled (xz, CC BY-SA 3.0, see corpora/wikitext-2/README.md) so that nothing is
downloaded at run time.
"""

from __future__ import annotations

import hashlib
import lzma
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wordlm.errors import WordLMError

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
BUNDLED_WIKITEXT2 = Path(__file__).parent / "corpora" / "wikitext-2"


class Vocab:
    """word <-> id, ids in order of first appearance."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for w in words:
            self.add(w)

    def add(self, word: str) -> int:
        if word not in self.stoi:
            self.stoi[word] = len(self.itos)
            self.itos.append(word)
        return self.stoi[word]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    @property
    def sha256(self) -> str:
        """Identity of the vocabulary: a checkpoint's ids mean nothing under another one."""
        return hashlib.sha256("\n".join(self.itos).encode("utf-8")).hexdigest()

    def encode(self, words: Iterable[str]) -> list[int]:
        """Map words to ids; unknown words become `<unk>` where the vocabulary has it."""
        unk = self.stoi.get(UNK)
        ids = []
        for w in words:
            i = self.stoi.get(w, unk)
            if i is None:
                raise WordLMError(f"word {w!r} is not in the vocabulary, which has no {UNK}")
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def to_text(self) -> str:
        """One word per line, in id order: vocab.txt, and the vocabulary in exported ONNX metadata."""
        return "".join(w + "\n" for w in self.itos)

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        words = text.split("\n")
        return cls(words[:-1] if words and words[-1] == "" else words)


def tokenize_line(line: str) -> list[str]:
    return line.split() + [EOS]


def _split_path(data_dir: Path | None, split: str) -> Path:
    if data_dir is None:
        return BUNDLED_WIKITEXT2 / f"{split}.txt.xz"
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise WordLMError(f"data directory {data_dir} does not exist")
    for name in (f"{split}.txt", f"{split}.txt.xz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise WordLMError(f"data directory {data_dir} has no {split}.txt")


def read_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (xz-compressed when its name ends in .xz)."""
    opener = lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise WordLMError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except lzma.LZMAError as e:
        raise WordLMError(f"{path} is not a valid xz file ({e})") from None


def encode_file(path: Path, word_id: Callable[[str], int]) -> np.ndarray:
    """The ids of a split's words, `word_id` mapping each; streamed, 8 bytes per token (an int64 array
    that grows as lines are read, never a list of the words)."""
    ids = array("q")
    for line in read_lines(path):
        ids.extend(map(word_id, tokenize_line(line)))
    if not ids:
        raise WordLMError(f"{path} is empty")
    return np.frombuffer(ids, dtype=np.int64)


@dataclass
class Corpus:
    """The three splits as 1-D int64 id arrays, and the vocabulary built over them."""

    vocab: Vocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def load_corpus(data_dir: str | Path | None = None, max_vocab: int | None = None, min_count: int = 1) -> Corpus:
    """Build the vocabulary over train, valid, test (in that order) and encode every split.

    `data_dir=None` loads the bundled WikiText-2; any folder with train.txt / valid.txt / test.txt works.
    `max_vocab` and `min_count` map rare words to `<unk>`, as WikiText-103 was made (`limit_vocab`).
    """
    if max_vocab is not None and max_vocab < 2:
        raise WordLMError(f"--max-vocab must be at least 2, got {max_vocab}")
    if min_count < 1:
        raise WordLMError(f"--min-count must be at least 1, got {min_count}")
    vocab = Vocab()
    splits = {split: encode_file(_split_path(data_dir, split), vocab.add) for split in SPLITS}
    if max_vocab is not None or min_count > 1:
        vocab = limit_vocab(vocab, list(splits.values()), max_vocab, min_count)
    return Corpus(vocab=vocab, **splits)


def limit_vocab(vocab: Vocab, splits: list[np.ndarray], max_vocab: int | None, min_count: int) -> Vocab:
    """Keep the words seen at least `min_count` times over all splits, and of those at most the
    `max_vocab - 1` most frequent (ties: the earlier first appearance), mapping the others to `<unk>`
    in place; returns the new vocabulary.

    It is the vocabulary of the text as rewritten: ids in order of first appearance, `<unk>` where
    the text first has it or a word it replaces. With no word dropped, nothing changes. The splits'
    ids are remapped in place, a block at a time, so that memory stays at 8 bytes per token.
    """
    counts = sum(np.bincount(ids, minlength=len(vocab)) for ids in splits)
    unk = vocab.stoi.get(UNK)
    keep = counts >= min_count
    if unk is not None:
        keep[unk] = False  # <unk> is not a word to rank: it is present whenever it is needed
    needs_unk = unk is not None or not keep.all()
    if max_vocab is not None and keep.sum() + needs_unk > max_vocab:
        ranked = np.argsort(-counts[keep], kind="stable")  # ids are in first-appearance order
        kept = np.flatnonzero(keep)[ranked[: max_vocab - 1]]
        keep[:] = False
        keep[kept] = True
    new = Vocab()
    remap = np.array([new.add(word if keep[i] else UNK) for i, word in enumerate(vocab.itos)], dtype=np.int64)
    block = 1 << 20
    for ids in splits:
        for start in range(0, len(ids), block):
            ids[start : start + block] = remap[ids[start : start + block]]
    return new


def load_split(vocab: Vocab, split: str, data_dir: str | Path | None = None) -> np.ndarray:
    """One split encoded with an existing (a checkpoint's) vocabulary."""
    if split not in SPLITS:
        raise WordLMError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unk = vocab.stoi.get(UNK)

    def word_id(word: str) -> int:
        i = vocab.stoi.get(word, unk)
        if i is None:
            raise WordLMError(f"word {word!r} is not in the vocabulary, which has no {UNK}")
        return i

    return encode_file(_split_path(data_dir, split), word_id)


def prefix(ids: np.ndarray, max_tokens: int | None) -> np.ndarray:
    """The first `max_tokens` ids (all of them for None): --max-tokens of eval, bench and demo."""
    if max_tokens is None:
        return ids
    if max_tokens < 2:
        raise WordLMError(f"--max-tokens must be at least 2, got {max_tokens}")
    return ids[:max_tokens]


def batchify(data: np.ndarray, batch_size: int) -> np.ndarray:
    """[n] -> [n // batch_size, batch_size]: column b is the b-th contiguous slice of the text.

    Remainder tokens that do not fill a whole row are dropped, as in the tutorial. For the alphabet
    and batch_size 4:
    ┌ a g m s ┐
    │ b h n t │
    │ c i o u │
    │ d j p v │
    │ e k q w │
    └ f l r x ┘
    """
    n = len(data) // batch_size
    return np.ascontiguousarray(data[: n * batch_size].reshape(batch_size, n).T)


def stream_slice(data: np.ndarray, batch_size: int, start: int, stop: int) -> np.ndarray:
    """The text of streams [start, stop) of `batchify(data, batch_size)`, as one 1-D array: batchify
    of it with `stop - start` streams is exactly those columns. A rank of a distributed run holds
    only its own streams this way (wordlm.train.distributed)."""
    n = len(data) // batch_size
    return data[start * n : stop * n]


def bptt_batches(source, bptt: int) -> Iterator[tuple]:
    """Chunks (ids[seq, batch], targets[seq, batch]) with seq <= bptt; targets are ids shifted by one.

    `source` is a numpy array or a torch tensor (training slices a tensor on its device)."""
    for i in range(0, len(source) - 1, bptt):
        seq_len = min(bptt, len(source) - 1 - i)
        yield source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]
