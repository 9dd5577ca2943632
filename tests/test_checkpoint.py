from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from wordlm.checkpoint import load_checkpoint, save_checkpoint
from wordlm.errors import WordLMError
from wordlm.train.model import build_model


def test_round_trip_preserves_everything(tiny_ckpt, tmp_path):
    ck = load_checkpoint(tiny_ckpt)
    ck.tensors = {k: v.astype(np.float16) for k, v in ck.tensors.items()}  # fp16 storage, as shipped
    save_checkpoint(ck, tmp_path / "c")
    again = load_checkpoint(tmp_path / "c")
    assert again.config == ck.config and again.vocab.itos == ck.vocab.itos
    assert all(again.tensors[k].dtype == np.float16 for k in again.tensors)
    assert all(np.array_equal(again.tensors[k], ck.tensors[k]) for k in ck.tensors)
    assert build_model(again).encoder.weight.dtype == torch.float32


def test_bfloat16_files_load_as_float32_exactly(tiny_ckpt, tmp_path):
    """numpy has no bfloat16: such tensors (saved by torch) widen to float32 bit for bit."""
    from safetensors.torch import save_file

    ck = load_checkpoint(tiny_ckpt)
    bf = {k: torch.from_numpy(np.array(v)).bfloat16() for k, v in ck.tensors.items()}
    save_checkpoint(ck, tmp_path / "c")
    save_file(bf, tmp_path / "c" / "model.safetensors")
    again = load_checkpoint(tmp_path / "c")
    for k, v in bf.items():
        assert again.tensors[k].dtype == np.float32 and np.array_equal(again.tensors[k], v.float().numpy())


def test_save_replaces_a_checkpoint_but_never_another_folder(tiny_ckpt, tmp_path):
    ck = load_checkpoint(tiny_ckpt)
    save_checkpoint(ck, tmp_path / "c")
    save_checkpoint(ck, tmp_path / "c")  # replacing a checkpoint is fine
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(WordLMError, match="refusing to overwrite"):
        save_checkpoint(ck, tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "data"]  # no temp leftovers


def _copy(src, tmp_path):
    dst = tmp_path / "bad"
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: (p / "model.safetensors").unlink(), "not a wordlm checkpoint"),
        (
            lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:-100]),
            "corrupt or truncated",
        ),
        (lambda p: (p / "config.json").write_text("{nope"), "not valid JSON"),
        (lambda p: _edit_config(p, lambda c: c.update(format_version=99)), "format_version 99"),
        (lambda p: _edit_config(p, lambda c: c["model"].update(hidden_dim=32)), "has shape"),
        (lambda p: _edit_config(p, lambda c: c["model"].update(emb_dim="512")), "emb_dim must be a positive integer"),
        (lambda p: _edit_config(p, lambda c: c["model"].update(dropout="abc")), "dropout must be a number"),
        (lambda p: _edit_config(p, lambda c: c.update(format_version="1")), "format_version '1'"),
        (lambda p: (p / "config.json").write_text("[" * 100_000 + "]" * 100_000), "nested too deeply"),
        (lambda p: _truncate_header(p), "corrupt or truncated"),
        (lambda p: _overlap(p), "overlap|do not hold"),
        (lambda p: (p / "vocab.txt").write_text("a\nb\n"), "vocabulary mismatch"),
        (
            lambda p: (p / "vocab.txt").write_text(
                "\n".join(reversed((p / "vocab.txt").read_text().split("\n")[:-1])) + "\n"
            ),
            "sha256 differs",
        ),
    ],
)
def test_bad_checkpoints_give_clear_errors(tiny_ckpt, tmp_path, corrupt, message):
    path = _copy(tiny_ckpt, tmp_path)
    corrupt(path)
    with pytest.raises(WordLMError, match=message):
        load_checkpoint(path)


def _truncate_header(path):
    """A header length far past the end of the file."""
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes((2**40).to_bytes(8, "little") + data[8:])


def _overlap(path):
    """Two tensors' byte ranges made to overlap (a crafted header)."""
    import struct

    data = (path / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    a, b = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])[:2]
    header[b]["data_offsets"] = [header[a]["data_offsets"][0], header[a]["data_offsets"][0] + 4]
    raw = json.dumps(header).encode().ljust(n)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_missing_checkpoint(tmp_path):
    with pytest.raises(WordLMError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_written_files_get_normal_permissions(tiny_ckpt, tmp_path):
    import os

    save_checkpoint(load_checkpoint(tiny_ckpt), tmp_path / "c")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "c" / "config.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_swap_killed_between_its_renames_is_recovered(tiny_ckpt, tmp_path):
    """The state of a process killed after moving the old copy aside: the next reader puts it back."""
    import os

    save_checkpoint(load_checkpoint(tiny_ckpt), tmp_path / "c")
    os.replace(tmp_path / "c", tmp_path / ".c.old-999999999")  # a pid that is not running
    (tmp_path / ".c.999999999-x.tmp").mkdir()  # and its half-written new copy
    assert load_checkpoint(tmp_path / "c").config.vocab_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
