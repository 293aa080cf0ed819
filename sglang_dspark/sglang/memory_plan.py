"""A per-GPU memory estimate for ``preflight``: weights, the KV pool's budget, tokens it holds.

SGLang sizes the KV pool as ``GPU memory x --mem-fraction-static - weights``
(minus activations it measures at start-up, which this estimate ignores). The
weights per GPU are the checkpoint's bytes split over ``--tp-size`` ranks
(attention over TP, experts over EP = a share of TP here; norms and router
gates are replicated and small). KV bytes per token follow the attention
layout the config declares: MHA/GQA (K and V per KV head), MLA (one latent of
``kv_lora_rank + qk_rope_head_dim``). DeepSeek-V4's pool (compressed,
sliding-window and indexer caches, ``--attention-backend dsv4``) is not
modelled: the estimate says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
KV_DTYPE_BYTES = {"auto": 2, "bfloat16": 2, "float16": 2, "fp8_e4m3": 1, "fp8_e5m2": 1, "float32": 4}


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated per-GPU bytes; ``kv_bytes_per_token`` is ``None`` where the layout is not modelled."""

    gpu_bytes: int
    mem_fraction_static: float
    weight_bytes_per_gpu: int
    kv_bytes_per_token: int | None
    unmodelled: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.mem_fraction_static <= 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1], got {self.mem_fraction_static}")

    @property
    def pool_bytes(self) -> int:
        return int(self.gpu_bytes * self.mem_fraction_static) - self.weight_bytes_per_gpu

    @property
    def tokens(self) -> int | None:
        if self.kv_bytes_per_token is None or self.pool_bytes <= 0:
            return None
        return self.pool_bytes // self.kv_bytes_per_token

    def line(self) -> str:
        """The plan's memory line."""
        head = (f"memory per GPU (estimate): weights {self.weight_bytes_per_gpu / GIB:.1f} GiB, "
                f"KV pool {max(self.pool_bytes, 0) / GIB:.1f} GiB of {self.gpu_bytes / GIB:.0f} GiB x "
                f"--mem-fraction-static {self.mem_fraction_static:g}")
        if self.kv_bytes_per_token is None:
            return f"{head}; KV bytes per token not estimated ({self.unmodelled})"
        return f"{head}; {self.kv_bytes_per_token} KV bytes per token per GPU, about {self.tokens or 0:,} tokens"

    def error(self) -> str | None:
        """Why the plan cannot serve, when the weights alone do not fit."""
        if self.pool_bytes > 0:
            return None
        return (f"the weights alone need about {self.weight_bytes_per_gpu / GIB:.1f} GiB per GPU, more than "
                f"--mem-fraction-static {self.mem_fraction_static:g} of {self.gpu_bytes / GIB:.0f} GiB leaves: "
                "raise --tp-size or --mem-fraction-static, or use GPUs with more memory")


def kv_bytes_per_token(text_config: dict, *, tp_size: int, kv_cache_dtype: str = "auto") -> tuple[int | None, str | None]:
    """KV-cache bytes one token takes on one GPU, or ``(None, why)`` for a layout this does not model."""
    per = KV_DTYPE_BYTES.get(str(kv_cache_dtype))
    if per is None:
        return None, f"--kv-cache-dtype {kv_cache_dtype}"
    model_type = str(text_config.get("model_type", ""))
    if model_type == "deepseek_v4":
        return None, "DeepSeek-V4's compressed/sliding-window/indexer caches are not modelled"
    layers = int(text_config.get("num_hidden_layers", 0))
    if text_config.get("kv_lora_rank"):
        latent = int(text_config["kv_lora_rank"]) + int(text_config.get("qk_rope_head_dim", 0))
        return layers * latent * per, None
    heads = text_config.get("num_attention_heads")
    if not layers or not heads:
        return None, "config lacks num_hidden_layers / num_attention_heads"
    kv_heads = int(text_config.get("num_key_value_heads") or heads)
    head_dim = int(text_config.get("head_dim") or int(text_config["hidden_size"]) // int(heads))
    kv_heads_per_gpu = max(1, kv_heads // max(tp_size, 1))  # KV heads are replicated when tp > kv heads
    return 2 * layers * kv_heads_per_gpu * head_dim * per, None


def plan_memory(text_config: dict, *, checkpoint_bytes: int, gpu_gib: int, tp_size: int,
                mem_fraction_static: float, kv_cache_dtype: str = "auto") -> MemoryPlan:
    """The estimate for ``checkpoint_bytes`` of weights on GPUs of ``gpu_gib`` GiB."""
    kv, why = kv_bytes_per_token(text_config, tp_size=tp_size, kv_cache_dtype=kv_cache_dtype)
    return MemoryPlan(gpu_bytes=gpu_gib * GIB, mem_fraction_static=mem_fraction_static,
                      weight_bytes_per_gpu=checkpoint_bytes // max(tp_size, 1), kv_bytes_per_token=kv,
                      unmodelled=why)
