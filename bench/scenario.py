"""Benchmark scenarios: data files in ``bench/scenarios/*.json`` turned into bench_serving workloads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sglang_dspark.bench_serving import Workload, write_sharegpt
from sglang_dspark.train.corpus import load_prompt_file

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Held-out real-text prompts (hand-written chat and code asks), shipped with the repository.
CHAT_SOURCES = (REPO_ROOT / "tests" / "data" / "eval_chat.jsonl", REPO_ROOT / "tests" / "data" / "eval_code.jsonl")
# ShareGPT first turns of the evaluation split, never in a drafter's training corpus.
SHAREGPT_SOURCES = (REPO_ROOT / "sglang_dspark" / "data" / "eval_sharegpt.jsonl",)
DATASETS = ("random-ids", "chat", "sharegpt")


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: what is sent, how much, and at which concurrency levels.

    ``num_prompts`` is the prompt count at every level, raised to
    ``prompts_per_stream * concurrency`` where that is larger so high levels
    keep their streams busy. ``max_total_tokens`` bounds the KV pool of CPU
    servers (ignored on GPUs).
    """

    name: str
    description: str
    dataset: str
    output_len: int
    num_prompts: int
    concurrency: tuple[int, ...]
    input_len: int | None = None
    prompts_per_stream: int = 0
    max_total_tokens: int | None = None
    seed: int = 1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"scenario {self.name}: dataset {self.dataset!r} not in {DATASETS}")
        if self.dataset == "random-ids" and not (self.input_len and self.input_len > 0):
            raise ValueError(f"scenario {self.name}: random-ids needs a positive input_len")
        if self.output_len < 1 or self.num_prompts < 1 or self.prompts_per_stream < 0:
            raise ValueError(f"scenario {self.name}: output_len and num_prompts must be >= 1")
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError(f"scenario {self.name}: concurrency levels must be >= 1")
        if list(self.concurrency) != sorted(set(self.concurrency)):
            raise ValueError(f"scenario {self.name}: concurrency levels must be increasing")
        if self.max_total_tokens is not None and self.max_total_tokens < 256:
            raise ValueError(f"scenario {self.name}: max_total_tokens too small")

    def prompts_at(self, concurrency: int) -> int:
        """How many prompts the level ``concurrency`` sends."""
        return max(self.num_prompts, self.prompts_per_stream * concurrency)

    def workload(self, concurrency: int, work_dir: Path) -> Workload:
        """The bench_serving workload of one concurrency level (writes the chat file if needed)."""
        n = self.prompts_at(concurrency)
        if self.dataset == "random-ids":
            return Workload(
                num_prompts=n,
                output_len=self.output_len,
                max_concurrency=concurrency,
                random_input_len=self.input_len,
                seed=self.seed,
            )
        prompts = chat_prompts(SHAREGPT_SOURCES if self.dataset == "sharegpt" else CHAT_SOURCES)
        work_dir.mkdir(parents=True, exist_ok=True)
        cycled = (prompts * (n // len(prompts) + 1))[:n]
        path = write_sharegpt(cycled, work_dir / f"{self.name}-{n}.sharegpt.json")
        return Workload(
            num_prompts=n, output_len=self.output_len, max_concurrency=concurrency, dataset_path=path, seed=self.seed
        )

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {
            "name": self.name,
            "description": self.description,
            "dataset": self.dataset,
            "input_len": self.input_len,
            "output_len": self.output_len,
            "num_prompts": self.num_prompts,
            "prompts_per_stream": self.prompts_per_stream,
            "concurrency": list(self.concurrency),
            "max_total_tokens": self.max_total_tokens,
            "seed": self.seed,
        }


def chat_prompts(sources: tuple[Path, ...] = CHAT_SOURCES) -> list[str]:
    """The real-text prompts of ``sources`` (default: the chat dataset), in file order."""
    return [row["prompt"] for source in sources for row in load_prompt_file(source)]


def scenario_names() -> list[str]:
    """Names of the shipped scenario files."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.json"))


def load_scenario(name_or_path: str) -> Scenario:
    """A scenario by name (``bench/scenarios/NAME.json``) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix == ".json":
        path = SCENARIO_DIR / f"{name_or_path}.json"
    if not path.exists():
        raise FileNotFoundError(f"no scenario {name_or_path!r}; shipped: {', '.join(scenario_names())}")
    data = json.loads(path.read_text())
    data["concurrency"] = tuple(data["concurrency"])
    return Scenario(**data)
