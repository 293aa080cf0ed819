"""The servers a side-by-side benchmark compares: how to start each, and whether it can run here.

``dspark`` (this project's DSPARK) is always measured; the others are
baselines chosen on the command line. A baseline that cannot run on the
device is returned with the reason instead of server flags, so the report
lists it as unavailable rather than dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sglang_dspark.server_process import cpu_serve_args, dspark_args

SUBJECT = "dspark"
BASELINES = ("none", "ngram", "eagle", "builtin-dspark")
DEVICES = ("cpu", "cuda")
DEFAULT_CPU_MAX_TOTAL_TOKENS = 8192


@dataclass(frozen=True)
class ServerPlan:
    """One server of the comparison: its flags and environment, or why it cannot run."""

    name: str
    label: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    unavailable: str | None = None
    speculative: bool = False

    def __post_init__(self) -> None:
        if self.name not in (SUBJECT, *BASELINES):
            raise ValueError(f"unknown server {self.name!r}; baselines are {', '.join(BASELINES)}")
        if (self.unavailable is None) == (not self.args):
            raise ValueError(f"{self.name}: give server args or a reason it is unavailable, not both")

    @property
    def runnable(self) -> bool:
        return self.unavailable is None


@dataclass(frozen=True)
class PlanInputs:
    """What the plans depend on: models, device and KV-pool bound."""

    model: Path
    device: str = "cpu"
    drafter: Path | None = None
    eagle_drafter: Path | None = None
    max_total_tokens: int | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} not in {DEVICES}")


def base_args(inputs: PlanInputs) -> list[str]:
    """Flags every server of the comparison shares (same model, same KV-pool bound)."""
    if inputs.device == "cpu":
        args = cpu_serve_args(inputs.model, max_total_tokens=inputs.max_total_tokens or DEFAULT_CPU_MAX_TOTAL_TOKENS)
    else:
        args = ["--model-path", str(inputs.model), "--device", inputs.device]
        if inputs.max_total_tokens:
            args += ["--max-total-tokens", str(inputs.max_total_tokens)]
    # --enable-metrics on every server keeps the comparison fair (same exporter cost).
    return [*args, "--enable-metrics", *inputs.extra_args]


def plan(name: str, inputs: PlanInputs) -> ServerPlan:
    """The server plan of ``name`` (``dspark`` or one of :data:`BASELINES`)."""
    base = base_args(inputs)
    if name == "none":
        return ServerPlan(name, "no speculation", tuple(base))
    if name == SUBJECT:
        if inputs.drafter is None:
            return ServerPlan(
                name, "DSPARK (sglang-dspark)", unavailable="no --drafter given (DeepSpec drafter directory)"
            )
        return ServerPlan(
            name, "DSPARK (sglang-dspark)", tuple([*base, *dspark_args(inputs.drafter)]), speculative=True
        )
    if name == "ngram":
        # SGLang's NGRAM needs no drafter; on CPU it relies on the cpu_standins kernels and
        # this project's TARGET_VERIFY path, so it is attempted and reported if it fails.
        return ServerPlan(name, "NGRAM (SGLang)", tuple([*base, "--speculative-algorithm", "NGRAM"]), speculative=True)
    if name == "eagle":
        if inputs.eagle_drafter is None:
            return ServerPlan(
                name, "EAGLE (SGLang)",
                unavailable="no EAGLE drafter for this model (pass --eagle-drafter DIR); none ships for it",
            )
        if inputs.device == "cpu":
            return ServerPlan(
                name, "EAGLE (SGLang)",
                unavailable="SGLang's EAGLE worker needs tree-attention kernels that torch_native "
                "attention on CPU does not have",
            )
        return ServerPlan(
            name, "EAGLE (SGLang)",
            tuple([*base, "--speculative-algorithm", "EAGLE",
                   "--speculative-draft-model-path", str(inputs.eagle_drafter)]),
            speculative=True,
        )
    if name == "builtin-dspark":
        if inputs.device == "cpu":
            return ServerPlan(
                name, "DSPARK (SGLang built-in)",
                unavailable="SGLang's built-in DSPARK is GPU-only: it refuses --device cpu (cuda/npu/xpu only)",
            )
        if inputs.drafter is None:
            return ServerPlan(name, "DSPARK (SGLang built-in)", unavailable="no --drafter given")
        return ServerPlan(
            name, "DSPARK (SGLang built-in)", tuple([*base, *dspark_args(inputs.drafter)]),
            env=(("SGLANG_DSPARK_IMPL", "builtin"),), speculative=True,
        )
    raise ValueError(f"unknown server {name!r}; baselines are {', '.join(BASELINES)}")


def parse_baselines(text: str) -> tuple[str, ...]:
    """``none,ngram`` -> ``("none", "ngram")``; unknown names raise."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return names
