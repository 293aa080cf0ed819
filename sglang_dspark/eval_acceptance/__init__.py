"""Acceptance evaluation of a DSpark drafter (``python -m sglang_dspark.eval_acceptance``).

Mean accepted length (tokens committed per verify step, bonus included) and
per-position acceptance on a JSONL prompt file, measured offline (target
and reference drafter in-process) or through a running DSPARK server.
"""

from sglang_dspark.eval_acceptance.errors import EvalError
from sglang_dspark.eval_acceptance.prompts import (
    EvalPrompt,
    PromptFileError,
    encode_prompt,
    load_eval_prompts,
)
from sglang_dspark.eval_acceptance.summary import AcceptanceSummary, histogram_from_counts

__all__ = [
    "AcceptanceSummary",
    "EvalError",
    "EvalPrompt",
    "PromptFileError",
    "encode_prompt",
    "histogram_from_counts",
    "load_eval_prompts",
]
