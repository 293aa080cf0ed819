"""ModelScope download by model id, then the index check: through the real ``modelscope`` package, offline.

The sessions have no network, so the snapshot is put where ModelScope's own
cache keeps it (``<cache>/models/<owner>--<name>/snapshots/master``) and
``download_checkpoint(..., offline=True)`` asks the package for it; the
checkpoint is the synthetic DeepSeek-V4-Flash-DSpark one (real tensor names,
index and shards).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from sglang_dspark.cli import main as cli_main
from sglang_dspark.models.checkpoint_index import INDEX_FILE, CheckpointIndexError, check_checkpoint_index
from sglang_dspark.models.modelscope_download import ModelScopeDownloadError, download_checkpoint
from sglang_dspark.models.synthetic_v4 import write_synthetic_v4_checkpoint

MODEL_ID = "deepseek-ai/DeepSeek-V4-Flash-DSpark"


@pytest.fixture(scope="module")
def v4_source(tmp_path_factory) -> Path:
    return write_synthetic_v4_checkpoint(tmp_path_factory.mktemp("v4"))


@pytest.fixture
def cached(tmp_path, v4_source) -> tuple[Path, Path]:
    """(cache root, snapshot directory) with the synthetic checkpoint in ModelScope's cache layout."""
    cache = tmp_path / "modelscope"
    snapshot = cache / "models" / MODEL_ID.replace("/", "--") / "snapshots" / "master"
    shutil.copytree(v4_source, snapshot)
    return cache, snapshot


def shards(directory: Path) -> list[str]:
    return sorted(set(json.loads((directory / INDEX_FILE).read_text())["weight_map"].values()))


def test_cached_snapshot_is_found_by_modelscope_and_checked(cached) -> None:
    cache, snapshot = cached
    summary = download_checkpoint(MODEL_ID, cache_dir=cache, offline=True)
    assert summary.directory.resolve() == snapshot.resolve()
    assert list(summary.shards) == shards(snapshot) and len(summary.shards) > 1
    weight_map = json.loads((snapshot / INDEX_FILE).read_text())["weight_map"]
    assert summary.num_tensors == len(weight_map)
    assert summary.total_bytes == sum((snapshot / s).stat().st_size for s in summary.shards)


def test_not_cached_offline_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelScopeDownloadError, match="could not find a cached snapshot of 'deepseek-ai/DeepSeek-V4-Flash-DSpark'"):
        download_checkpoint(MODEL_ID, cache_dir=tmp_path / "empty", offline=True)


@pytest.mark.parametrize("bad_id", ["DeepSeek-V4-Flash-DSpark", "a/b/c", "/name", "owner/"])
def test_model_id_must_be_owner_slash_name(bad_id, tmp_path) -> None:
    with pytest.raises(ValueError, match="must be 'owner/name'"):
        download_checkpoint(bad_id, cache_dir=tmp_path, offline=True)


def test_truncated_shard_is_named(cached) -> None:
    cache, snapshot = cached
    victim = snapshot / shards(snapshot)[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointIndexError, match=re.escape(victim.name) + " is truncated"):
        download_checkpoint(MODEL_ID, cache_dir=cache, offline=True)


def test_missing_shard_is_named(cached) -> None:
    cache, snapshot = cached
    victim = shards(snapshot)[0]
    (snapshot / victim).unlink()
    with pytest.raises(CheckpointIndexError, match="not on disk: " + re.escape(victim)):
        download_checkpoint(MODEL_ID, cache_dir=cache, offline=True)


def test_tensor_missing_from_its_shard_is_named(cached) -> None:
    _, snapshot = cached
    weight_map = json.loads((snapshot / INDEX_FILE).read_text())["weight_map"]
    name = next(n for n in sorted(weight_map) if n.startswith("mtp.0."))
    shard = snapshot / weight_map[name]
    tensors = load_file(str(shard))
    del tensors[name]
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointIndexError, match=re.escape(shard.name) + r" lacks 1 tensor\(s\).*" + re.escape(repr(name))):
        check_checkpoint_index(snapshot)


def test_missing_config_and_index(tmp_path) -> None:
    with pytest.raises(CheckpointIndexError, match="config.json is missing"):
        check_checkpoint_index(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointIndexError, match=f"neither {INDEX_FILE}"):
        check_checkpoint_index(tmp_path)


def test_cli_prints_the_path_or_one_line_error(cached, capsys) -> None:
    cache, snapshot = cached
    assert cli_main(["download", MODEL_ID, "--cache-dir", str(cache), "--offline"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(snapshot) and "complete against its index" in out
    (snapshot / shards(snapshot)[0]).unlink()
    assert cli_main(["download", MODEL_ID, "--cache-dir", str(cache), "--offline"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sglang-dspark download: ") and "not on disk" in err[0]
