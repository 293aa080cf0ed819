"""SGLang plugin entry point (group ``sglang.srt.plugins``).

SGLang calls :func:`load` with no arguments early in every process (CLI,
scheduler, detokenizer). It installs hooks so that ``--speculative-algorithm
DSPARK`` is served by this project:

- ``SpeculativeAlgorithm.create_worker``: DSPARK builds :class:`DSparkWorker`;
- ``speculative_hook._handle_dspark``: our argument checks (errors before any
  weight is read, CPU allowed);
- ``TorchNativeAttnBackend.forward_extend``: TARGET_VERIFY on the CPU path;
- ``Mxfp4Config``/``Fp8Config.get_quant_method``: MXFP4 experts under
  ``--moe-runner-backend flashinfer_mxfp4`` (see :mod:`.mxfp4_moe_runner`);
- ``ServerArgs.check_server_args``: ``--tp-size`` / ``--ep-size`` against the
  model's heads and experts (see :mod:`.parallel_args`);
- ``get_available_gpu_memory``: only when the test-only
  ``SGLANG_DSPARK_CPU_MEMORY_BUDGET_BYTES`` is set, a CPU device of that many
  bytes (see :mod:`.memory_budget`).

``SGLANG_DSPARK_IMPL=builtin`` leaves the name to SGLang's built-in DSPARK.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("sglang_dspark")

IMPL_ENV = "SGLANG_DSPARK_IMPL"
OURS = "sglang-dspark"
BUILTIN = "builtin"

_CREATE_WORKER = "sglang.srt.speculative.spec_info.SpeculativeAlgorithm.create_worker"
_HANDLE_DSPARK = "sglang.srt.arg_groups.speculative_hook._handle_dspark"
_CHECK_SERVER_ARGS = "sglang.srt.server_args.ServerArgs.check_server_args"


def selected_impl() -> str:
    """Which implementation serves DSPARK in this environment."""
    value = os.environ.get(IMPL_ENV, OURS).strip().lower()
    if value in ("", OURS, "ours", "sglang_dspark"):
        return OURS
    if value == BUILTIN:
        return BUILTIN
    raise ValueError(f"{IMPL_ENV}={value!r}: use {OURS!r} (default) or {BUILTIN!r}.")


def _create_worker(orig, self, server_args):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    if self is SpeculativeAlgorithm.DSPARK:
        from sglang_dspark.sglang.worker import DSparkWorker

        return DSparkWorker
    return orig(self, server_args)


def _handle_dspark_ours(server_args) -> None:
    from sglang_dspark import __version__
    from sglang_dspark.sglang.server_args import handle_dspark

    handle_dspark(server_args)
    logger.warning("DSPARK is served by sglang-dspark %s (%s=%s)", __version__, IMPL_ENV, OURS)


def _handle_dspark_builtin(result, server_args):
    logger.warning("DSPARK is served by SGLang's built-in implementation (%s=%s)", IMPL_ENV, BUILTIN)
    return result


def _check_parallel_sizes(result, server_args):
    from sglang_dspark.sglang.parallel_args import check_server_parallel_args

    check_server_parallel_args(server_args)
    return result


def _on_cpu() -> bool:
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0").lower() in ("1", "true", "yes")


def load() -> None:
    """Register sglang-dspark's hooks (called by SGLang's ``load_plugins``)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_dspark.sglang import memory_budget, request_guards
    from sglang_dspark.sglang.mxfp4_moe_runner import register_hooks as register_mxfp4_runner

    register_mxfp4_runner()  # --moe-runner-backend flashinfer_mxfp4, independent of DSPARK
    HookRegistry.register(request_guards.TARGET, request_guards.check_prompt_tokens, HookType.AROUND)
    HookRegistry.register(_CHECK_SERVER_ARGS, _check_parallel_sizes, HookType.AFTER)
    memory_budget.install()  # test-only; nothing unless its variable is set
    impl = selected_impl()
    if impl == BUILTIN:
        HookRegistry.register(_HANDLE_DSPARK, _handle_dspark_builtin, HookType.AFTER)
        return

    from sglang_dspark.sglang import torch_native_verify

    HookRegistry.register(_CREATE_WORKER, _create_worker, HookType.AROUND)
    HookRegistry.register(_HANDLE_DSPARK, _handle_dspark_ours, HookType.REPLACE)
    HookRegistry.register(
        torch_native_verify.TARGET, torch_native_verify.forward_extend_with_verify, HookType.AROUND
    )
    if _on_cpu():
        from sglang_dspark.sglang.cpu_ops import install_cpu_fallbacks, register_cpu_ops

        register_cpu_ops()
        install_cpu_fallbacks()
