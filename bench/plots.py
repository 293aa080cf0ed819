"""PNG plots of a side-by-side run (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

PLOT_FILES = {
    "throughput": "throughput_vs_concurrency.png",
    "latency": "latency_percentiles.png",
    "acceptance": "accept_length_per_position.png",
    "verify": "verify_tokens_per_step.png",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _measured(report: dict) -> list[tuple[str, dict]]:
    return [(name, s) for name, s in report["servers"].items() if s.get("levels")]


def _xaxis(ax, levels: list[int]) -> None:
    if len(levels) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency")


def _legend(ax, fontsize: int) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _finish_concurrency_figure(fig, axes, levels: list[int], legend_size: int, title: str, path: Path) -> None:
    """Concurrency x axes, grid and legend on every panel, then the title and the file."""
    for ax in axes:
        _xaxis(ax, levels)
        ax.grid(alpha=0.3)
        _legend(ax, legend_size)
    fig.suptitle(title)
    _save(fig, path)


def plot_throughput(report: dict, path: Path) -> None:
    """Output tokens/s and per-user tokens/s against concurrency, one line per server."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    levels = list(report["scenario"]["concurrency"])
    for name, server in _measured(report):
        xs = [lvl["concurrency"] for lvl in server["levels"]]
        axes[0].plot(xs, [lvl["bench"]["output_throughput"] for lvl in server["levels"]], "o-", label=server["label"])
        axes[1].plot(xs, [lvl["per_user_tok_s"] or 0 for lvl in server["levels"]], "o-", label=server["label"])
    axes[0].set_ylabel("output tokens / s (all users)")
    axes[1].set_ylabel("tokens / s per user (1000 / TPOT)")
    _finish_concurrency_figure(fig, axes, levels, 8, f"{report['scenario']['name']}: throughput and per-user speed", path)


def plot_latency(report: dict, path: Path) -> None:
    """TTFT and ITL p50 / p95 / p99 against concurrency (solid / dashed / dotted)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    levels = list(report["scenario"]["concurrency"])
    styles = {"median": "-", "p95": "--", "p99": ":"}
    for i, (name, server) in enumerate(_measured(report)):
        color = f"C{i}"
        xs = [lvl["concurrency"] for lvl in server["levels"]]
        for ax, metric in zip(axes, ("ttft", "itl")):
            for pct, style in styles.items():
                ys = [lvl["bench"][f"{pct}_{metric}_ms"] for lvl in server["levels"]]
                ax.plot(xs, ys, style, marker="o", color=color,
                        label=f"{server['label']} {'p50' if pct == 'median' else pct}")
    axes[0].set_ylabel("time to first token (ms)")
    axes[1].set_ylabel("inter-token latency (ms)")
    title = f"{report['scenario']['name']}: TTFT and ITL, p50 (solid) / p95 (dashed) / p99 (dotted)"
    _finish_concurrency_figure(fig, axes, levels, 7, title, path)


def plot_acceptance(report: dict, path: Path) -> None:
    """P(draft position j accepted) for each speculative server and level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for name, server in _measured(report):
        for lvl in server["levels"]:
            probs = (lvl.get("dspark") or {}).get("position_acceptance") or []
            if probs:
                ax.plot(range(1, len(probs) + 1), probs, "o-", label=f"{server['label']}, conc. {lvl['concurrency']}")
                drawn = True
    if drawn:
        ax.set_xlabel("draft position j")
        ax.set_ylabel("P(position j accepted)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _legend(ax, 7)
    else:
        _no_data(ax, "no speculative server exported an accept-length histogram")
    ax.set_title("accepted length per position")
    _save(fig, path)


def plot_verify_tokens(report: dict, path: Path) -> None:
    """Histogram of tokens the target verified per step (summed over the batch), per level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    series = [
        (f"{server['label']}, conc. {lvl['concurrency']}", lvl["dspark"]["verify_tokens_histogram"])
        for _, server in _measured(report)
        for lvl in server["levels"]
        if (lvl.get("dspark") or {}).get("verify_tokens_histogram")
    ]
    if series:
        bounds = [b for b, _ in series[0][1]]
        # Integer-valued observations: bucket (lo, hi] holds lo + 1 .. hi. Empty tail buckets are cut.
        last = max(i for _, hist in series for i, (_, c) in enumerate(hist) if c > 0)
        bounds = bounds[: last + 1]
        names = [_bucket_name(bounds, i) for i in range(len(bounds))]
        width = 0.8 / len(series)
        for i, (label, hist) in enumerate(series):
            total = sum(c for _, c in hist) or 1
            ys = [c / total for _, c in hist[: len(bounds)]]
            ax.bar([x + i * width for x in range(len(bounds))], ys, width, label=label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(bounds))], names, fontsize=7)
        ax.set_xlabel("tokens verified in one step (whole batch)")
        ax.set_ylabel("share of steps")
        _legend(ax, 7)
    else:
        _no_data(ax, "no speculative server exported sglang_dspark:verify_tokens_per_step")
    ax.set_title("tokens verified per step")
    _save(fig, path)


def _bucket_name(bounds: list[float], i: int) -> str:
    hi = bounds[i]
    lo = 0 if i == 0 else bounds[i - 1]
    if hi == float("inf"):
        return f">{lo:g}"
    return f"{hi:g}" if hi - lo <= 1 else f"{lo + 1:g}-{hi:g}"


def write_plots(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write every plot of :data:`PLOT_FILES` into ``out_dir``; return their paths."""
    paths = {key: out_dir / name for key, name in PLOT_FILES.items()}
    plot_throughput(report, paths["throughput"])
    plot_latency(report, paths["latency"])
    plot_acceptance(report, paths["acceptance"])
    plot_verify_tokens(report, paths["verify"])
    return paths


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
