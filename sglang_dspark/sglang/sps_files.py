"""Reading SPS tables given to ``--speculative-dspark-sps-table-path``.

Accepts this project's format (``sglang-dspark-sps/1``, see
:mod:`sglang_dspark.algorithm.sps_table`) and the lookup format SGLang's
built-in DSPARK profiler writes (``sample_batch_tokens`` /
``sample_steps_per_sec``), so one profile serves both implementations.
"""

from __future__ import annotations

import json
from pathlib import Path

from sglang_dspark.algorithm.sps_table import SpsTable, SpsTableFormatError


def load_sps_table(path: str | Path) -> SpsTable:
    """The SPS table in ``path``, in either accepted format.

    Raises:
        SpsTableFormatError: malformed file, or SGLang's additive format (not supported).
        OSError: unreadable file.
    """
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpsTableFormatError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and "sample_batch_tokens" in data:
        tokens = data.get("sample_batch_tokens")
        sps = data.get("sample_steps_per_sec")
        if not isinstance(tokens, list) or not isinstance(sps, list) or len(tokens) != len(sps):
            raise SpsTableFormatError(
                f"{path}: sample_batch_tokens and sample_steps_per_sec must be lists of equal length"
            )
        try:
            return SpsTable(
                token_counts=tuple(int(t) for t in tokens),
                steps_per_second=tuple(float(s) for s in sps),
                notes=f"converted from SGLang's built-in SPS format ({path})",
            )
        except (TypeError, ValueError) as exc:
            raise SpsTableFormatError(f"{path}: {exc}") from exc
    if isinstance(data, dict) and "bias_seconds" in data:
        raise SpsTableFormatError(
            f"{path}: SGLang's additive SPS format is not supported; profile a lookup table "
            "with `python -m sglang_dspark.profile_sps` or SGLang's dspark_sps_profiler."
        )
    return SpsTable.from_dict(data, source=str(path))
