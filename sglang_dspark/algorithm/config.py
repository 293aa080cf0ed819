"""DSpark drafter configuration.

One frozen :class:`DSparkConfig` describes a DSpark drafter: the block
semantics, the Markov and confidence heads and the shape of the drafter
backbone. It is built from either checkpoint flavour:

* a DeepSpec drafter directory (``config.json`` written by DeepSpec's
  ``save_pretrained``: the target's Qwen3/Llama config with ``block_size``,
  ``mask_token_id``, ``target_layer_ids``, ``markov_rank``, ...), via
  :meth:`DSparkConfig.from_deepspec`;
* a DeepSeek-V4-Flash-DSpark checkpoint (``dspark_block_size``,
  ``dspark_noise_token_id``, ``dspark_target_layer_ids``,
  ``dspark_markov_rank``), via :meth:`DSparkConfig.from_deepseek_v4`.

Block semantics (DeepSpec ``eval/dspark/evaluator.py``: ``max_proposal_tokens
= block_size``): the drafter input is the anchor (the last committed token, not
yet seen by the target) at position ``p`` followed by ``block_size - 1`` mask
tokens at ``p+1 .. p+block_size-1``. Output position ``i`` predicts the token
at ``p+i+1``, so the anchor's own output is used and a block of size ``gamma``
yields ``gamma`` draft tokens (:attr:`DSparkConfig.num_draft_tokens`); the
target then verifies ``[anchor, x_1 .. x_j]``, i.e. up to ``gamma + 1``
positions including the bonus position (:attr:`DSparkConfig.max_verify_tokens`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "DSparkConfig",
    "DSparkConfigError",
    "MARKOV_HEAD_TYPES",
    "ROPE_TYPES",
    "RopeScaling",
    "SUPPORTED_BACKBONES",
    "load_config_dict",
]

#: Markov head variants of DeepSpec ``modeling/dspark/markov_head.py::build_markov_head``.
MARKOV_HEAD_TYPES: tuple[str, ...] = ("vanilla", "gated", "rnn")

#: RoPE variants the pure-torch reference drafter implements (HF semantics).
ROPE_TYPES: tuple[str, ...] = ("default", "linear", "llama3", "yarn")

#: Drafter backbone families. ``qwen3`` and ``llama`` are decoder layers the
#: reference drafter builds; ``deepseek_v4`` is the V4 MTP-style drafter,
#: served by a separate implementation.
SUPPORTED_BACKBONES: tuple[str, ...] = ("qwen3", "llama", "deepseek_v4")

_DEEPSPEC_MODEL_TYPES: dict[str, str] = {"qwen3": "qwen3", "llama": "llama"}


class DSparkConfigError(ValueError):
    """A DSpark config is invalid, or does not fit the target model.

    The message names the offending field and says how to fix it.
    """


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, with Hugging Face ``rope_scaling`` semantics.

    Only the fields of the chosen ``rope_type`` are read: ``linear`` uses
    ``factor``; ``llama3`` uses ``factor``, ``low_freq_factor``,
    ``high_freq_factor`` and ``original_max_position_embeddings``; ``yarn``
    uses ``factor``, ``original_max_position_embeddings``, ``beta_fast``,
    ``beta_slow``, ``mscale``, ``mscale_all_dim``, ``attention_factor`` and
    ``truncate``.
    """

    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise DSparkConfigError(
                f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                f"use one of {list(ROPE_TYPES)}."
            )
        if self.rope_type != "default" and not self.factor > 0:
            raise DSparkConfigError(
                f"rope_scaling.factor must be > 0 for rope_type {self.rope_type!r}, "
                f"got {self.factor}."
            )
        if self.rope_type == "llama3":
            missing = [
                name
                for name in (
                    "low_freq_factor",
                    "high_freq_factor",
                    "original_max_position_embeddings",
                )
                if getattr(self, name) is None
            ]
            if missing:
                raise DSparkConfigError(
                    f"rope_scaling of type 'llama3' needs {missing}; copy them from "
                    "the target model's rope_scaling."
                )

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any] | None) -> "RopeScaling":
        """Parse an HF ``rope_scaling``/``rope_parameters`` dict (``type`` or ``rope_type``)."""
        if not raw:
            return cls()
        rope_type = raw.get("rope_type", raw.get("type", "default"))
        kwargs: dict[str, Any] = {"rope_type": str(rope_type)}
        for name in (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "attention_factor",
        ):
            if raw.get(name) is not None:
                kwargs[name] = float(raw[name])
        if raw.get("original_max_position_embeddings") is not None:
            kwargs["original_max_position_embeddings"] = int(
                raw["original_max_position_embeddings"]
            )
        if raw.get("truncate") is not None:
            kwargs["truncate"] = bool(raw["truncate"])
        return cls(**kwargs)

    def to_hf(self, rope_theta: float) -> dict[str, Any]:
        """Render as a transformers-5 ``rope_parameters`` dict."""
        out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": rope_theta}
        if self.rope_type == "default":
            return out
        out["factor"] = self.factor
        if self.original_max_position_embeddings is not None:
            out["original_max_position_embeddings"] = self.original_max_position_embeddings
        if self.rope_type == "llama3":
            out["low_freq_factor"] = self.low_freq_factor
            out["high_freq_factor"] = self.high_freq_factor
        if self.rope_type == "yarn":
            out["beta_fast"] = self.beta_fast
            out["beta_slow"] = self.beta_slow
            out["truncate"] = self.truncate
            for name in ("mscale", "mscale_all_dim", "attention_factor"):
                if getattr(self, name) is not None:
                    out[name] = getattr(self, name)
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DSparkConfig:
    """A DSpark drafter: block semantics, heads and backbone shape.

    Block and head fields (DeepSpec names):

    * ``block_size`` (gamma): drafter input is the anchor plus ``gamma - 1``
      mask tokens; every position's output is a draft token, so a block
      yields ``gamma`` draft tokens (:attr:`num_draft_tokens`).
    * ``mask_token_id``: filler token id of the non-anchor block positions
      (V4: ``dspark_noise_token_id``).
    * ``target_layer_ids``: target decoder layers whose *outputs* are
      concatenated (in this order) into the drafter context; ``-1`` is the
      embedding output (DeepSpec ``extract_context_feature``). Strictly
      increasing.
    * ``markov_rank`` / ``markov_head_type``: low-rank bigram head
      (``vanilla``), its gated variant (``gated``) or the recurrent one
      (``rnn``).
    * ``enable_confidence_head`` / ``confidence_head_with_markov``: the
      confidence head reads ``[h_k ; W1[x_{k-1}]]`` when the latter is true,
      ``h_k`` alone otherwise.

    Backbone fields describe the drafter's decoder layers (of the target's
    family): ``backbone`` is ``qwen3`` (q/k RMSNorm), ``llama`` or
    ``deepseek_v4``.
    """

    block_size: int
    mask_token_id: int
    target_layer_ids: tuple[int, ...]
    markov_rank: int
    hidden_size: int
    vocab_size: int
    num_draft_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = True
    confidence_head_with_markov: bool = True
    backbone: str = "qwen3"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    qk_norm: bool = True
    hidden_act: str = "silu"
    num_target_layers: int | None = None
    #: rows of the reduced draft vocabulary (EAGLE-3 ``draft_vocab_size``;
    #: :mod:`sglang_dspark.algorithm.draft_vocab`), ``None`` = the whole vocabulary.
    draft_vocab_size: int | None = None
    #: block rows start from EAGLE's input form, ``fc([norm(embedding) ; norm(c)])``
    #: with ``c`` the projected context row just before the anchor (the feature that
    #: predicted the anchor); DeepSpec's layout plus ``anchor_input.*`` (one
    #: ``[H, 2H]`` matrix, two norms). ``False`` = DeepSpec's drafter.
    anchor_context_input: bool = False

    def __post_init__(self) -> None:
        # Normalise sequences so equality/hash work and callers may pass lists.
        object.__setattr__(self, "target_layer_ids", tuple(self.target_layer_ids))
        if not self.enable_confidence_head:
            # DeepSpec only reads confidence_head_with_markov when the head exists.
            object.__setattr__(self, "confidence_head_with_markov", False)
        self._validate()

    # ------------------------------------------------------------------ #
    # Derived quantities
    # ------------------------------------------------------------------ #
    @property
    def num_draft_tokens(self) -> int:
        """Draft tokens one block yields: ``block_size`` (the anchor's output is used)."""
        return self.block_size

    @property
    def max_verify_tokens(self) -> int:
        """Most positions the target verifies per step: anchor + all drafts."""
        return self.block_size + 1

    @property
    def num_target_features(self) -> int:
        """How many target layers feed the drafter context."""
        return len(self.target_layer_ids)

    @property
    def context_feature_size(self) -> int:
        """Width of the concatenated target hidden states fed to ``fc``."""
        return len(self.target_layer_ids) * self.hidden_size

    @property
    def output_vocab_size(self) -> int:
        """Rows the drafter scores per position: ``draft_vocab_size`` or the whole vocabulary."""
        return self.vocab_size if self.draft_vocab_size is None else self.draft_vocab_size

    @property
    def confidence_input_size(self) -> int:
        """Input width of the confidence head's ``proj``."""
        extra = self.markov_rank if self.confidence_head_with_markov else 0
        return self.hidden_size + extra

    # ------------------------------------------------------------------ #
    # Validation
    # ------------------------------------------------------------------ #
    def _validate(self) -> None:
        int_fields = (
            "block_size",
            "mask_token_id",
            "markov_rank",
            "hidden_size",
            "vocab_size",
            "num_draft_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "max_position_embeddings",
        )
        for name in int_fields:
            if not _is_int(getattr(self, name)):
                raise DSparkConfigError(
                    f"{name} must be an int, got {getattr(self, name)!r}."
                )
        for name in (
            "hidden_size",
            "vocab_size",
            "num_draft_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
        ):
            if getattr(self, name) < 1:
                raise DSparkConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.block_size < 2:
            raise DSparkConfigError(
                f"block_size must be >= 2 (anchor + at least one mask position), got "
                f"{self.block_size}; use the block size the drafter was trained with "
                "(DeepSpec default 7, DeepSeek-V4-Flash-DSpark 5)."
            )
        if self.markov_rank < 1:
            raise DSparkConfigError(
                f"markov_rank must be >= 1, got {self.markov_rank}: DSpark drafts "
                "semi-autoregressively through the Markov head (a rank-0 DeepSpec "
                "drafter is a DFlash-style drafter and is not supported here)."
            )
        if self.markov_head_type not in MARKOV_HEAD_TYPES:
            raise DSparkConfigError(
                f"markov_head_type={self.markov_head_type!r} is unknown; use one of "
                f"{list(MARKOV_HEAD_TYPES)} (DeepSpec markov_head.py)."
            )
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise DSparkConfigError(
                f"mask_token_id={self.mask_token_id} is outside the vocabulary "
                f"[0, {self.vocab_size}); set it to the drafter's trained mask token "
                "(DeepSpec mask_token_id, V4 dspark_noise_token_id)."
            )
        self._validate_target_layer_ids()
        if self.backbone not in SUPPORTED_BACKBONES:
            raise DSparkConfigError(
                f"backbone={self.backbone!r} is unknown; use one of {list(SUPPORTED_BACKBONES)}."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise DSparkConfigError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}."
            )
        if self.head_dim % 2 != 0:
            raise DSparkConfigError(f"head_dim must be even for RoPE, got {self.head_dim}.")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            raise DSparkConfigError(f"rms_norm_eps must be > 0, got {self.rms_norm_eps}.")
        if not self.rope_theta > 0:
            raise DSparkConfigError(f"rope_theta must be > 0, got {self.rope_theta}.")
        if not isinstance(self.rope_scaling, RopeScaling):
            raise DSparkConfigError(
                "rope_scaling must be a RopeScaling; parse dicts with RopeScaling.from_hf."
            )
        if self.draft_vocab_size is not None and (
            not _is_int(self.draft_vocab_size) or not 1 <= self.draft_vocab_size <= self.vocab_size
        ):
            raise DSparkConfigError(
                f"draft_vocab_size={self.draft_vocab_size!r} must be an int in [1, vocab_size="
                f"{self.vocab_size}]."
            )
        if not isinstance(self.anchor_context_input, bool):
            raise DSparkConfigError(
                f"anchor_context_input must be true or false, got {self.anchor_context_input!r}."
            )
        if self.anchor_context_input and self.backbone == "deepseek_v4":
            raise DSparkConfigError(
                "anchor_context_input is an option of DeepSpec-layout drafters; "
                "DeepSeek-V4's built-in drafter has no anchor input."
            )
        if self.num_target_layers is not None:
            if not _is_int(self.num_target_layers) or self.num_target_layers < 1:
                raise DSparkConfigError(
                    f"num_target_layers must be a positive int, got {self.num_target_layers!r}."
                )
            self._check_layer_ids_fit(self.num_target_layers, source="num_target_layers")

    def _validate_target_layer_ids(self) -> None:
        ids = self.target_layer_ids
        if not ids:
            raise DSparkConfigError(
                "target_layer_ids is empty; list the target layers whose hidden "
                "states the drafter was trained on (e.g. [1, 9, 17, 25, 33])."
            )
        for layer_id in ids:
            if not _is_int(layer_id):
                raise DSparkConfigError(
                    f"target_layer_ids must hold ints, got {layer_id!r} in {list(ids)}."
                )
            if layer_id < -1:
                raise DSparkConfigError(
                    f"target_layer_ids contains negative id {layer_id}; ids are target "
                    "decoder layer indices >= 0 (only -1, the embedding output, is allowed)."
                )
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise DSparkConfigError(
                f"target_layer_ids contains duplicate ids {dupes} in {list(ids)}; each "
                "target layer may feed the drafter once."
            )
        if list(ids) != sorted(ids):
            raise DSparkConfigError(
                f"target_layer_ids must be strictly increasing, got {list(ids)} "
                "(the concatenation order of the fc input is fixed at training time)."
            )

    def _check_layer_ids_fit(self, num_target_layers: int, *, source: str) -> None:
        too_big = [i for i in self.target_layer_ids if i >= num_target_layers]
        if too_big:
            raise DSparkConfigError(
                f"target_layer_ids {list(self.target_layer_ids)} include {too_big}, but "
                f"the target has {num_target_layers} layers ({source}); valid ids are "
                f"-1..{num_target_layers - 1}. The drafter was trained for a different target."
            )

    def validate_target_layer_count(self, num_target_layers: int) -> None:
        """Check ``target_layer_ids`` against a target with ``num_target_layers`` layers."""
        self._check_layer_ids_fit(int(num_target_layers), source="target num_hidden_layers")

    def validate_for_target(
        self,
        num_target_layers: int,
        target_hidden_size: int,
        target_vocab_size: int,
    ) -> None:
        """Check that this drafter fits a target model; raise :class:`DSparkConfigError` if not."""
        self._check_layer_ids_fit(int(num_target_layers), source="target num_hidden_layers")
        if self.num_target_layers is not None and self.num_target_layers != num_target_layers:
            raise DSparkConfigError(
                f"num_target_layers={self.num_target_layers} in the drafter config, but the "
                f"target has {num_target_layers} layers: the drafter was trained for a "
                "different target model; load the matching drafter."
            )
        if self.hidden_size != target_hidden_size:
            raise DSparkConfigError(
                f"hidden_size={self.hidden_size} in the drafter config, but the target's "
                f"hidden_size is {target_hidden_size}; load the drafter trained for this target."
            )
        if self.vocab_size != target_vocab_size:
            raise DSparkConfigError(
                f"vocab_size={self.vocab_size} in the drafter config, but the target's "
                f"vocab_size is {target_vocab_size}; the drafter shares the target's "
                "embedding and LM head, so they must match."
            )

    def with_block_size(self, block_size: int) -> "DSparkConfig":
        """A copy with another block size (validated)."""
        return replace(self, block_size=int(block_size))

    # ------------------------------------------------------------------ #
    # Constructors
    # ------------------------------------------------------------------ #
    @classmethod
    def from_deepspec(cls, config: Mapping[str, Any] | str | Path) -> "DSparkConfig":
        """Build from a DeepSpec drafter ``config.json`` (dict, file or checkpoint dir).

        DeepSpec writes the target's HF config with the DSpark keys added
        (``modeling/dspark/qwen3/config.py::build_draft_config``);
        ``num_hidden_layers`` there is the number of *draft* layers and
        ``num_target_layers`` the target's.
        """
        raw = load_config_dict(config)
        if "text_config" in raw and "block_size" not in raw:
            raise DSparkConfigError(
                "this DeepSpec config nests a text_config (Gemma4 drafter); only "
                "Qwen3/Llama-family DeepSpec drafters are supported."
            )
        model_type = str(raw.get("model_type", "qwen3"))
        backbone = _DEEPSPEC_MODEL_TYPES.get(model_type)
        if backbone is None:
            raise DSparkConfigError(
                f"model_type={model_type!r}: only Qwen3/Llama-family DeepSpec drafters "
                f"are supported (model_type one of {sorted(_DEEPSPEC_MODEL_TYPES)})."
            )
        _require(
            raw,
            (
                "block_size",
                "mask_token_id",
                "target_layer_ids",
                "markov_rank",
                "hidden_size",
                "vocab_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            ),
            what="DeepSpec drafter config",
        )
        markov_rank = _as_int(raw, "markov_rank")
        if markov_rank > 0 and "markov_head_type" not in raw:
            raise DSparkConfigError(
                "markov_head_type is missing from the DeepSpec drafter config; it is "
                "required when markov_rank > 0 (one of 'vanilla', 'gated', 'rnn')."
            )
        layer_types = raw.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise DSparkConfigError(
                f"layer_types={layer_types}: DeepSpec drafters use full attention in every "
                "layer; sliding-window drafter layers are not supported."
            )
        num_heads = _as_int(raw, "num_attention_heads")
        hidden = _as_int(raw, "hidden_size")
        rope_theta, rope_scaling = _parse_rope(raw)
        enable_conf = bool(raw.get("enable_confidence_head", False))
        with_markov = bool(raw.get("confidence_head_with_markov", False)) and enable_conf
        num_target_layers = raw.get("num_target_layers")
        head_dim = raw.get("head_dim")
        return cls(
            block_size=_as_int(raw, "block_size"),
            mask_token_id=_as_int(raw, "mask_token_id"),
            target_layer_ids=_as_int_tuple(raw, "target_layer_ids"),
            markov_rank=markov_rank,
            markov_head_type=str(raw.get("markov_head_type", "vanilla")).lower(),
            enable_confidence_head=enable_conf,
            confidence_head_with_markov=with_markov,
            hidden_size=hidden,
            vocab_size=_as_int(raw, "vocab_size"),
            num_draft_layers=_as_int(raw, "num_hidden_layers"),
            num_attention_heads=num_heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim) if head_dim else hidden // num_heads,
            intermediate_size=_as_int(raw, "intermediate_size"),
            backbone=backbone,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
            attention_bias=bool(raw.get("attention_bias", False)),
            qk_norm=backbone == "qwen3",
            hidden_act=str(raw.get("hidden_act", "silu")),
            num_target_layers=int(num_target_layers) if num_target_layers is not None else None,
            draft_vocab_size=(
                None if raw.get("draft_vocab_size") in (None, raw.get("vocab_size"))
                else _as_int(raw, "draft_vocab_size")
            ),
            anchor_context_input=raw.get("anchor_context_input", False),
        )

    @classmethod
    def from_deepseek_v4(
        cls,
        config: Mapping[str, Any] | str | Path,
        *,
        num_draft_layers: int | None = None,
    ) -> "DSparkConfig":
        """Build from a DeepSeek-V4(-Flash)-DSpark ``config.json`` (dict, file or dir).

        Reads ``dspark_block_size``, ``dspark_noise_token_id``,
        ``dspark_target_layer_ids`` and ``dspark_markov_rank``. The drafter
        is the ``mtp.0 .. mtp.{n-1}`` stages; ``n`` comes from
        ``num_draft_layers``, else the config's ``n_mtp_layers``, else 3
        (the released drafter; ``num_nextn_predict_layers`` is not trusted
        because V4-Flash configs keep the MTP value 1 there). The Markov head
        is the vanilla low-rank bigram and the confidence head reads
        ``[h ; W1[x_{k-1}]]`` (``4096 + 256`` inputs).
        """
        raw = load_config_dict(config)
        dspark_keys = (
            "dspark_block_size",
            "dspark_noise_token_id",
            "dspark_target_layer_ids",
            "dspark_markov_rank",
        )
        missing = [k for k in dspark_keys if k not in raw]
        if missing:
            raise DSparkConfigError(
                f"config lacks {missing}: this is not a DSpark checkpoint config; use "
                "DeepSeek-V4-Flash-DSpark (or pass a DeepSpec drafter to from_deepspec)."
            )
        _require(
            raw,
            ("hidden_size", "vocab_size", "num_hidden_layers", "num_attention_heads"),
            what="DeepSeek-V4 config",
        )
        if num_draft_layers is None:
            num_draft_layers = int(raw.get("n_mtp_layers") or 3)
        num_heads = _as_int(raw, "num_attention_heads")
        hidden = _as_int(raw, "hidden_size")
        rope_theta, rope_scaling = _parse_rope(raw)
        head_dim = raw.get("head_dim")
        intermediate = raw.get("moe_intermediate_size", raw.get("intermediate_size"))
        if intermediate is None:
            raise DSparkConfigError(
                "DeepSeek-V4 config lacks moe_intermediate_size (and intermediate_size)."
            )
        return cls(
            block_size=_as_int(raw, "dspark_block_size"),
            mask_token_id=_as_int(raw, "dspark_noise_token_id"),
            target_layer_ids=_as_int_tuple(raw, "dspark_target_layer_ids"),
            markov_rank=_as_int(raw, "dspark_markov_rank"),
            markov_head_type="vanilla",
            enable_confidence_head=True,
            confidence_head_with_markov=True,
            hidden_size=hidden,
            vocab_size=_as_int(raw, "vocab_size"),
            num_draft_layers=int(num_draft_layers),
            num_attention_heads=num_heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or 1),
            head_dim=int(head_dim) if head_dim else hidden // num_heads,
            intermediate_size=int(intermediate),
            backbone="deepseek_v4",
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 1048576)),
            attention_bias=False,
            qk_norm=False,
            hidden_act="silu",
            num_target_layers=_as_int(raw, "num_hidden_layers"),
        )


# ---------------------------------------------------------------------- #
# Helpers
# ---------------------------------------------------------------------- #
def load_config_dict(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """Return a config dict from a mapping, a ``config.json`` path or a checkpoint dir."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise DSparkConfigError(f"no config.json at {path}; point to the checkpoint directory.")
    try:
        with path.open("r", encoding="utf-8") as handle:
            raw = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DSparkConfigError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DSparkConfigError(f"{path} must hold a JSON object, got {type(raw).__name__}.")
    return raw


def _require(raw: Mapping[str, Any], keys: tuple[str, ...], *, what: str) -> None:
    missing = [k for k in keys if raw.get(k) is None]
    if missing:
        raise DSparkConfigError(f"{what} is missing required key(s) {missing}.")


def _as_int(raw: Mapping[str, Any], key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise DSparkConfigError(f"{key} must be an integer, got {value!r}.")
    return int(value)


def _as_int_tuple(raw: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = raw[key]
    if not isinstance(value, (list, tuple)):
        raise DSparkConfigError(f"{key} must be a list of ints, got {value!r}.")
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise DSparkConfigError(f"{key} must be a list of ints, got {value!r}.")
        out.append(int(item))
    return tuple(out)


def _parse_rope(raw: Mapping[str, Any]) -> tuple[float, RopeScaling]:
    """Read RoPE settings in either transformers-4 (``rope_theta`` + ``rope_scaling``)
    or transformers-5 (``rope_parameters``) form."""
    params = raw.get("rope_parameters")
    if isinstance(params, Mapping) and params:
        theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
        return float(theta), RopeScaling.from_hf(params)
    theta = raw.get("rope_theta", 10000.0)
    return float(theta), RopeScaling.from_hf(raw.get("rope_scaling"))
