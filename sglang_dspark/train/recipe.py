"""Training recipes: one JSON file describes the drafter, the data and the schedule.

Sections (every key optional except ``drafter.target_layer_ids``,
``drafter.mask_token_id``; unknown keys are errors so typos do not pass
silently)::

    {
      "name": "smollm2-135m-drafter",
      "drafter":   {block_size, num_draft_layers, target_layer_ids, mask_token_id,
                    markov_rank, markov_head_type, enable_confidence_head,
                    confidence_head_with_markov, intermediate_size, init_std,
                    draft_vocab_size, init_from_target_layer, anchor_context_input},
      "corpus":    {seed, num_chat, num_code, heldout_fraction, max_chars},
      "distill":   {max_prompt_tokens, max_new_tokens, temperature, top_p,
                    batch_size, shard_size, hidden_dtype, compute_dtype,
                    attn_implementation, cache_implementation, max_shards},
      "train":     {num_anchors, micro_batch_size, batch_size, epochs, max_steps,
                    lr, warmup_ratio, weight_decay, max_grad_norm, adam_betas,
                    log_every, checkpoint_every, keep_checkpoints,
                    val_blocks, max_seq_len, compute_dtype},
      "loss":      {ce_alpha, l1_alpha, confidence_alpha, decay_gamma, ce_only_ratio},
      "calibration": {max_blocks, n_bins},
      "export":    {dtype},
      "torch_threads": 1
    }

Defaults follow DeepSpec's Qwen3-4B recipe (``config/dspark/dspark_qwen3_4b.py``)
where they make sense on a CPU: block 7, vanilla Markov head, confidence head
with Markov features, loss 0.1 CE + 0.9 L1 + 1.0 confidence with decay
gamma 4, AdamW lr 6e-4, warm-up 4 %, weight decay 0, grad-norm clip 1.0,
cosine decay to 0.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "CalibrationRecipe",
    "CorpusRecipe",
    "DistillRecipe",
    "DrafterRecipe",
    "ExportRecipe",
    "LossRecipe",
    "Recipe",
    "RecipeError",
    "TrainRecipe",
    "load_recipe",
]


class RecipeError(ValueError):
    """A recipe file is malformed; the message names the key."""


@dataclass(frozen=True)
class DrafterRecipe:
    """Drafter architecture (DeepSpec ``model`` section)."""

    target_layer_ids: tuple[int, ...]
    mask_token_id: int
    block_size: int = 7
    num_draft_layers: int = 1
    markov_rank: int = 64
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = True
    confidence_head_with_markov: bool = True
    #: drafter MLP width; ``None`` = the target's ``intermediate_size`` (DeepSpec copies it).
    intermediate_size: int | None = None
    #: normal init std of every weight (DeepSpec/HF ``initializer_range`` 0.02).
    init_std: float = 0.02
    #: reduced draft vocabulary (EAGLE-3 ``draft_vocab_size``): the most frequent
    #: tokens of the distilled training answers (plus EOS); ``None`` = whole vocabulary.
    draft_vocab_size: int | None = None
    #: start the first drafter layer from this target layer (its input must be the
    #: last tap; :mod:`sglang_dspark.train.target_init`), ``None`` = random init.
    init_from_target_layer: int | None = None
    #: every block row also reads the projected context row before its anchor
    #: (``DSparkConfig.anchor_context_input``; EAGLE's input, beside DeepSpec's layout).
    anchor_context_input: bool = False


@dataclass(frozen=True)
class CorpusRecipe:
    """Prompt corpus (:func:`sglang_dspark.train.corpus.build_corpus`)."""

    seed: int = 0
    num_chat: int = 500
    num_code: int = 500
    heldout_fraction: float = 0.05
    max_chars: int = 1500
    #: ``"stdlib"`` or ``"sharegpt"`` (:data:`sglang_dspark.train.corpus.CHAT_SOURCES`).
    chat_source: str = "stdlib"


@dataclass(frozen=True)
class DistillRecipe:
    """Self-distillation: target generations and teacher-forced features."""

    max_prompt_tokens: int = 384
    max_new_tokens: int = 128
    #: 0 = greedy (the default: the drafter is measured under greedy decoding).
    temperature: float = 0.0
    top_p: float = 1.0
    batch_size: int = 8
    shard_size: int = 32
    hidden_dtype: str = "bfloat16"
    #: dtype the target generates in: ``"auto"`` = bfloat16 where the CPU has bf16
    #: dot-product instructions (:func:`sglang_dspark.cpu_features.has_fast_bf16`)
    #: or on CUDA, else float32.
    compute_dtype: str = "float32"
    #: distil and train on the first ``max_shards`` shards of the corpus only
    #: (``None`` = all); raising it later distils the next shards of the same corpus.
    max_shards: int | None = None
    #: HF attention for generation; ``"eager"`` decoded 1.5x faster than ``"sdpa"``
    #: in bf16 on the 2-core EPYC; on a 2-core Xeon with AMX ``"sdpa"`` with a static
    #: cache was 1.7x faster over 64 new tokens but 0.8x over a 192-token shard
    #: (bench/RESULTS.md).
    attn_implementation: str = "sdpa"
    #: HF KV cache for generation: ``"dynamic"`` grows every layer's cache by a
    #: ``cat`` per step (the whole cache copied each step), ``"static"`` allocates
    #: prompt + ``max_new_tokens`` once.
    cache_implementation: str = "dynamic"


@dataclass(frozen=True)
class TrainRecipe:
    """Optimisation (DeepSpec ``train`` section, scaled to a CPU)."""

    num_anchors: int = 64
    micro_batch_size: int = 1
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 6e-4
    warmup_ratio: float = 0.04
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    log_every: int = 5
    checkpoint_every: int = 25
    keep_checkpoints: int = 2
    #: held-out blocks drafted greedily at each checkpoint (validation acceptance).
    val_blocks: int = 128
    #: sequences longer than this are cut (tokens).
    max_seq_len: int = 1024
    #: autocast dtype of the drafter's forward/backward (fp32 master weights):
    #: ``"auto"`` = bfloat16 on CUDA or a CPU with bf16 instructions, else float32.
    compute_dtype: str = "float32"


@dataclass(frozen=True)
class LossRecipe:
    """DSpark loss weights (DeepSpec ``ce_loss_alpha``, ``l1_loss_alpha``, ...)."""

    ce_alpha: float = 0.1
    l1_alpha: float = 0.9
    confidence_alpha: float = 1.0
    decay_gamma: float | None = 4.0
    #: share of the optimiser steps trained first in the cross-entropy phase
    #: (CE + confidence on greedy acceptance, ``ce_alpha`` 1, no target logits;
    #: :func:`sglang_dspark.train.loss.dspark_loss`), before the weights above.
    ce_only_ratio: float = 0.0


@dataclass(frozen=True)
class CalibrationRecipe:
    """STS calibration on held-out greedy drafts."""

    max_blocks: int = 4096
    n_bins: int = 15


@dataclass(frozen=True)
class ExportRecipe:
    """Written drafter checkpoint."""

    dtype: str = "bfloat16"


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe."""

    name: str
    drafter: DrafterRecipe
    corpus: CorpusRecipe = field(default_factory=CorpusRecipe)
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    calibration: CalibrationRecipe = field(default_factory=CalibrationRecipe)
    export: ExportRecipe = field(default_factory=ExportRecipe)
    torch_threads: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        d = self.drafter
        if d.block_size < 2:
            raise RecipeError(f"drafter.block_size must be >= 2, got {d.block_size}.")
        if d.num_draft_layers < 1 or d.markov_rank < 1:
            raise RecipeError("drafter.num_draft_layers and drafter.markov_rank must be >= 1.")
        if d.draft_vocab_size is not None and d.draft_vocab_size < 1:
            raise RecipeError(f"drafter.draft_vocab_size must be >= 1, got {d.draft_vocab_size}.")
        if list(d.target_layer_ids) != sorted(set(d.target_layer_ids)) or not d.target_layer_ids:
            raise RecipeError(
                f"drafter.target_layer_ids must be non-empty and strictly increasing, got "
                f"{list(d.target_layer_ids)}."
            )
        if self.distill.hidden_dtype not in ("bfloat16", "float16", "float32"):
            raise RecipeError(f"distill.hidden_dtype {self.distill.hidden_dtype!r} is unknown.")
        if self.distill.max_shards is not None and self.distill.max_shards < 1:
            raise RecipeError(f"distill.max_shards must be >= 1, got {self.distill.max_shards}.")
        if self.distill.compute_dtype not in ("auto", "bfloat16", "float32"):
            raise RecipeError(f"distill.compute_dtype {self.distill.compute_dtype!r} is unknown.")
        if self.distill.attn_implementation not in ("eager", "sdpa"):
            raise RecipeError(
                f"distill.attn_implementation {self.distill.attn_implementation!r} is unknown."
            )
        if self.distill.cache_implementation not in ("dynamic", "static"):
            raise RecipeError(
                f"distill.cache_implementation {self.distill.cache_implementation!r} is unknown "
                "(dynamic or static)."
            )
        if not 0.0 <= self.loss.ce_only_ratio <= 1.0:
            raise RecipeError(f"loss.ce_only_ratio must be in [0, 1], got {self.loss.ce_only_ratio}.")
        if self.train.compute_dtype not in ("auto", "bfloat16", "float32"):
            raise RecipeError(f"train.compute_dtype {self.train.compute_dtype!r} is unknown.")
        if self.export.dtype not in ("bfloat16", "float16", "float32"):
            raise RecipeError(f"export.dtype {self.export.dtype!r} is unknown.")
        t = self.train
        if t.batch_size % t.micro_batch_size != 0:
            raise RecipeError(
                f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size "
                f"({t.micro_batch_size})."
            )
        if t.num_anchors < 1 or t.log_every < 1 or t.checkpoint_every < 1:
            raise RecipeError("train.num_anchors, log_every and checkpoint_every must be >= 1.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "recipe") -> "Recipe":
        """Parse a recipe dict; unknown keys raise :class:`RecipeError`."""
        if not isinstance(raw, Mapping):
            raise RecipeError(f"{source}: expected a JSON object.")
        sections = {
            "drafter": DrafterRecipe,
            "corpus": CorpusRecipe,
            "distill": DistillRecipe,
            "train": TrainRecipe,
            "loss": LossRecipe,
            "calibration": CalibrationRecipe,
            "export": ExportRecipe,
        }
        top_keys = set(sections) | {"name", "torch_threads", "description"}
        unknown = sorted(set(raw) - top_keys)
        if unknown:
            raise RecipeError(f"{source}: unknown top-level key(s) {unknown}.")
        if "drafter" not in raw:
            raise RecipeError(f"{source}: the 'drafter' section is required.")
        kwargs: dict[str, Any] = {
            "name": str(raw.get("name", "drafter")),
            "torch_threads": int(raw.get("torch_threads", 1)),
            "description": str(raw.get("description", "")),
        }
        for key, klass in sections.items():
            if key in raw:
                kwargs[key] = _section(klass, raw[key], f"{source}: {key}")
        return cls(**kwargs)


def _section(klass: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{where} must be a JSON object.")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}.")
    values = dict(raw)
    for name in ("target_layer_ids", "adam_betas"):
        if name in values and isinstance(values[name], list):
            values[name] = tuple(values[name])
    try:
        return klass(**values)
    except TypeError as exc:
        raise RecipeError(f"{where}: {exc}") from exc


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe JSON file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    return Recipe.from_dict(raw, source=str(path))
