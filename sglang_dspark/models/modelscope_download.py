"""Fetch a checkpoint from ModelScope by model id, as GPUStack does, and check it before use.

GPUStack's ModelScope source (``gpustack/worker/downloaders.py``, 2.3.0) calls
``modelscope.hub.snapshot_download.snapshot_download(model_id=...,
local_dir=<cache>/<owner>/<name>)``; SGLang downloads through ModelScope too
under ``SGLANG_USE_MODELSCOPE=true``. Neither checks the shards against the index
afterwards, so an interrupted download fails deep inside weight loading on
every rank. :func:`download_checkpoint` runs :func:`check_checkpoint_index`
on the snapshot first and names the broken file.
"""

from __future__ import annotations

from pathlib import Path

from sglang_dspark.models.checkpoint_index import IndexSummary, check_checkpoint_index

__all__ = ["ModelScopeDownloadError", "download_checkpoint"]


class ModelScopeDownloadError(RuntimeError):
    """ModelScope could not provide the snapshot."""


def download_checkpoint(
    model_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    offline: bool = False,
) -> IndexSummary:
    """Download (or, with ``offline``, find in the cache) ``model_id`` and check its index.

    Args:
        model_id: ``owner/name`` on ModelScope.
        revision: branch, tag or commit (ModelScope's default branch when ``None``).
        cache_dir: ModelScope cache root (default ``$MODELSCOPE_CACHE`` or ``~/.cache/modelscope``).
        local_dir: download into this directory instead of the cache.
        offline: no network; the snapshot must already be cached.

    Raises:
        ValueError: ``model_id`` is not ``owner/name``.
        ModelScopeDownloadError: ModelScope failed (network, unknown id, not cached offline).
        CheckpointIndexError: the snapshot's files do not match its index.
    """
    owner, _, name = model_id.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"model id {model_id!r} must be 'owner/name'")
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        path = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
            local_dir=str(local_dir) if local_dir is not None else None,
            local_files_only=offline,
        )
    except Exception as e:  # noqa: BLE001 - modelscope raises many unrelated types; the message is what matters
        how = "find a cached snapshot of" if offline else "download"
        raise ModelScopeDownloadError(f"ModelScope could not {how} {model_id!r}: {type(e).__name__}: {e}") from e
    return check_checkpoint_index(path)
