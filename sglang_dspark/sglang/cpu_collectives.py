"""``torch.ops.sgl_kernel`` shared-memory collectives of the CPU sgl-kernel, over torch.distributed (gloo).

SGLang 0.5.23's CPU tensor-parallel path calls four ops of the unpublished CPU
build of sgl-kernel when ``cpu_has_amx_support()`` or the host is arm64
(``srt/distributed/bootstrap.py`` and ``GroupCoordinator.all_reduce`` /
``all_gather`` via ``is_shm_available``):

* ``init_cpu_threads_env(int[] cpu_ids) -> str``: bind this rank's OpenMP
  threads to its cores (``SGLANG_CPU_OMP_THREADS_BIND``);
* ``initialize(int size, int rank) -> ()``: set up the shared-memory world of
  the tensor-parallel ranks;
* ``shm_allreduce(Tensor(a!) data, int reduce_op) -> ()``: in-place sum;
* ``shm_allgather(Tensor data, int dim) -> Tensor``: concatenation along ``dim``.

On an x86 CPU without AMX (these machines) SGLang takes
``torch.distributed.all_reduce`` / ``all_gather_single`` on its gloo groups
instead and calls none of them; on arm64 it calls them whatever sgl-kernel
holds. These stand-ins do the same collectives on the tensor-parallel group's
gloo ``cpu_group`` (the world ``initialize`` names: ``LOCAL_SIZE`` is the TP
size, so only groups of that size reach the ops), so an arm64 host serves
``--tp-size N`` without the CPU sgl-kernel build. Slower than shared memory,
but exact.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "COLLECTIVE_OP_SCHEMAS",
    "init_cpu_threads_env",
    "initialize",
    "shm_allgather",
    "shm_allreduce",
]

_WORLD: dict[str, int] = {}


def _group():
    """The tensor-parallel gloo group, or the default group before SGLang sets its groups up."""
    try:
        from sglang.srt.distributed import get_tp_group

        return get_tp_group().cpu_group
    except Exception:  # noqa: BLE001 - parallel state not initialised (tests, early start-up)
        return None


def init_cpu_threads_env(cpu_ids: list[int]) -> str:
    """Pin this process to ``cpu_ids`` and use one torch thread per core; return a summary line."""
    cpu_ids = [int(c) for c in cpu_ids]
    if cpu_ids:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpu_ids)
        torch.set_num_threads(len(cpu_ids))
    return f"OMP threads bound to cores {cpu_ids} ({torch.get_num_threads()} threads)"


def initialize(size: int, rank: int) -> None:
    """Record the shared-memory world (the tensor-parallel ranks); the collectives use its gloo group."""
    _WORLD.update(size=int(size), rank=int(rank))


def shm_allreduce(data: torch.Tensor, reduce_op: int) -> None:
    """Sum ``data`` over the tensor-parallel ranks, in place (the shared-memory kernel supports only SUM)."""
    if int(reduce_op) != int(dist.ReduceOp.SUM):
        raise ValueError(f"shm_allreduce supports only ReduceOp.SUM, got {reduce_op}")
    if data.is_contiguous():
        dist.all_reduce(data, op=dist.ReduceOp.SUM, group=_group())
        return
    buf = data.contiguous()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=_group())
    data.copy_(buf)


def shm_allgather(data: torch.Tensor, dim: int) -> torch.Tensor:
    """Every tensor-parallel rank's ``data`` concatenated along ``dim``, in rank order."""
    group = _group()
    world = dist.get_world_size(group)
    src = data.contiguous()
    parts = [torch.empty_like(src) for _ in range(world)]
    dist.all_gather(parts, src, group=group)
    return torch.cat(parts, dim=dim)


# name -> (schema, implementation, fake). SGLang's cpu_graph_runner registers the
# fakes of shm_allreduce / shm_allgather itself; the other two are never traced.
COLLECTIVE_OP_SCHEMAS = {
    "init_cpu_threads_env": ("init_cpu_threads_env(int[] cpu_ids) -> str", init_cpu_threads_env, None),
    "initialize": ("initialize(int size, int rank) -> ()", initialize, None),
    "shm_allreduce": ("shm_allreduce(Tensor(a!) data, int reduce_op) -> ()", shm_allreduce, None),
    "shm_allgather": ("shm_allgather(Tensor data, int dim) -> Tensor", shm_allgather, None),
}
