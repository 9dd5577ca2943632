"""Text -> ids, exactly as the tutorial (and pytorch/examples word_language_model) does it.

Tokenization: split each line on whitespace and append `<eos>`. Vocabulary: ids in order of first
appearance over train, then valid, then test (33,278 words for WikiText-2). Ids are numpy int64
arrays, so that inference never needs torch; training wraps them with `torch.from_numpy`.
WikiText-2 is bundled (xz, CC BY-SA 3.0, see corpora/wikitext-2/README.md) so that nothing is
downloaded at run time.
"""

from __future__ import annotations

import hashlib
import lzma
from collections.abc import Iterable, Iterator
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


def read_words(path: Path) -> list[str]:
    words = [w for line in read_lines(path) for w in tokenize_line(line)]
    if not words:
        raise WordLMError(f"{path} is empty")
    return words


@dataclass
class Corpus:
    """The three splits as 1-D int64 id arrays, and the vocabulary built over them."""

    vocab: Vocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def load_corpus(data_dir: str | Path | None = None) -> Corpus:
    """Build the vocabulary over train, valid, test (in that order) and encode every split.

    `data_dir=None` loads the bundled WikiText-2; any folder with train.txt / valid.txt / test.txt works.
    """
    vocab = Vocab()
    splits = {}
    for split in SPLITS:
        words = read_words(_split_path(data_dir, split))
        splits[split] = np.array([vocab.add(w) for w in words], dtype=np.int64)
    return Corpus(vocab=vocab, **splits)


def load_split(vocab: Vocab, split: str, data_dir: str | Path | None = None) -> np.ndarray:
    """One split encoded with an existing (a checkpoint's) vocabulary."""
    if split not in SPLITS:
        raise WordLMError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    path = _split_path(data_dir, split)
    return np.array(vocab.encode(read_words(path)), dtype=np.int64)


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


def bptt_batches(source, bptt: int) -> Iterator[tuple]:
    """Chunks (ids[seq, batch], targets[seq, batch]) with seq <= bptt; targets are ids shifted by one.

    `source` is a numpy array or a torch tensor (training slices a tensor on its device)."""
    for i in range(0, len(source) - 1, bptt):
        seq_len = min(bptt, len(source) - 1 - i)
        yield source[i : i + seq_len], source[i + 1 : i + 1 + seq_len]
