"""Which part of each checkpoint expert tensor a parallel rank keeps, and where it goes.

A rank is one point of the (expert-parallel, tensor-parallel) grid of the MoE
layer:

* expert parallelism (EP, size ``ep_size``): rank ``ep_rank`` holds the
  contiguous global expert range ``[ep_rank * E/ep, (ep_rank + 1) * E/ep)``;
* tensor parallelism of the intermediate dimension (size ``tp_size``): rank
  ``tp_rank`` holds intermediate columns ``[tp_rank * I/tp, (tp_rank + 1) * I/tp)``
  of every local expert, i.e. those rows of ``w1`` (gate) and ``w3`` (up) and
  those columns of ``w2`` (down). ``I/tp`` must be a multiple of 32 so that no
  E8M0 scale block straddles two ranks.

Checkpoint tensors are per expert and MXFP4 (:mod:`sglang_dspark.moe.mxfp4`):
``w1``/``w3`` ``[I, H/2]`` bytes with ``[I, H/32]`` scales, ``w2`` ``[H, I/2]``
bytes with ``[H, I/32]`` scales. The runner layout
(:mod:`sglang_dspark.moe.moe_forward`) stacks local experts: ``w13 [E_l, 2 I_l,
H/2]`` (gate rows then up rows), ``w2 [E_l, H, I_l/2]`` and the matching scales.
:func:`copy_expert_tensor` copies the rank's slice of one checkpoint tensor
straight into that layout, byte for byte: nothing is dequantised, so loading
never holds a float copy of the experts.

SGLang may pad the intermediate dimension beyond the checkpoint's (on CPU it
rounds it up for tensor parallelism, whatever the EP size). ``intermediate_size``
is then the padded size the runner tensors are built for and
``checkpoint_intermediate_size`` the checkpoint's: each rank copies the part of
``[0, checkpoint_intermediate_size)`` that falls in its range and leaves the rest
zero. Zero gate/up rows give ``silu(0) * 0 = 0`` and zero down columns add
nothing, so the padded experts compute exactly the checkpoint's.

Each rank's :func:`~sglang_dspark.moe.moe_forward.moe_forward` output is then a
partial sum; summing (all-reducing) over all ranks of the grid gives the full
MoE output. ``tests/moe/test_expert_sharding.py`` checks exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sglang_dspark.moe import mxfp4

ShardId = Literal["w1", "w2", "w3"]
TensorKind = Literal["weight", "scale"]
SHARD_IDS: tuple[str, ...] = ("w1", "w2", "w3")


@dataclass(frozen=True)
class ExpertShard:
    """The experts and intermediate columns one (EP rank, TP rank) pair holds."""

    num_experts: int
    hidden_size: int
    intermediate_size: int
    ep_size: int = 1
    ep_rank: int = 0
    tp_size: int = 1
    tp_rank: int = 0
    checkpoint_intermediate_size: int | None = None  # None: same as intermediate_size (no padding)

    def __post_init__(self) -> None:
        for name in ("num_experts", "hidden_size", "intermediate_size", "ep_size", "tp_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.ep_rank < self.ep_size:
            raise ValueError(f"ep_rank {self.ep_rank} out of range for ep_size {self.ep_size}")
        if not 0 <= self.tp_rank < self.tp_size:
            raise ValueError(f"tp_rank {self.tp_rank} out of range for tp_size {self.tp_size}")
        if self.num_experts % self.ep_size:
            raise ValueError(f"{self.num_experts} experts do not split evenly over ep_size {self.ep_size}")
        if self.hidden_size % mxfp4.BLOCK_SIZE:
            raise ValueError(f"hidden size {self.hidden_size} is not a multiple of {mxfp4.BLOCK_SIZE}")
        if self.intermediate_size % self.tp_size or (self.intermediate_size // self.tp_size) % mxfp4.BLOCK_SIZE:
            raise ValueError(
                f"intermediate size {self.intermediate_size} must split into tp_size {self.tp_size} "
                f"shards that are multiples of {mxfp4.BLOCK_SIZE} (one E8M0 scale block)"
            )
        ckpt = self.checkpoint_intermediate
        if ckpt <= 0 or ckpt > self.intermediate_size or ckpt % mxfp4.BLOCK_SIZE:
            raise ValueError(
                f"checkpoint intermediate size {ckpt} must be a positive multiple of {mxfp4.BLOCK_SIZE} "
                f"no larger than the layer's (padded) intermediate size {self.intermediate_size}"
            )

    @property
    def checkpoint_intermediate(self) -> int:
        """Intermediate size of the checkpoint's expert tensors (unpadded)."""
        if self.checkpoint_intermediate_size is None:
            return self.intermediate_size
        return self.checkpoint_intermediate_size

    @property
    def checkpoint_range(self) -> tuple[int, int]:
        """``(start, length)`` of this TP rank's checkpoint intermediate columns (``length`` 0 for a rank in the padding)."""
        i_l = self.local_intermediate_size
        start = min(self.tp_rank * i_l, self.checkpoint_intermediate)
        return start, min(start + i_l, self.checkpoint_intermediate) - start

    @property
    def num_local_experts(self) -> int:
        return self.num_experts // self.ep_size

    @property
    def expert_offset(self) -> int:
        """Global id of local expert 0."""
        return self.ep_rank * self.num_local_experts

    @property
    def local_intermediate_size(self) -> int:
        return self.intermediate_size // self.tp_size

    def local_expert(self, global_id: int) -> int | None:
        """Local index of global expert ``global_id``, or ``None`` when another EP rank holds it."""
        if not 0 <= global_id < self.num_experts:
            raise ValueError(f"expert id {global_id} out of range [0, {self.num_experts})")
        local = global_id - self.expert_offset
        return local if 0 <= local < self.num_local_experts else None

    def local_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the four runner tensors on this rank (``w13``, ``w13_scale``, ``w2``, ``w2_scale``)."""
        e, h, i = self.num_local_experts, self.hidden_size, self.local_intermediate_size
        b = mxfp4.BLOCK_SIZE
        return {
            "w13": (e, 2 * i, h // 2),
            "w13_scale": (e, 2 * i, h // b),
            "w2": (e, h, i // 2),
            "w2_scale": (e, h, i // b),
        }

    def checkpoint_shape(self, shard_id: ShardId, kind: TensorKind) -> tuple[int, int]:
        """Full (unsharded) shape of one expert's checkpoint tensor."""
        h, i = self.hidden_size, self.checkpoint_intermediate
        per = 2 if kind == "weight" else mxfp4.BLOCK_SIZE
        return (i, h // per) if shard_id in ("w1", "w3") else (h, i // per)

    def slice_checkpoint_tensor(self, tensor: torch.Tensor, shard_id: ShardId, kind: TensorKind) -> torch.Tensor:
        """This TP rank's part of one expert's full checkpoint tensor (a view, no copy).

        ``w1``/``w3``: rows ``[r * I_l, (r + 1) * I_l)``; ``w2``: the packed
        columns (``I_l / 2`` bytes or ``I_l / 32`` scales per rank) of the same
        intermediate range, clipped to the checkpoint's intermediate size.
        """
        _check_ids(shard_id, kind)
        want = self.checkpoint_shape(shard_id, kind)
        if tuple(tensor.shape) != want:
            raise ValueError(f"{shard_id} {kind} has shape {tuple(tensor.shape)}, expected {want}")
        start, length = self.checkpoint_range
        if shard_id in ("w1", "w3"):
            return tensor.narrow(0, start, length)
        per = 2 if kind == "weight" else mxfp4.BLOCK_SIZE
        return tensor.narrow(1, start // per, length // per)

    def destination(self, param: torch.Tensor, local_expert: int, shard_id: ShardId, kind: TensorKind) -> torch.Tensor:
        """The view of a runner tensor (``w13*`` or ``w2*``) that ``shard_id`` of ``local_expert`` fills.

        Padding rows/columns beyond the checkpoint's intermediate size are not
        part of it: they keep the parameter's zeros.
        """
        i_l = self.local_intermediate_size
        _, length = self.checkpoint_range
        if shard_id == "w1":
            return param[local_expert].narrow(0, 0, length)
        if shard_id == "w3":
            return param[local_expert].narrow(0, i_l, length)
        per = 2 if kind == "weight" else mxfp4.BLOCK_SIZE
        return param[local_expert].narrow(1, 0, length // per)


def _check_ids(shard_id: str, kind: str) -> None:
    if shard_id not in SHARD_IDS:
        raise ValueError(f"shard_id must be one of {SHARD_IDS}, got {shard_id!r}")
    if kind not in ("weight", "scale"):
        raise ValueError(f"kind must be 'weight' or 'scale', got {kind!r}")


def checkpoint_intermediate_of(tensor: torch.Tensor, shard_id: ShardId, kind: TensorKind) -> int:
    """The intermediate size an expert checkpoint tensor was saved with (``w1``/``w3`` rows, ``w2`` packed columns)."""
    _check_ids(shard_id, kind)
    if tensor.dim() != 2:
        raise ValueError(f"{shard_id} {kind} must be 2-D per expert, got shape {tuple(tensor.shape)}")
    if shard_id in ("w1", "w3"):
        return int(tensor.shape[0])
    return int(tensor.shape[1]) * (2 if kind == "weight" else mxfp4.BLOCK_SIZE)


def as_raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` viewed as uint8 (int8 packed E2M1, uint8, or float8_e8m0fnu scales)."""
    if tensor.dtype == torch.uint8:
        return tensor
    if tensor.dtype in (torch.int8, torch.float8_e8m0fnu):
        return tensor.view(torch.uint8)
    raise TypeError(f"MXFP4 expert tensors are int8/uint8 bytes or float8_e8m0fnu scales, got {tensor.dtype}")


def copy_expert_tensor(
    param: torch.Tensor,
    tensor: torch.Tensor,
    *,
    shard: ExpertShard,
    global_expert: int,
    shard_id: ShardId,
    kind: TensorKind,
) -> bool:
    """Copy this rank's slice of one checkpoint expert tensor into the runner tensor ``param``.

    Args:
        param: this rank's ``w13``/``w13_scale`` (for ``w1``, ``w3``) or
            ``w2``/``w2_scale`` (for ``w2``), uint8, shaped as
            :meth:`ExpertShard.local_shapes`.
        tensor: the full checkpoint tensor of expert ``global_expert``.

    Returns:
        ``False`` (nothing copied) when another EP rank holds the expert.
    """
    local = shard.local_expert(global_expert)
    if local is None:
        return False
    src = as_raw_bytes(shard.slice_checkpoint_tensor(tensor, shard_id, kind))
    dst = shard.destination(param, local, shard_id, kind)
    if dst.shape != src.shape:
        raise ValueError(
            f"{shard_id} {kind} of expert {global_expert}: slice {tuple(src.shape)} does not fit "
            f"destination {tuple(dst.shape)}"
        )
    dst.copy_(src)
    return True
