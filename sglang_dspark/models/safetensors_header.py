"""Read a safetensors file's header (names, dtypes, shapes) without its data.

Enough to check a checkpoint before any weight is loaded: every tensor is
listed with its byte range, so a file shorter than its last range is
truncated, and a tensor whose dtype is not floating point was saved wrong.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FLOAT_DTYPES", "SafetensorsHeaderError", "TensorInfo", "read_safetensors_header"]

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_MAX_HEADER_BYTES = 100 * 2**20


class SafetensorsHeaderError(ValueError):
    """A file that is not a complete safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    end: int


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name -> :class:`TensorInfo`; raises if the header or the file size is wrong."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise SafetensorsHeaderError(f"{path.name}: {size} bytes, too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise SafetensorsHeaderError(f"{path.name}: header length {header_len} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsHeaderError(f"{path.name}: unreadable header ({e})") from e
    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = entry["data_offsets"]
            info = TensorInfo(dtype=str(entry["dtype"]), shape=tuple(int(d) for d in entry["shape"]), end=int(end))
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsHeaderError(f"{path.name}: malformed entry for {name!r}") from e
        tensors[name] = info
    needed = data_start + max((t.end for t in tensors.values()), default=0)
    if size < needed:
        raise SafetensorsHeaderError(
            f"{path.name} is truncated: {size} bytes on disk, its header describes {needed}"
        )
    return tensors
