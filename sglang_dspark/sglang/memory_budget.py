"""Test-only fixed memory budget for CPU servers.

On ``--device cpu`` SGLang sizes the KV pool from the machine's free RAM
(``get_available_gpu_memory`` -> ``get_free_cpu_memory``): many GB that change
between two server starts, so the pool sizes of two servers cannot be
compared. ``SGLANG_DSPARK_CPU_MEMORY_BUDGET_BYTES=B`` makes each SGLang
process on the CPU behave as if it ran on a device of ``B`` bytes:

    free memory = B - bytes of the CPU tensors alive in that process

(unique storages, after a garbage collection), which is what
``torch.cuda.mem_get_info`` reports on a GPU once the caching allocator is
emptied: weights, buffers and pools count as they are allocated, so SGLang's
own arithmetic (baseline before weight loading, ``--mem-fraction-static``
slack, preloaded weights, bytes per token) runs unchanged on that device.
Device-capacity defaults (chunked prefill size, ...) are not affected.

The variable is read by the plugin in every SGLang process; unset (the
default) installs nothing. A value that is not an integer of at least
:data:`MIN_BUDGET_BYTES`, or a device other than ``cpu``, is an error during
argument resolution.
"""

from __future__ import annotations

import gc
import logging
import os

import torch

logger = logging.getLogger("sglang_dspark")

ENV = "SGLANG_DSPARK_CPU_MEMORY_BUDGET_BYTES"
MIN_BUDGET_BYTES = 1 << 20
TARGET = "sglang.srt.utils.common.get_available_gpu_memory"
_CHECK_SERVER_ARGS = "sglang.srt.server_args.ServerArgs.check_server_args"


def parse_budget(raw: str | None) -> int | None:
    """Budget in bytes from the variable's text; ``None`` when unset or empty."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip().replace("_", "")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(
            f"{ENV}={raw!r}: expected an integer number of bytes (test-only switch, see "
            "docs/reliability.md)"
        ) from None
    if value < MIN_BUDGET_BYTES:
        raise ValueError(
            f"{ENV}={raw!r}: the budget must be at least {MIN_BUDGET_BYTES} bytes (1 MiB); "
            "the model's weights alone take more than that"
        )
    return value


def budget_from_env() -> int | None:
    """The budget set in this process's environment, validated; ``None`` when unset."""
    return parse_budget(os.environ.get(ENV))


def allocated_cpu_bytes() -> int:
    """Bytes of the distinct CPU tensor storages alive in this process."""
    gc.collect()
    seen: dict[int, int] = {}
    tensor = torch.Tensor
    for obj in gc.get_objects():
        # type(), not isinstance(): proxies such as torch.distributed.reduce_op
        # answer __class__ with a deprecation warning, and this is twice as fast.
        if not issubclass(type(obj), tensor):
            continue
        try:
            if obj.device.type != "cpu" or obj.is_sparse:
                continue
            storage = obj.untyped_storage()
            ptr = storage.data_ptr()
            if ptr:
                seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError, TypeError):
            continue  # tensors without a plain storage (fake, functional wrappers)
    return sum(seen.values())


def _is_cpu(device) -> bool:
    return str(getattr(device, "type", device)).split(":")[0] == "cpu"


def available_memory(orig, device, gpu_id, distributed=False, empty_cache=True, cpu_group=None):
    """AROUND hook on ``get_available_gpu_memory``: free GB of a ``B``-byte device on CPU."""
    budget = budget_from_env()
    if budget is None or not _is_cpu(device):
        return orig(device, gpu_id, distributed=distributed, empty_cache=empty_cache, cpu_group=cpu_group)
    allocated = allocated_cpu_bytes()
    free = float(max(0, budget - allocated))
    logger.info(
        "%s: device of %d bytes, %d allocated, %d free", ENV, budget, allocated, int(free)
    )
    if distributed:  # as SGLang does: the smallest free memory over the ranks
        tensor = torch.tensor(free, dtype=torch.float64)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN, group=cpu_group)
        free = tensor.item()
    return free / (1 << 30)


def check_server_args(result, server_args):
    """AFTER hook on ``ServerArgs.check_server_args``: a bad value stops the start-up."""
    budget = budget_from_env()
    device = getattr(server_args, "device", None)
    if budget is not None and device is not None and not _is_cpu(device):
        raise ValueError(
            f"{ENV} is a test-only switch for --device cpu (got --device {device}); unset it"
        )
    return result


def install() -> bool:
    """Register the hooks when the variable is set; returns whether it did."""
    if not os.environ.get(ENV, "").strip():
        return False
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(_CHECK_SERVER_ARGS, check_server_args, HookType.AFTER)
    HookRegistry.register(TARGET, available_memory, HookType.AROUND)
    return True
