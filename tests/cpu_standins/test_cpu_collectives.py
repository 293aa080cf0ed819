"""The sgl_kernel CPU collectives (shm_allreduce, shm_allgather, ...) over gloo, with two real ranks."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sglang_dspark.sglang.cpu_ops import register_cpu_ops


def _rank_main(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        register_cpu_ops()
        ops = torch.ops.sgl_kernel
        assert "bound" in ops.init_cpu_threads_env([os.sched_getaffinity(0).pop()])
        ops.initialize(2, rank)
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3) * (rank + 1)
        ops.shm_allreduce(x, int(dist.ReduceOp.SUM))
        strided = (torch.ones(4, 4) * (rank + 1))[:, 1]  # not contiguous: reduced in place anyway
        ops.shm_allreduce(strided, int(dist.ReduceOp.SUM))
        g0 = ops.shm_allgather(torch.full((2, 3), float(rank)), 0)
        g1 = ops.shm_allgather(torch.full((2, 3), float(rank)), 1)
        torch.save({"sum": x, "strided": strided, "g0": g0, "g1": g1}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("collectives")
    mp.start_processes(_rank_main, args=(str(d / "init"), str(d)), nprocs=2, start_method="fork", join=True)
    return [torch.load(d / f"{r}.pt") for r in range(2)]


def test_shm_allreduce_sums_in_place_on_every_rank(results):
    expected = torch.arange(6, dtype=torch.float32).reshape(2, 3) * 3
    for r in results:
        assert torch.equal(r["sum"], expected)
        assert torch.equal(r["strided"], torch.full((4,), 3.0))


def test_shm_allgather_concatenates_in_rank_order(results):
    for r in results:
        assert torch.equal(r["g0"], torch.cat([torch.zeros(2, 3), torch.ones(2, 3)], 0))
        assert torch.equal(r["g1"], torch.cat([torch.zeros(2, 3), torch.ones(2, 3)], 1))


def test_shm_allreduce_refuses_other_reductions():
    register_cpu_ops()
    with pytest.raises(Exception, match="only ReduceOp.SUM"):
        torch.ops.sgl_kernel.shm_allreduce(torch.zeros(2), int(dist.ReduceOp.MAX))
