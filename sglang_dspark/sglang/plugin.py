"""SGLang plugin entry point (group ``sglang.srt.plugins``).

SGLang calls :func:`load` with no arguments early in every process (CLI,
scheduler, detokenizer). It installs hooks; which implementation then serves
each path is decided in one place, :mod:`.serving_choice`, from the resolved
server arguments (and, for MoE, the GPU), the same way in every process:

- ``speculative_hook._handle_dspark``: our argument checks (errors before any
  weight is read, CPU allowed) when sglang-dspark serves DSPARK, SGLang's own
  otherwise; one start-up line says who serves and why;
- ``SpeculativeAlgorithm.create_worker``: :class:`DSparkWorker` when
  sglang-dspark serves DSPARK, SGLang's ``DSparkWorkerV2`` otherwise (with
  our step metrics around it under ``--enable-metrics``, see
  :mod:`.builtin_worker_metrics`);
- ``TorchNativeAttnBackend.forward_extend``: TARGET_VERIFY on the CPU path;
- ``Mxfp4Config``/``Fp8Config.get_quant_method``: MXFP4 experts under
  ``--moe-runner-backend flashinfer_mxfp4`` where sglang-dspark's runner serves
  (see :mod:`.mxfp4_moe_runner`);
- ``ServerArgs.check_server_args``: ``--tp-size`` / ``--ep-size`` against the
  model's heads and experts (see :mod:`.parallel_args`), and a forced MXFP4
  runner that cannot serve on the device;
- the request guards, whoever serves;
- ``BatchedPenalizerOrchestrator.__init__``: penalties apply in SGLang's
  source order in every process (SGLang builds them from a set, so the order
  changed between processes), see :mod:`.verify_logits`;
- on SGLang's CPU engine, ``UnquantizedLinearMethod.apply`` and
  ``LogitsProcessor._compute_lm_head``: products of 1-8 rows through the
  skinny GEMM where it measured faster (see :mod:`.cpu_linear`);
- ``get_available_gpu_memory``: only when the test-only
  ``SGLANG_DSPARK_CPU_MEMORY_BUDGET_BYTES`` is set, a CPU device of that many
  bytes (see :mod:`.memory_budget`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sglang_dspark.sglang.serving_choice import (
    IMPL_ENV,
    MXFP4_RUNNER_ENV,
    V4_DRAFTER,
    ServingChoice,
    announce,
    choose_dspark,
    choose_mxfp4,
    cpu_engine_enabled,
    drafter_architecture_at,
    requested,
)

logger = logging.getLogger("sglang_dspark")

_CREATE_WORKER = "sglang.srt.speculative.spec_info.SpeculativeAlgorithm.create_worker"
_HANDLE_DSPARK = "sglang.srt.arg_groups.speculative_hook._handle_dspark"
_CHECK_SERVER_ARGS = "sglang.srt.server_args.ServerArgs.check_server_args"
_DSPARK_SUBFOLDER = "dspark"  # SGLang's convention for a drafter shipped inside the target checkpoint


def _drafter_arch(cfg) -> str | None:
    """The draft architecture DSPARK would serve with: the drafter path, else what the target bundles."""
    if cfg.speculative_draft_model_path:
        return drafter_architecture_at(cfg.speculative_draft_model_path)
    target = drafter_architecture_at(cfg.model_path)
    if target == V4_DRAFTER:
        return target
    return drafter_architecture_at(Path(str(cfg.model_path)) / _DSPARK_SUBFOLDER)


def dspark_choice(server_args) -> ServingChoice:
    """Who serves DSPARK for these server arguments (raw, mid-resolution or resolved)."""
    from sglang.srt.arg_groups.model_override_base import resolved_view

    cfg = resolved_view(server_args)
    return choose_dspark(device=str(cfg.device or "cuda"), drafter_arch=_drafter_arch(cfg), asked=requested(IMPL_ENV))


def _create_worker(orig, self, server_args):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    # Argument resolution announced the choice; the scheduler makes the same one silently.
    if self is SpeculativeAlgorithm.DSPARK and dspark_choice(server_args).ours:
        from sglang_dspark.sglang.worker import DSparkWorker

        return DSparkWorker
    worker_cls = orig(self, server_args)
    if self is SpeculativeAlgorithm.DSPARK and getattr(server_args, "enable_metrics", False):
        from sglang_dspark.sglang.builtin_worker_metrics import with_step_metrics

        return with_step_metrics(worker_cls)
    return worker_cls


def _handle_dspark(orig, server_args) -> None:
    from sglang_dspark.sglang.server_args import check_builtin_dspark_args, handle_dspark

    choice = announce(dspark_choice(server_args))
    if not choice.ours:
        check_builtin_dspark_args(server_args)
        return orig(server_args)
    handle_dspark(server_args)


def _check_mxfp4_runner(server_args) -> None:
    """A forced ``SGLANG_DSPARK_MXFP4_RUNNER`` that cannot serve on this device fails during resolution."""
    from sglang.srt.arg_groups.model_override_base import resolved_view

    cfg = resolved_view(server_args)
    runners = (cfg.moe_runner_backend, getattr(cfg, "speculative_moe_runner_backend", None))
    if "flashinfer_mxfp4" in runners:
        # The launcher does not touch the GPU: its architecture is decided where the layers load.
        choose_mxfp4(device=str(cfg.device or "cuda"), sm=None, asked=requested(MXFP4_RUNNER_ENV))


def _check_parallel_sizes(result, server_args):
    from sglang_dspark.sglang.parallel_args import check_server_parallel_args

    check_server_parallel_args(server_args)
    _check_mxfp4_runner(server_args)
    return result


def load() -> None:
    """Register sglang-dspark's hooks (called by SGLang's ``load_plugins``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_dspark.sglang import memory_budget, request_guards, torch_native_verify, verify_logits
    from sglang_dspark.sglang.mxfp4_moe_runner import register_hooks as register_mxfp4_runner

    requested(IMPL_ENV), requested(MXFP4_RUNNER_ENV)  # a misspelt value fails at start-up, in every process
    register_mxfp4_runner()  # --moe-runner-backend flashinfer_mxfp4, independent of DSPARK
    HookRegistry.register(request_guards.TARGET, request_guards.check_prompt_tokens, HookType.AROUND)
    HookRegistry.register(verify_logits.ORCHESTRATOR_INIT, verify_logits.canonical_penalizer_order, HookType.AROUND)
    HookRegistry.register(_CHECK_SERVER_ARGS, _check_parallel_sizes, HookType.AFTER)
    memory_budget.install()  # test-only; nothing unless its variable is set
    HookRegistry.register(_CREATE_WORKER, _create_worker, HookType.AROUND)
    HookRegistry.register(_HANDLE_DSPARK, _handle_dspark, HookType.AROUND)
    HookRegistry.register(
        torch_native_verify.TARGET, torch_native_verify.forward_extend_with_verify, HookType.AROUND
    )
    if cpu_engine_enabled():
        from sglang_dspark.sglang import cpu_linear
        from sglang_dspark.sglang.cpu_ops import install_cpu_fallbacks, register_cpu_ops

        register_cpu_ops()
        install_cpu_fallbacks()
        cpu_linear.register_hooks()
