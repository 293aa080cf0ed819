"""``sglang-dspark selftest``: one command that proves a GPU node before a deployment.

On the device under test, each against a pure-torch reference on
DeepSeek-V4-Flash's expert shapes: MXFP4 dequantisation, the fused Triton
MXFP4 MoE kernel, FlashInfer's MXFP4 MoE where available, a
dequantise-then-GEMM baseline (all timed: weight bandwidth as a share of the
GPU's HBM peak); the DSPARK draft-verify loop on a tiny target (greedy: equal
to plain greedy decoding, and to the CPU); the drafter trainer's step time.
On CPU the same command runs a smaller subset. How to run it and what each
line means: docs/selftest.md.

Modules: :mod:`.config` (shape, settings, plan), :mod:`.device_facts` (GPU
name and HBM peak), :mod:`.timing`, :mod:`.moe_cases` (weights and batches),
:mod:`.dequant_check`, :mod:`.dense_baseline`, :mod:`.moe_checks`,
:mod:`.precision`, :mod:`.tiny_models`, :mod:`.draft_verify_check`, :mod:`.trainer_check`,
:mod:`.results`, :mod:`.runner`, :mod:`.report`, :mod:`.command` (the CLI).
"""

from sglang_dspark.selftest.config import SelftestConfig, SelftestPlan
from sglang_dspark.selftest.results import CheckResult, SelftestReport, Status

__all__ = ["CheckResult", "SelftestConfig", "SelftestPlan", "SelftestReport", "Status"]
