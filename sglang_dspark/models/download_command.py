"""``sglang-dspark download MODEL_ID``: fetch a checkpoint from ModelScope and check it against its index.

Exit status: 0 downloaded and complete; 1 ModelScope failed or the files do not
match the index (one line on stderr naming the file); 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Attach ``download`` to the top-level parser."""
    p = groups.add_parser("download", help="fetch a checkpoint from ModelScope by id and check its shards")
    p.add_argument("model_id", help="ModelScope model id, e.g. deepseek-ai/DeepSeek-V4-Flash-DSpark")
    p.add_argument("--revision", help="branch, tag or commit (default: the repository's default branch)")
    p.add_argument("--cache-dir", type=Path, help="ModelScope cache root (default: $MODELSCOPE_CACHE or ~/.cache/modelscope)")
    p.add_argument("--local-dir", type=Path, help="download into this directory instead of the cache")
    p.add_argument("--offline", action="store_true", help="no network: use the cached snapshot")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``download``: print the checked snapshot's path and size; one-line error otherwise."""
    from sglang_dspark.models.checkpoint_index import CheckpointIndexError
    from sglang_dspark.models.modelscope_download import ModelScopeDownloadError, download_checkpoint

    try:
        summary = download_checkpoint(
            args.model_id,
            revision=args.revision,
            cache_dir=args.cache_dir,
            local_dir=args.local_dir,
            offline=args.offline,
        )
    except (ValueError, ModelScopeDownloadError, CheckpointIndexError) as e:
        print(f"sglang-dspark download: {e}", file=sys.stderr)
        return 1
    print(
        f"{summary.directory}\n{len(summary.shards)} shard(s), {summary.num_tensors} tensors, "
        f"{summary.total_bytes / 2**30:.2f} GiB: complete against its index"
    )
    return 0
