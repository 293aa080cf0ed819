"""sglang-dspark: DSpark speculative decoding for SGLang.

The algorithm lives in :mod:`sglang_dspark.algorithm` (pure, device-agnostic
torch); SGLang glue lives in :mod:`sglang_dspark.sglang` only.
"""

__version__ = "0.1.0"
