"""The learning curve of a drafter training run: held-out greedy acceptance vs answer tokens trained.

    python -m bench.learning_curve --log RUN/drafter/training_log.json [--out out/bench/learning-curve]

Reads the trainer's log (validation entries every ``checkpoint_every`` steps:
mean committed tokens per block and per-position acceptance of greedy drafts
on held-out sequences; training cross-entropy every ``log_every`` steps) and
plots both against answer tokens trained (steps x sequences per step x mean
answer tokens per distilled sequence). Writes ``learning_curve.png`` and
``learning_curve.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.plots import _pyplot, _save


def learning_curve(log: dict, batch_size: int) -> dict:
    """Points of the curve from a ``training_log.json`` payload."""
    summary = log["summary"]
    sequences = summary["train_sequences"] + summary["heldout_sequences"]
    per_step = batch_size * summary["answer_tokens"] / max(sequences, 1)
    val = [e for e in log["log"] if "val_mean_committed" in e]
    train = [e for e in log["log"] if "ce" in e]
    return {
        "answer_tokens_per_step": round(per_step, 1),
        "validation": [{"step": e["step"], "answer_tokens": round(e["step"] * per_step),
                        "mean_committed": e["val_mean_committed"],
                        "accept_per_position": e["val_accept_per_position"]} for e in val],
        "train": [{"step": e["step"], "answer_tokens": round(e["step"] * per_step), "ce": e["ce"],
                   "tau": e["tau"]} for e in train],
        "final_heldout_mean_committed": summary.get("heldout_mean_committed"),
    }


def plot_learning_curve(curve: dict, path: Path, title: str) -> None:
    """Two panels: held-out committed tokens per block (and position-1 acceptance); training CE."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    val = curve["validation"]
    if val:
        x = [p["answer_tokens"] / 1e3 for p in val]
        ax1.plot(x, [p["mean_committed"] for p in val], marker="o", label="committed tokens / block")
        ax1b = ax1.twinx()
        ax1b.plot(x, [p["accept_per_position"][0] for p in val], color="tab:orange", marker="s",
                  label="position-1 acceptance")
        ax1b.set_ylim(0, 1)
        ax1b.set_ylabel("position-1 acceptance")
        ax1b.legend(loc="lower right", fontsize=8)
    ax1.set_xlabel("answer tokens trained (thousands)")
    ax1.set_ylabel("held-out committed tokens per block (greedy)")
    ax1.legend(loc="upper left", fontsize=8)
    train = curve["train"]
    if train:
        ax2.plot([p["answer_tokens"] / 1e3 for p in train], [p["ce"] for p in train])
    ax2.set_xlabel("answer tokens trained (thousands)")
    ax2.set_ylabel("training cross-entropy (nats)")
    fig.suptitle(title)
    _save(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True, help="training_log.json of a finished run")
    parser.add_argument("--out", default="out/bench/learning-curve")
    args = parser.parse_args(argv)
    log_path = Path(args.log)
    log = json.loads(log_path.read_text())
    recipe = json.loads((log_path.parent / "recipe.json").read_text())
    curve = learning_curve(log, recipe["train"]["batch_size"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning_curve.json").write_text(json.dumps(curve, indent=2) + "\n")
    plot_learning_curve(curve, out / "learning_curve.png", f"{recipe['name']}: held-out acceptance vs data")
    for p in curve["validation"]:
        print(f"step {p['step']:5d}  {p['answer_tokens']:8d} answer tokens  "
              f"committed/block {p['mean_committed']:.3f}  pos-1 {p['accept_per_position'][0]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
