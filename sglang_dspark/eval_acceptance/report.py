"""Outputs of an evaluation: a text table, the JSON file and the per-position plot."""

from __future__ import annotations

from pathlib import Path

from sglang_dspark.eval_acceptance.summary import AcceptanceSummary
from sglang_dspark.strict_json import write_json_atomic

__all__ = ["format_table", "plot_per_position", "write_json"]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(summary: AcceptanceSummary, *, title: str = "") -> str:
    """Headline figures and one row per draft position."""
    lines = []
    if title:
        lines.append(title)
    lines.append(
        f"mode {summary.mode}: {summary.num_prompts} prompts, {summary.num_tokens} tokens, "
        f"{summary.num_steps} verify steps, {summary.seconds:.1f} s"
    )
    lines.append(f"mean accepted length (committed tokens per verify step, bonus included): "
                 f"{_fmt(summary.mean_accept_length)}")
    if summary.extra.get("source"):
        lines.append(f"source: {summary.extra['source']}")
    if summary.per_position:
        lines.append(f"{'position':>8}  {'P(accepted)':>11}  {'P(acc | prev acc)':>17}")
        for j, (p, c) in enumerate(
            zip(summary.per_position, summary.per_position_conditional), 1
        ):
            lines.append(f"{j:>8}  {p:>11.3f}  {_fmt(c):>17}")
    else:
        lines.append("per-position acceptance: not available "
                     f"({summary.extra.get('per_position_missing', 'no verify steps')})")
    return "\n".join(lines)


def write_json(summary: AcceptanceSummary, path: str | Path) -> Path:
    """Write ``summary.to_dict()`` (strict JSON, NaN as null) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, summary.to_dict())


def plot_per_position(summary: AcceptanceSummary, path: str | Path, *, title: str = "") -> Path | None:
    """Bar chart of ``P(position j accepted)`` (conditional rate as a line); ``None`` if no data."""
    if not summary.per_position:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = list(range(1, len(summary.per_position) + 1))
    cond = [float("nan") if c is None else c for c in summary.per_position_conditional]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(positions, summary.per_position, color="#4c72b0", label="P(position j accepted)")
    ax.plot(positions, cond, "o-", color="#dd8452", label="P(j accepted | 1..j-1 accepted)")
    ax.set_xlabel("draft position j")
    ax.set_ylabel("acceptance")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(positions)
    mean = summary.mean_accept_length
    ax.set_title(title or f"{summary.mode}: mean accepted length {_fmt(mean, 2)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
