"""safetensors files as numpy arrays, memory-mapped: the runtime's way in, with no torch.

Reading maps the file and returns read-only views into it, so a 29 MB int8 model costs no copy until
the kernels pack it (docs/design.md, "How we measure": RAM is what a loaded model costs). The header
is validated entry by entry (dtype, shape, byte range inside the file, no overlap), so a truncated or
crafted file is a one-line error, not a crash. bfloat16, which numpy lacks, is widened to float32
exactly (its bits are the top half of a float32's). Writing uses the safetensors package's own
serializer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from wordlm.errors import WordLMError

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
    "BF16": np.uint16,  # raw bits, widened below
}
MAX_HEADER = 100 * 2**20  # the format's own limit


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array (read-only, memory-mapped; bfloat16 widened to float32)."""
    path = Path(path)

    def bad(why: str) -> WordLMError:
        return WordLMError(f"{path}: corrupt or truncated safetensors file ({why})")

    size = path.stat().st_size
    if size < 8:
        raise bad("shorter than its 8-byte header length")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER or 8 + n > size:
            raise bad(f"header of {n} bytes in a file of {size}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not an object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    mapped = np.memmap(path, np.uint8, "r", offset=8 + n, shape=(data_size,)) if data_size else np.empty(0, np.uint8)
    out, spans = {}, []
    for name, entry in header.items():
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in (*shape, begin, end)):
                raise TypeError("shape and offsets must be non-negative integers")
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"entry {name!r}: {e!r}") from None
        if not begin <= end <= data_size or end - begin != math.prod(shape) * np.dtype(dtype).itemsize:
            raise bad(f"{name}: bytes {begin}..{end} do not hold {entry['dtype']} {list(shape)}")
        spans.append((begin, end, name))
        array = mapped[begin:end].view(dtype).reshape(shape)
        if entry["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise bad(f"{a} and {b} overlap")
    return out


def tensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors serialization of numpy arrays."""
    from safetensors.numpy import save  # here: reading needs no safetensors (the ARM64 run under QEMU has none)

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
