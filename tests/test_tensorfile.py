"""safetensors read as numpy (memory-mapped): any damage to a checkpoint's files is a WordLMError,
never another exception (hypothesis mutates headers, configs and tensors)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wordlm.checkpoint import load_checkpoint
from wordlm.checkpoint.tensorfile import read_tensors, tensors_bytes
from wordlm.errors import WordLMError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def test_round_trip_and_memory_map(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([-128, 127], np.int8)}
    (tmp_path / "t.safetensors").write_bytes(tensors_bytes(arrays))
    back = read_tensors(tmp_path / "t.safetensors")
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
    assert isinstance(back["a"].base, np.memmap) or isinstance(back["a"], np.memmap)  # no copy
    assert not back["a"].flags.writeable


@pytest.fixture(scope="module")
def weights(tiny_ckpt):
    return (tiny_ckpt / "model.safetensors").read_bytes()


def _check_loads_or_refuses(path):
    try:
        load_checkpoint(path)
    except WordLMError as e:
        assert "\n" not in str(e)


@FUZZ
@given(data=st.data())
def test_mutated_headers_are_refused_cleanly(tiny_ckpt, weights, tmp_path_factory, data):
    n = struct.unpack("<Q", weights[:8])[0]
    header = json.loads(weights[8 : 8 + n])
    name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
    field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
    junk = st.one_of(
        st.integers(-(2**70), 2**70),
        st.text(max_size=5),
        st.lists(st.integers(-5, 2**40), max_size=4),
        st.none(),
        st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "F8_E4M3"]),
    )
    if field is None:
        header[name] = data.draw(junk)
    else:
        header[name][field] = data.draw(junk)
    raw = json.dumps(header).encode()
    length = data.draw(st.one_of(st.just(len(raw)), st.integers(0, 2**64 - 1)))
    path = tmp_path_factory.mktemp("h") / "c"
    shutil.copytree(tiny_ckpt, path)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", length) + raw + weights[8 + n :])
    _check_loads_or_refuses(path)


@FUZZ
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4))
def test_truncated_and_flipped_files_are_refused_cleanly(tiny_ckpt, weights, tmp_path_factory, cut, flips):
    data = bytearray(weights[: max(0, len(weights) - cut)])
    for at, mask in flips:
        if data:
            data[at % len(data)] ^= mask
    path = tmp_path_factory.mktemp("t") / "c"
    shutil.copytree(tiny_ckpt, path)
    (path / "model.safetensors").write_bytes(bytes(data))
    _check_loads_or_refuses(path)


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_mutated_configs_are_refused_cleanly(tiny_ckpt, tmp_path_factory, data):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    section = data.draw(st.sampled_from(["model", "vocab", "quantization", "format_version", "meta"]))
    if section == "model":
        key = data.draw(st.sampled_from(sorted(cfg["model"])))
        cfg["model"][key] = data.draw(JSON)
    else:
        cfg[section] = data.draw(JSON)
    path = tmp_path_factory.mktemp("c") / "c"
    shutil.copytree(tiny_ckpt, path)
    (path / "config.json").write_text(json.dumps(cfg))
    _check_loads_or_refuses(path)
