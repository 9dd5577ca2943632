from __future__ import annotations

import json
import shutil

import pytest
import torch

from wordlm.checkpoint import build_model, load_checkpoint, save_checkpoint
from wordlm.errors import WordLMError


def test_round_trip_preserves_everything(tiny_ckpt, tmp_path):
    ck = load_checkpoint(tiny_ckpt)
    ck.tensors = {k: v.half() for k, v in ck.tensors.items()}  # fp16 storage, as shipped
    save_checkpoint(ck, tmp_path / "c")
    again = load_checkpoint(tmp_path / "c")
    assert again.config == ck.config and again.vocab.itos == ck.vocab.itos
    assert all(again.tensors[k].dtype == torch.float16 for k in again.tensors)
    assert all(torch.equal(again.tensors[k], ck.tensors[k]) for k in ck.tensors)
    assert build_model(again).encoder.weight.dtype == torch.float32


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
