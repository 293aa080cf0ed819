"""Check a sharded safetensors checkpoint against its index before anything loads it.

A download that stopped early, a shard replaced by another revision's, or an
index edited by hand all show up here, from the files' headers alone: every
shard the index names exists and is complete (:func:`read_safetensors_header`),
and every tensor the index places in a shard is in that shard's header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.models.safetensors_header import SafetensorsHeaderError, read_safetensors_header

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

__all__ = ["CheckpointIndexError", "IndexSummary", "check_checkpoint_index", "index_total_size", "read_weight_map"]


class CheckpointIndexError(ValueError):
    """The checkpoint's files do not match its index."""


@dataclass(frozen=True)
class IndexSummary:
    """What the check saw: shard files, tensors and their bytes on disk."""

    directory: Path
    shards: tuple[str, ...]
    num_tensors: int
    total_bytes: int


def read_weight_map(directory: str | Path) -> dict[str, str]:
    """Tensor name -> shard file name, from ``model.safetensors.index.json``.

    A directory with only ``model.safetensors`` maps every tensor in its header
    to it. Raises :class:`CheckpointIndexError` naming the file when there is
    neither, or when the index is not JSON with a non-empty ``weight_map``.
    """
    root = Path(directory)
    index_path = root / INDEX_FILE
    if not index_path.is_file():
        if (root / SINGLE_FILE).is_file():
            try:
                return {name: SINGLE_FILE for name in read_safetensors_header(root / SINGLE_FILE)}
            except SafetensorsHeaderError as e:
                raise CheckpointIndexError(f"{root / SINGLE_FILE}: {e}") from None
        raise CheckpointIndexError(f"{root} has neither {INDEX_FILE} nor {SINGLE_FILE}")
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8")).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointIndexError(f"{index_path} is not a JSON object with a weight_map ({e})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointIndexError(f"{index_path} has no weight_map")
    return {str(k): str(v) for k, v in weight_map.items()}


def index_total_size(directory: str | Path) -> int | None:
    """The tensor bytes ``model.safetensors.index.json`` declares (``metadata.total_size``), if it declares them."""
    try:
        metadata = json.loads((Path(directory) / INDEX_FILE).read_text(encoding="utf-8")).get("metadata") or {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    return int(total) if isinstance(total, (int, float)) and total > 0 else None


def check_checkpoint_index(directory: str | Path) -> IndexSummary:
    """Check ``directory``'s shards against its safetensors index; raise :class:`CheckpointIndexError` naming the file.

    Reads only headers: a 160-shard checkpoint is checked in seconds.
    """
    root = Path(directory)
    if not (root / "config.json").is_file():
        raise CheckpointIndexError(f"{root / 'config.json'} is missing")
    weight_map = read_weight_map(root)
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    missing = sorted(s for s in by_shard if not (root / s).is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointIndexError(f"{root / INDEX_FILE} lists shard(s) that are not on disk: {shown}")
    total = 0
    for shard, names in sorted(by_shard.items()):
        path = root / shard
        try:
            header = read_safetensors_header(path)
        except SafetensorsHeaderError as e:
            raise CheckpointIndexError(f"{path}: {e}") from None
        absent = sorted(set(names) - set(header))
        if absent:
            raise CheckpointIndexError(
                f"{path} lacks {len(absent)} tensor(s) the index places there, e.g. {absent[0]!r}"
            )
        total += path.stat().st_size
    return IndexSummary(root, tuple(sorted(by_shard)), len(weight_map), total)
