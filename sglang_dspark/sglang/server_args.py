"""Server-argument resolution for ``--speculative-algorithm DSPARK`` (this project's worker).

Replaces SGLang's ``_handle_dspark``: same defaults (drafter discovery,
``num_steps = topk = 1``, ``num_draft_tokens = gamma + 1``), but every
mismatch between the flags, the drafter checkpoint and the target is an error
raised here, during argument resolution, before any weight is read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sglang_dspark.algorithm.config import DSparkConfig, DSparkConfigError
from sglang_dspark.algorithm.calibration import StsCalibration
from sglang_dspark.models.deepspec_drafter import DrafterCheckpointError, check_deepspec_checkpoint
from sglang_dspark.sglang.sps_files import load_sps_table

logger = logging.getLogger(__name__)

SUPPORTED_DEVICES = ("cpu", "cuda")
# Attention backends the verify path has been written for: on CPU the chain
# verify runs through torch_native (see torch_native_verify.py); on CUDA the
# backends that implement TARGET_VERIFY for linear chains.
CPU_ATTENTION_BACKENDS = (None, "torch_native", "intel_amx")
CUDA_ATTENTION_BACKENDS = (None, "flashinfer", "fa3", "fa4", "triton", "trtllm_mha")
DEFAULT_MAX_RUNNING_REQUESTS = 48


class DSparkArgumentError(ValueError):
    """A DSPARK flag or checkpoint combination that cannot serve."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DSparkArgumentError(f"{path} is not valid JSON: {e}") from None


def drafter_config_from_dir(path: str | os.PathLike) -> DSparkConfig:
    """DSparkConfig of a DeepSpec drafter or a DeepSeek-V4-Flash-DSpark checkpoint directory."""
    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        raise DSparkArgumentError(
            f"--speculative-draft-model-path {path}: no config.json there; point it at a "
            "DeepSpec drafter directory (config.json + safetensors)."
        )
    raw = read_json(cfg_path)
    try:
        if "dspark_block_size" in raw or "dspark_target_layer_ids" in raw:
            return DSparkConfig.from_deepseek_v4(raw)
        return DSparkConfig.from_deepspec(raw)
    except DSparkConfigError as e:
        raise DSparkArgumentError(f"--speculative-draft-model-path {path}: {e}") from None


def target_shape(model_path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(num_hidden_layers, hidden_size, vocab_size) of a local target checkpoint, or None."""
    cfg_path = Path(model_path) / "config.json"
    if not cfg_path.is_file():
        return None
    raw = read_json(cfg_path)
    text = raw.get("text_config", raw)
    try:
        return int(text["num_hidden_layers"]), int(text["hidden_size"]), int(text["vocab_size"])
    except KeyError:
        return None


def check_chain_flags(*, eagle_topk: int | None, num_steps: int | None) -> None:
    """DSPARK drafts one chain per request in one step: other values are errors, not silent overrides."""
    if eagle_topk is not None and int(eagle_topk) != 1:
        raise DSparkArgumentError(
            f"--speculative-eagle-topk {eagle_topk}: DSPARK drafts one chain per request; "
            "use --speculative-eagle-topk 1 (or leave it unset)."
        )
    if num_steps is not None and int(num_steps) != 1:
        raise DSparkArgumentError(
            f"--speculative-num-steps {num_steps}: DSPARK drafts a whole block in one step; "
            "use --speculative-num-steps 1 (or leave it unset)."
        )


def check_builtin_dspark_args(server_args) -> None:
    """Our checks in force when SGLang's built-in DSPARK serves: flags it would silently override, and a
    bundled DeepSeek-V4 drafter's ``dspark_*`` keys and block size (it only warns about those)."""
    from sglang.srt.arg_groups import speculative_hook as sh

    cfg = sh.resolving_view(server_args)
    check_chain_flags(eagle_topk=cfg.speculative_eagle_topk, num_steps=cfg.speculative_num_steps)
    path = cfg.speculative_draft_model_path or cfg.model_path
    cfg_path = Path(str(path)) / "config.json"
    if not cfg_path.is_file():
        return
    raw = read_json(cfg_path)
    if not any(key.startswith("dspark_") for key in raw):
        return
    try:
        drafter = DSparkConfig.from_deepseek_v4(raw)
    except DSparkConfigError as e:
        raise DSparkArgumentError(f"{cfg_path}: {e}") from None
    flag = cfg.speculative_dspark_block_size
    if flag is not None and int(flag) != drafter.block_size:
        raise DSparkArgumentError(
            f"--speculative-dspark-block-size {flag} differs from the drafter's block size "
            f"{drafter.block_size} ({cfg_path}); drop the flag or set it to {drafter.block_size}."
        )


def check_dspark_args(
    *,
    device: str,
    attention_backend: str | None,
    model_path: str,
    draft_path: str,
    block_size_flag: int | None,
    num_draft_tokens_flag: int | None,
    eagle_topk: int | None,
    num_steps: int | None,
    sps_table_path: str | None,
    sts_path: str | None,
) -> DSparkConfig:
    """Validate one DSPARK configuration; return the drafter config it will serve with.

    Raises:
        DSparkArgumentError: naming the flag and the fix.
    """
    dev = device.split(":")[0]
    if dev not in SUPPORTED_DEVICES:
        raise DSparkArgumentError(
            f"--device {device}: sglang-dspark's DSPARK serves on {', '.join(SUPPORTED_DEVICES)}. "
            "On NPU/XPU SGLang's built-in DSPARK serves by default: unset SGLANG_DSPARK_IMPL."
        )
    allowed = CPU_ATTENTION_BACKENDS if dev == "cpu" else CUDA_ATTENTION_BACKENDS
    if attention_backend not in allowed:
        raise DSparkArgumentError(
            f"--attention-backend {attention_backend}: DSPARK verification on {dev} supports "
            f"{', '.join(b for b in allowed if b)}; pick one of those."
        )
    check_chain_flags(eagle_topk=eagle_topk, num_steps=num_steps)

    drafter = drafter_config_from_dir(draft_path)
    shape = target_shape(model_path)
    if shape is not None:
        layers, hidden, vocab = shape
        try:
            drafter.validate_for_target(layers, hidden, vocab)
        except DSparkConfigError as e:
            raise DSparkArgumentError(
                f"--speculative-draft-model-path {draft_path} does not fit --model-path "
                f"{model_path}: {e}"
            ) from None

        # SGLang's dense models capture a layer's output as the next layer's
        # input, so the last layer's output cannot be tapped (DeepSpec's own
        # evaluator forbids it as well). V4 checkpoints tap through their own hook.
        if drafter.backbone != "deepseek_v4" and max(drafter.target_layer_ids) >= layers - 1:
            raise DSparkArgumentError(
                f"--speculative-draft-model-path {draft_path}: target_layer_ids "
                f"{list(drafter.target_layer_ids)} include the target's last layer ({layers - 1}), "
                "whose output SGLang cannot capture; train the drafter on earlier layers."
            )

    if drafter.backbone != "deepseek_v4":  # V4's drafter lives in the target checkpoint
        try:
            check_deepspec_checkpoint(draft_path, drafter)
        except DrafterCheckpointError as e:
            raise DSparkArgumentError(f"--speculative-draft-model-path {draft_path}: {e}") from None

    gamma = drafter.block_size
    if block_size_flag is not None and int(block_size_flag) != gamma:
        raise DSparkArgumentError(
            f"--speculative-dspark-block-size {block_size_flag} differs from the drafter's "
            f"block size {gamma} ({draft_path}/config.json); a drafter only accepts well at "
            f"the block size it was trained for. Drop the flag or set it to {gamma}."
        )
    if num_draft_tokens_flag is not None and int(num_draft_tokens_flag) != gamma + 1:
        raise DSparkArgumentError(
            f"--speculative-num-draft-tokens {num_draft_tokens_flag}: DSPARK verifies the "
            f"anchor plus {gamma} drafts; set it to {gamma + 1} or leave it unset."
        )
    if sps_table_path:
        try:
            load_sps_table(sps_table_path)
        except (OSError, ValueError) as e:
            raise DSparkArgumentError(f"--speculative-dspark-sps-table-path: {e}") from None
    if sts_path:
        try:
            sts = StsCalibration.from_json(sts_path)
        except (OSError, ValueError) as e:
            raise DSparkArgumentError(f"--speculative-dspark-confidence-sts-path: {e}") from None
        if len(sts.temperatures) != gamma:
            raise DSparkArgumentError(
                f"--speculative-dspark-confidence-sts-path {sts_path} holds "
                f"{len(sts.temperatures)} temperatures but the block size is {gamma}; "
                "fit the calibration for this drafter."
            )
    return drafter


def handle_dspark(server_args) -> None:
    """Drop-in for ``sglang.srt.arg_groups.speculative_hook._handle_dspark``."""
    from sglang.srt.arg_groups import speculative_hook as sh
    from sglang.srt.arg_groups.overrides import declare_resolution

    cfg = sh.resolving_view(server_args)
    source = "sglang_dspark.handle_dspark"

    if cfg.pp_size != 1:
        raise DSparkArgumentError(f"--pp-size {cfg.pp_size}: DSPARK serves with --pp-size 1.")
    if cfg.attn_dp_size > 1:
        raise DSparkArgumentError(
            "--enable-dp-attention: not supported by sglang-dspark's DSPARK yet; "
            "use tensor/expert parallelism, or SGLANG_DSPARK_IMPL=builtin."
        )

    if getattr(cfg, "enable_watermark", False):
        raise DSparkArgumentError(
            "--enable-watermark: sglang-dspark's DSPARK does not watermark drafted positions; "
            "serve watermarked requests without --speculative-algorithm DSPARK."
        )

    draft_path = cfg.speculative_draft_model_path
    if draft_path is None:
        if sh._target_checkpoint_bundles_dspark_draft(server_args):
            draft_path = cfg.model_path
        elif sub := sh._target_checkpoint_dspark_subfolder(
            cfg.model_path, cfg.revision, cfg.download_dir
        ):
            draft_path = sub
        else:
            raise DSparkArgumentError(
                "--speculative-draft-model-path is required: the target checkpoint "
                f"{cfg.model_path} bundles no DSpark drafter (no dspark_* config keys, "
                "no dspark/ subfolder)."
            )
        declare_resolution(server_args, source, speculative_draft_model_path=draft_path)
        logger.info("DSPARK drafter: %s", draft_path)

    drafter = check_dspark_args(
        device=cfg.device,
        attention_backend=cfg.attention_backend,
        model_path=cfg.model_path,
        draft_path=draft_path,
        block_size_flag=cfg.speculative_dspark_block_size,
        num_draft_tokens_flag=cfg.speculative_num_draft_tokens,
        eagle_topk=cfg.speculative_eagle_topk,
        num_steps=cfg.speculative_num_steps,
        sps_table_path=cfg.speculative_dspark_sps_table_path,
        sts_path=cfg.speculative_dspark_confidence_sts_path,
    )
    declare_resolution(
        server_args,
        source,
        speculative_num_steps=1,
        speculative_eagle_topk=1,
        speculative_num_draft_tokens=drafter.block_size + 1,
    )
    if cfg.max_running_requests is None:
        declare_resolution(
            server_args, source, max_running_requests=DEFAULT_MAX_RUNNING_REQUESTS
        )
    if cfg.device.startswith("cpu"):
        # The worker runs synchronously on CPU; SGLang's overlap path needs streams.
        sh._disable_overlap_schedule_for_cpu(server_args)
