"""Start-up checks of ``--tp-size`` / ``--ep-size`` against the model's head and expert counts.

SGLang 0.5.23 only finds a tensor-parallel size that does not divide the
attention heads when the scheduler processes build the model (a bare
``AssertionError`` in ``LlamaAttention.__init__`` of every rank), and an
expert-parallel size that does not divide the experts inside the MoE layer.
These checks run in the launching process during ``check_server_args``, before
any scheduler starts or weight loads, and name the flag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["ParallelArgumentError", "check_parallel_args", "check_server_parallel_args"]

# Config keys that hold the number of routed experts (Mixtral, Qwen-MoE, DeepSeek, GPT-OSS).
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


class ParallelArgumentError(ValueError):
    """A tensor- or expert-parallel size that the model cannot be split by."""


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    return config.get("text_config") or config


def check_parallel_args(config: dict[str, Any], *, tp_size: int, ep_size: int = 1) -> None:
    """Raise ParallelArgumentError when ``tp_size`` / ``ep_size`` cannot split the model in ``config``.

    * attention heads must divide by ``--tp-size``;
    * key-value heads must divide by ``--tp-size``, or ``--tp-size`` by them
      (SGLang then replicates each KV head);
    * routed experts must divide by ``--ep-size``, and ``--ep-size`` must divide ``--tp-size``.
    """
    cfg = _text_config(config)
    heads = cfg.get("num_attention_heads")
    if tp_size > 1 and isinstance(heads, int) and heads % tp_size:
        raise ParallelArgumentError(
            f"--tp-size {tp_size} does not divide the model's {heads} attention heads; "
            f"use a --tp-size that divides {heads}."
        )
    kv_heads = cfg.get("num_key_value_heads", heads)
    if tp_size > 1 and isinstance(kv_heads, int) and kv_heads > 0:
        if (tp_size < kv_heads and kv_heads % tp_size) or (tp_size >= kv_heads and tp_size % kv_heads):
            raise ParallelArgumentError(
                f"--tp-size {tp_size} cannot split the model's {kv_heads} key-value heads "
                f"(one must divide the other)."
            )
    if ep_size > 1:
        if tp_size % ep_size:
            raise ParallelArgumentError(f"--ep-size {ep_size} must divide --tp-size {tp_size}.")
        experts = next((cfg[k] for k in _EXPERT_KEYS if isinstance(cfg.get(k), int)), None)
        if experts is not None and experts % ep_size:
            raise ParallelArgumentError(
                f"--ep-size {ep_size} does not divide the model's {experts} experts; "
                f"use an --ep-size that divides {experts}."
            )


def check_server_parallel_args(server_args: Any) -> None:
    """Run check_parallel_args on a resolved ServerArgs whose model is a local directory."""
    cfg_path = Path(str(getattr(server_args, "model_path", ""))) / "config.json"
    if not cfg_path.is_file():
        return  # hub ids and dummy models: SGLang's own checks apply
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    check_parallel_args(
        config,
        tp_size=int(getattr(server_args, "tp_size", 1) or 1),
        ep_size=int(getattr(server_args, "ep_size", 1) or 1),
    )
