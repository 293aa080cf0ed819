"""Drafter training: a DSpark drafter for any Llama/Qwen3 target, on a CPU if need be.

Pipeline (``python -m sglang_dspark.train``; one module per job):

* :mod:`~sglang_dspark.train.recipe`: the JSON recipe (drafter shape, data, schedule);
* :mod:`~sglang_dspark.train.corpus`: offline prompt corpus from text shipped with Python;
* :mod:`~sglang_dspark.train.target`: target loading and hidden-state capture;
* :mod:`~sglang_dspark.train.distill`: self-distillation into resumable shards;
* :mod:`~sglang_dspark.train.blocks`: DeepSpec anchor sampling and the all-blocks forward;
* :mod:`~sglang_dspark.train.loss`: the DSpark loss (0.1 CE + 0.9 L1 + 1.0 confidence BCE);
* :mod:`~sglang_dspark.train.trainer`: optimisation, checkpoints, STS, export;
* :mod:`~sglang_dspark.train.evaluate`: held-out greedy drafts and offline
  speculative decoding (:func:`evaluate_acceptance`);
* :mod:`~sglang_dspark.train.export`: drafter config and DeepSpec-format writer;
* :mod:`~sglang_dspark.train.tiny_target`: a tiny random Llama target for tests.
"""

from sglang_dspark.train.evaluate import AcceptanceReport, evaluate_acceptance
from sglang_dspark.train.recipe import Recipe, load_recipe
from sglang_dspark.train.trainer import TrainResult, run_training

__all__ = [
    "AcceptanceReport",
    "Recipe",
    "TrainResult",
    "evaluate_acceptance",
    "load_recipe",
    "run_training",
]
