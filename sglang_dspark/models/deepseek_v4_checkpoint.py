"""Read a DeepSeek-V4-Flash-DSpark checkpoint per rank, through its safetensors index.

* :class:`V4Checkpoint` opens ``config.json`` and
  ``model.safetensors.index.json`` and checks that every shard the index names
  exists; :meth:`V4Checkpoint.dspark_config` maps the ``dspark_*`` keys to
  :class:`~sglang_dspark.algorithm.config.DSparkConfig` and checks that the
  drafter stages ``mtp.0 .. mtp.{n-1}`` are in the index.
* :class:`V4Reader` reads tensors lazily: a shard file is opened only when a
  tensor it holds is asked for (``opened`` records which), and slices are read
  with ``safe_open(...).get_slice`` so a rank touches only its bytes.
  :meth:`V4Reader.read_experts` fills the MoE runner layout of one layer for
  one (EP, TP) rank byte for byte (int8 e2m1 + ue8m0 scales, never a float
  copy); :meth:`V4Reader.read_linear` dequantises FP8 128x128 block-scaled
  linears where a path needs float weights; :meth:`V4Reader.read_drafter`
  reads the drafter stages.

Every failure (missing tensor or shard, truncated shard, wrong dtype or shape)
raises :class:`CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.models.checkpoint_index import INDEX_FILE, CheckpointIndexError, read_weight_map
from sglang_dspark.models.fp8_block import dequantize_fp8_block
from sglang_dspark.moe.expert_sharding import SHARD_IDS, ExpertShard, copy_expert_tensor

_EXPERT_WEIGHT_DTYPES = (torch.int8, torch.uint8)
_SCALE_DTYPES = (torch.float8_e8m0fnu, torch.uint8)


class CheckpointError(ValueError):
    """The checkpoint on disk does not match what the loader needs."""


@dataclass(frozen=True)
class V4Checkpoint:
    """A V4-Flash(-DSpark) checkpoint directory: its config and tensor -> shard index."""

    directory: Path
    config: Mapping[str, Any]
    weight_map: Mapping[str, str]

    def __post_init__(self) -> None:
        missing = sorted({f for f in self.weight_map.values() if not (self.directory / f).is_file()})
        if missing:
            raise CheckpointError(f"{self.directory / INDEX_FILE} lists shard(s) that do not exist: {missing}")
        for key in ("hidden_size", "n_routed_experts", "moe_intermediate_size", "num_hidden_layers"):
            if key not in self.config:
                raise CheckpointError(f"{self.directory / 'config.json'} lacks {key!r}")

    @classmethod
    def open(cls, directory: str | Path) -> "V4Checkpoint":
        """Read ``config.json`` and the safetensors index of ``directory``."""
        root = Path(directory)
        for name in ("config.json", INDEX_FILE):
            if not (root / name).is_file():
                raise CheckpointError(f"{root / name} is missing")
        config = json.loads((root / "config.json").read_text())
        try:
            weight_map = read_weight_map(root)
        except CheckpointIndexError as e:
            raise CheckpointError(str(e)) from None
        return cls(root, config, weight_map)

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    def dspark_config(self) -> DSparkConfig:
        """The drafter's :class:`DSparkConfig`, after checking its stages are in the index."""
        cfg = DSparkConfig.from_deepseek_v4(dict(self.config))
        for stage in range(cfg.num_draft_layers):
            if not any(name.startswith(f"mtp.{stage}.") for name in self.weight_map):
                raise CheckpointError(
                    f"{self.directory / INDEX_FILE}: drafter stage mtp.{stage} has no tensors "
                    f"(config expects {cfg.num_draft_layers} stages)"
                )
        return cfg

    def expert_shard(self, *, ep_size: int = 1, ep_rank: int = 0, tp_size: int = 1, tp_rank: int = 0,
                     drafter: bool = False) -> ExpertShard:
        """The routed-expert split of one rank (drafter stages may have their own expert count)."""
        experts = int(self.config["n_routed_experts"])
        if drafter:
            experts = int(self.config.get("dspark_n_routed_experts") or experts)
        return ExpertShard(
            num_experts=experts,
            hidden_size=int(self.config["hidden_size"]),
            intermediate_size=int(self.config["moe_intermediate_size"]),
            ep_size=ep_size, ep_rank=ep_rank, tp_size=tp_size, tp_rank=tp_rank,
        )

    def shard_of(self, name: str) -> str:
        """The shard file holding tensor ``name``."""
        try:
            return self.weight_map[name]
        except KeyError:
            raise CheckpointError(f"{self.directory / INDEX_FILE}: tensor {name!r} is not in the index") from None

    def plan(self, names: Iterable[str]) -> dict[str, list[str]]:
        """Group tensor names by the shard that holds them (the files a rank will open)."""
        out: dict[str, list[str]] = {}
        for name in names:
            out.setdefault(self.shard_of(name), []).append(name)
        return out

    def expert_names(self, layer: str, shard: ExpertShard) -> list[str]:
        """Checkpoint names of the routed-expert tensors rank ``shard`` needs in ``layer`` (``layers.3``, ``mtp.0``)."""
        return [
            f"{layer}.ffn.experts.{e}.{w}.{kind}"
            for e in range(shard.expert_offset, shard.expert_offset + shard.num_local_experts)
            for w in SHARD_IDS
            for kind in ("weight", "scale")
        ]


@dataclass(frozen=True)
class DrafterWeights:
    """The drafter read for one rank: config, non-expert tensors, and routed experts per stage."""

    config: DSparkConfig
    tensors: Mapping[str, torch.Tensor]
    experts: Mapping[str, Mapping[str, torch.Tensor]]


@dataclass
class V4Reader:
    """Lazy per-rank reader of a :class:`V4Checkpoint` (opens a shard on first use)."""

    checkpoint: V4Checkpoint
    opened: list[str] = field(default_factory=list)
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)

    def _handle(self, file: str):
        if file not in self._handles:
            from safetensors import SafetensorError, safe_open

            path = self.checkpoint.directory / file
            try:
                self._handles[file] = safe_open(str(path), framework="pt")
            except SafetensorError as exc:
                raise CheckpointError(f"{path}: cannot read shard (truncated or corrupt?): {exc}") from exc
            self.opened.append(file)
        return self._handles[file]

    def _slice(self, name: str):
        file = self.checkpoint.shard_of(name)
        handle = self._handle(file)
        if name not in handle.keys():
            raise CheckpointError(f"{self.checkpoint.directory / file}: tensor {name!r} is missing (the index lists it)")
        return file, handle.get_slice(name)

    def read(self, name: str, *, dtypes: tuple[torch.dtype, ...] | None = None,
             shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Read one whole tensor, checking its dtype and shape when given."""
        file, sl = self._slice(name)
        tensor = sl[:]
        self._check(file, name, tensor, dtypes, shape)
        return tensor

    def _check(self, file, name, tensor, dtypes, shape) -> None:
        where = f"{self.checkpoint.directory / file}: tensor {name!r}"
        if dtypes is not None and tensor.dtype not in dtypes:
            raise CheckpointError(f"{where} has dtype {tensor.dtype}, expected one of {list(dtypes)}")
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{where} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")

    def read_expert_tensor(self, name: str, shard: ExpertShard, shard_id: str, kind: str) -> torch.Tensor:
        """This TP rank's rows/columns of one expert tensor, reading only those bytes from disk."""
        file, sl = self._slice(name)
        dtypes = _EXPERT_WEIGHT_DTYPES if kind == "weight" else _SCALE_DTYPES
        full = shard.checkpoint_shape(shard_id, kind)
        dtype = _safetensors_dtype(sl.get_dtype())
        if dtype not in dtypes:
            raise CheckpointError(
                f"{self.checkpoint.directory / file}: tensor {name!r} has dtype {dtype}, expected one of {list(dtypes)}"
            )
        if tuple(sl.get_shape()) != full:
            raise CheckpointError(
                f"{self.checkpoint.directory / file}: tensor {name!r} has shape {tuple(sl.get_shape())}, expected {full}"
            )
        i_l = shard.local_intermediate_size
        if shard_id in ("w1", "w3"):
            return sl[shard.tp_rank * i_l : (shard.tp_rank + 1) * i_l]
        cols = i_l // (2 if kind == "weight" else 32)
        return sl[:, shard.tp_rank * cols : (shard.tp_rank + 1) * cols]

    def read_experts(self, layer: str, shard: ExpertShard) -> dict[str, torch.Tensor]:
        """Routed experts of ``layer`` for rank ``shard`` in the runner layout (uint8, see ``local_shapes``)."""
        params = {name: torch.empty(s, dtype=torch.uint8) for name, s in shard.local_shapes().items()}
        # The runner tensors are filled from already-sliced reads, so the slice step sees a 1-rank grid.
        local = ExpertShard(
            num_experts=shard.num_experts, hidden_size=shard.hidden_size,
            intermediate_size=shard.local_intermediate_size, ep_size=shard.ep_size, ep_rank=shard.ep_rank,
        )
        for e in range(shard.expert_offset, shard.expert_offset + shard.num_local_experts):
            for shard_id in SHARD_IDS:
                for kind in ("weight", "scale"):
                    name = f"{layer}.ffn.experts.{e}.{shard_id}.{kind}"
                    part = self.read_expert_tensor(name, shard, shard_id, kind)
                    target = ("w13" if shard_id != "w2" else "w2") + ("_scale" if kind == "scale" else "")
                    copy_expert_tensor(params[target], part, shard=local, global_expert=e, shard_id=shard_id, kind=kind)
        return params

    def read_linear(self, prefix: str, *, dequantize: bool = True) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """An FP8 block-scaled linear ``prefix.weight`` / ``prefix.scale``: float32 if ``dequantize``, else the pair."""
        weight = self.read(prefix + ".weight", dtypes=(torch.float8_e4m3fn,))
        scale = self.read(prefix + ".scale", dtypes=(torch.float8_e8m0fnu, torch.float32))
        if not dequantize:
            return weight, scale
        try:
            return dequantize_fp8_block(weight, scale)
        except ValueError as exc:
            raise CheckpointError(f"{self.checkpoint.directory / self.checkpoint.shard_of(prefix + '.scale')}: "
                                  f"{prefix}: {exc}") from exc

    def read_drafter(self, shard: ExpertShard, *, dequantize: bool = True) -> DrafterWeights:
        """Read the drafter stages ``mtp.*`` for one rank.

        Routed experts go to the runner layout (``experts[stage]``); FP8 linears
        (``X.weight`` with ``X.scale``) are dequantised to float32 when
        ``dequantize``; everything else is returned as stored, under its
        checkpoint name. Only the shards holding ``mtp.*`` tensors are opened.
        """
        cfg = self.checkpoint.dspark_config()
        names = [n for n in self.checkpoint.weight_map if n.startswith("mtp.")]
        hidden = int(self.checkpoint.config["hidden_size"])
        tensors: dict[str, torch.Tensor] = {}
        experts: dict[str, dict[str, torch.Tensor]] = {}
        for stage in range(cfg.num_draft_layers):
            prefix = f"mtp.{stage}"
            experts[prefix] = self.read_experts(prefix, shard)
        for name in names:
            if ".ffn.experts." in name:
                continue
            if name.endswith(".scale") and name[: -len(".scale")] + ".weight" in self.checkpoint.weight_map:
                continue
            base = name[: -len(".weight")] if name.endswith(".weight") else None
            if base is not None and base + ".scale" in self.checkpoint.weight_map:
                tensors[name] = self.read_linear(base, dequantize=dequantize) if dequantize else self.read(name)
                if not dequantize:
                    tensors[base + ".scale"] = self.read(base + ".scale")
            else:
                tensors[name] = self.read(name)
        self._check_drafter_shapes(cfg, tensors, hidden)
        return DrafterWeights(cfg, tensors, experts)

    def _check_drafter_shapes(self, cfg: DSparkConfig, tensors: Mapping[str, torch.Tensor], hidden: int) -> None:
        last = f"mtp.{cfg.num_draft_layers - 1}"
        expected = {
            "mtp.0.main_proj.weight": (hidden, hidden * len(cfg.target_layer_ids)),
            f"{last}.markov_head.markov_w1.weight": (cfg.vocab_size, cfg.markov_rank),
            f"{last}.markov_head.markov_w2.weight": (cfg.vocab_size, cfg.markov_rank),
            f"{last}.confidence_head.proj.weight": (1, hidden + cfg.markov_rank),
        }
        for name, shape in expected.items():
            if name not in tensors:
                raise CheckpointError(f"{self.checkpoint.directory / INDEX_FILE}: drafter tensor {name!r} is missing")
            if tuple(tensors[name].shape) != shape:
                raise CheckpointError(
                    f"{self.checkpoint.directory / self.checkpoint.shard_of(name)}: tensor {name!r} has shape "
                    f"{tuple(tensors[name].shape)}, expected {shape} from the dspark_* config"
                )


_ST_DTYPES = {
    "I8": torch.int8, "U8": torch.uint8, "F8_E8M0": torch.float8_e8m0fnu, "F8_E4M3": torch.float8_e4m3fn,
    "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I32": torch.int32,
}


def _safetensors_dtype(tag: str) -> torch.dtype | str:
    return _ST_DTYPES.get(tag, tag)
