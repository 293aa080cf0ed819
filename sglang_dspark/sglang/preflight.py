"""``sglang-dspark preflight [--gpu NAME] [--gpus N] -- <sglang serve args>``: the plan, without a GPU or weights.

Runs SGLang 0.5.23's own argument resolution with this plugin's hooks
(:mod:`.arg_resolution`) as it would run on the named GPU (SGLang's platform
facts stated through its ``override_platform``), on any machine; reads only
config files and safetensors headers and index, never weights. Prints the plan
(who serves DSPARK and the MoE runner and why, drafter, attention backend,
parallel layout, checkpoint files, a per-GPU memory estimate from
:mod:`.memory_plan`) and every error SGLang or the plugin raises. A directory
with only the checkpoint's config and index files (what ``gpustack deploy``
fetches) is enough: shard completeness is then not checked, and the plan says so.
Exit status 0 when the plan serves, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class GpuFacts:
    """What resolution needs to know of a GPU kind."""

    name: str
    capability: tuple[int, int]
    memory_gib: int

    def platform_facts(self) -> dict:
        """SGLang 0.5.23 platform facts (``runtime_context``) of a CUDA machine with this GPU."""
        major, minor = self.capability
        return dict(
            is_cuda=True, is_hip=False, is_npu=False, is_xpu=False, is_musa=False, is_mps=False,
            is_sm90=major == 9, is_sm100=major == 10, is_sm100_or_sm110=major in (10, 11), is_sm110=major == 11,
            is_sm120=major == 12, is_blackwell=major in (10, 11, 12), is_hopper_with_cuda_12_3=major == 9,
            has_amx=False, has_flashinfer=True, device_sm=major * 10 + minor, device_capability=(major, minor),
        )


# Vendor data sheets: compute capability and memory per GPU.
GPUS = {
    g.name.lower(): g
    for g in (
        GpuFacts("H20", (9, 0), 96), GpuFacts("H20-141G", (9, 0), 141), GpuFacts("H100", (9, 0), 80),
        GpuFacts("H200", (9, 0), 141), GpuFacts("H800", (9, 0), 80), GpuFacts("B200", (10, 0), 180),
        GpuFacts("GB200", (10, 0), 186), GpuFacts("A100", (8, 0), 80), GpuFacts("A800", (8, 0), 80),
        GpuFacts("L40S", (8, 9), 48), GpuFacts("RTX-PRO-6000", (12, 0), 96),
    )
}


@dataclass(frozen=True)
class PreflightReport:
    """The plan lines and the errors (each with its fix where known)."""

    plan: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.errors


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _resolve(argv: list[str], gpu: GpuFacts | None):
    """(ServerArgs, None) or (None, error line) for ``sglang serve ARGV`` resolved as on ``gpu``."""
    from sglang.srt.runtime_context import override_platform

    from sglang_dspark.sglang.arg_resolution import resolve_server_args

    scope = override_platform(**gpu.platform_facts()) if gpu else contextlib.nullcontext()
    stderr = io.StringIO()
    try:
        with scope, contextlib.redirect_stderr(stderr):
            return resolve_server_args(argv), None
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        return None, f"sglang serve's argument parser: {lines[-1] if lines else 'exited'}"
    except Exception as e:  # noqa: BLE001 - any resolution error is what the operator must see
        return None, f"{type(e).__name__}: {e}"


def _plan_lines(server_args, gpu: GpuFacts | None, gpus: int | None,
                checkpoint_bytes: int | None) -> tuple[list[str], list[str]]:
    from sglang.srt.arg_groups.model_override_base import resolved_view

    from sglang_dspark.sglang.plugin import dspark_choice
    from sglang_dspark.sglang.serving_choice import MXFP4_RUNNER_ENV, choose_mxfp4, requested
    from sglang_dspark.sglang.server_args import drafter_config_from_dir, read_json

    cfg = resolved_view(server_args)
    plan, errors = [], []
    device = str(cfg.device or "cuda")
    plan.append(f"device: {device}" + (f" ({gpu.name}, SM{gpu.capability[0]}{gpu.capability[1]}, "
                                       f"{gpu.memory_gib} GiB)" if gpu else ""))
    if str(cfg.speculative_algorithm or "").upper() == "DSPARK":
        choice = dspark_choice(server_args)
        plan.append(choice.line())
        draft = cfg.speculative_draft_model_path
        if draft and (Path(str(draft)) / "config.json").is_file():
            try:
                d = drafter_config_from_dir(draft)
            except ValueError as e:
                errors.append(str(e))
                return plan, errors
            plan.append(f"drafter: {draft} ({d.backbone}): block size {d.block_size}, taps target layers "
                        f"{list(d.target_layer_ids)}, {d.num_draft_layers} drafter layer(s)")
        if choice.ours:
            mode = "sglang-dspark's prefix scheduler (confidence head, SPS table " \
                f"{cfg.speculative_dspark_sps_table_path or 'default for the device'}, STS " \
                f"{cfg.speculative_dspark_confidence_sts_path or 'none'})"
        else:
            mode = f"SGLang's SGLANG_RAGGED_VERIFY_MODE={os.environ.get('SGLANG_RAGGED_VERIFY_MODE', 'static')}"
        plan.append(f"verify: up to {cfg.speculative_num_draft_tokens} tokens per request per step, {mode}")
    if "flashinfer_mxfp4" in (cfg.moe_runner_backend, getattr(cfg, "speculative_moe_runner_backend", None)):
        sm = gpu.capability if gpu else None
        plan.append(choose_mxfp4(device=device, sm=sm, asked=requested(MXFP4_RUNNER_ENV)).line())
    plan.append(f"attention backend: {cfg.attention_backend}")
    tp, ep, pp = int(cfg.tp_size or 1), int(cfg.ep_size or 1), int(cfg.pp_size or 1)
    model_cfg = Path(str(cfg.model_path)) / "config.json"
    layout = f"parallel: --tp-size {tp} --ep-size {ep} --pp-size {pp}"
    if model_cfg.is_file():
        raw = read_json(model_cfg)
        text = raw.get("text_config", raw)
        heads = text.get("num_attention_heads")
        experts = next((text[k] for k in ("n_routed_experts", "num_experts", "num_local_experts") if k in text), None)
        if heads:
            layout += f"; {heads // tp} of {heads} attention heads per rank"
        if experts:
            layout += f"; {experts // ep} of {experts} routed experts per rank"
    plan.append(layout)
    if model_cfg.is_file() and gpu is not None and checkpoint_bytes:
        from sglang_dspark.sglang.memory_plan import plan_memory

        memory = plan_memory(text, checkpoint_bytes=checkpoint_bytes, gpu_gib=gpu.memory_gib, tp_size=tp,
                             mem_fraction_static=float(cfg.mem_fraction_static or 0.9),
                             kv_cache_dtype=str(cfg.kv_cache_dtype or "auto"))
        plan.append(memory.line())
        if memory.error():
            errors.append(memory.error())
    if gpus is not None and tp * pp > gpus:
        errors.append(f"--tp-size {tp} x --pp-size {pp} needs {tp * pp} GPUs; --gpus {gpus} given: "
                      "lower the parallel sizes or add GPUs")
    return plan, errors


def _checkpoint_lines(model: str) -> tuple[list[str], list[str], int | None]:
    """Plan and error lines for a sharded checkpoint, and its bytes; a copy of only its configs is fine."""
    from sglang_dspark.models.checkpoint_index import (
        CheckpointIndexError,
        check_checkpoint_index,
        index_total_size,
        read_weight_map,
    )

    try:
        shards = sorted(set(read_weight_map(model).values()))
        if not any((Path(model) / s).is_file() for s in shards):
            total = index_total_size(model)
            size = f", {total / 2**30:.2f} GiB by its index" if total else ""
            return [f"checkpoint: {model}: configs only here ({len(shards)} shard(s) listed{size}); "
                    "shard completeness not checked"], [], total
        summary = check_checkpoint_index(model)
    except CheckpointIndexError as e:
        return [], [f"checkpoint: {e} (download it again: sglang-dspark download MODEL_ID)"], None
    return [f"checkpoint: {model}: {len(summary.shards)} shard(s), {summary.num_tensors} tensors, "
            f"{summary.total_bytes / 2**30:.2f} GiB, complete against its index"], [], summary.total_bytes


def preflight(argv: list[str], *, gpu: str | None = None, gpus: int | None = None) -> PreflightReport:
    """The plan for ``sglang serve ARGV`` on ``gpus`` GPUs of kind ``gpu`` (this machine's device without one)."""
    from sglang_dspark.models.checkpoint_index import INDEX_FILE

    facts = None
    if gpu is not None:
        facts = GPUS.get(gpu.lower())
        if facts is None:
            return PreflightReport(errors=(f"--gpu {gpu}: unknown GPU; known: {', '.join(g.name for g in GPUS.values())}",))
        if _flag_value(argv, "--device") is None:
            argv = [*argv, "--device", "cuda"]
    plan: list[str] = []
    errors: list[str] = []
    checkpoint_bytes = None
    model = _flag_value(argv, "--model-path")
    if model and (Path(model) / INDEX_FILE).is_file():
        checkpoint_plan, checkpoint_errors, checkpoint_bytes = _checkpoint_lines(model)
        plan += checkpoint_plan
        errors += checkpoint_errors
    server_args, error = _resolve(argv, facts)
    if error:
        errors.append(error)
    else:
        more_plan, more_errors = _plan_lines(server_args, facts, gpus, checkpoint_bytes)
        plan += more_plan
        errors += more_errors
    return PreflightReport(tuple(plan), tuple(errors))


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Attach ``preflight`` to the top-level parser."""
    p = groups.add_parser("preflight", help="resolve a sglang serve command as on a GPU, without one; print the plan")
    p.add_argument("--gpu", help=f"GPU kind to resolve for ({', '.join(g.name for g in GPUS.values())})")
    p.add_argument("--gpus", type=int, help="GPUs on the node")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then the sglang serve arguments")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """``preflight``: print the plan and the errors; 0 when it serves, 1 otherwise."""
    serve_args = list(args.serve_args)
    if serve_args[:1] == ["--"]:
        serve_args = serve_args[1:]
    if not serve_args:
        print("sglang-dspark preflight: give the sglang serve arguments after --", file=sys.stderr)
        return 2
    report = preflight(serve_args, gpu=args.gpu, gpus=args.gpus)
    if args.json:
        print(json.dumps({"ok": report.ok, "plan": report.plan, "errors": report.errors}, indent=2))
    else:
        print_report(report)
    return 0 if report.ok else 1


def print_report(report: PreflightReport) -> None:
    """The plan, then each error, then the verdict, as the command prints them."""
    for line in report.plan:
        print(f"  {line}")
    for line in report.errors:
        print(f"ERROR {line}")
    print("preflight: the plan serves" if report.ok else f"preflight: {len(report.errors)} error(s)", flush=True)
