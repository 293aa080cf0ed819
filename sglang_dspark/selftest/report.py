"""The selftest's outputs: the printed table, ``selftest.json``, ``selftest.txt`` and ``selftest.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sglang_dspark.selftest.results import CheckResult, SelftestReport, Status

JSON_NAME = "selftest.json"
TEXT_NAME = "selftest.txt"
PNG_NAME = "selftest.png"

_COLUMNS = ("check", "case", "result", "rel.err", "bound", "ms", "GB/s", "% peak", "note")


def _error(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def _cells(r: CheckResult) -> tuple[str, ...]:
    t = r.timing
    bound = "" if r.bound is None else ("exact" if r.bound == 0 else f"{r.bound:.0e}")
    ms = bw = share = ""
    if t is not None:
        ms = f"{t.median_ms:.3f}" if t.median_ms < 100 else f"{t.median_ms:.0f}"
        bw = f"{t.bytes_per_s / 1e9:.4g}"
        share = "" if t.peak_share is None else f"{100 * t.peak_share:.1f}%"
    return (r.check, r.case, r.status.value, _error(r.error), bound, ms, bw, share, r.note)


def render_table(report: SelftestReport) -> str:
    """The text the command prints: title, context, one line per check, verdict."""
    rows = [_COLUMNS] + [_cells(r) for r in report.results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = [report.title, *(f"  {h}" for h in report.header), ""]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    counts = report.counts()
    failed = [f"{r.check} {r.case}" for r in report.results if r.failed]
    verdict = "PASSED" if report.passed else "FAILED"
    lines += ["", f"selftest {verdict}: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
                  f"in {report.seconds / 60:.1f} min"]
    if failed:
        lines.append("failed: " + "; ".join(failed))
    return "\n".join(line.rstrip() for line in lines)


def write_json(report: SelftestReport, path: Path) -> None:
    """``report`` as JSON (strict: NaN written as null)."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(report.to_dict()), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_png(report: SelftestReport, path: Path) -> str | None:
    """Weight bandwidth vs T per implementation (and the HBM peak); the reason when nothing was written."""
    timed = [r for r in report.results if r.timing is not None and r.status is not Status.SKIP]
    if not timed:
        return "no timed MoE case"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'sglang-dspark[plots]')"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for check in dict.fromkeys(r.check for r in timed):
        points = sorted((r.tokens, r.timing.bytes_per_s / 1e9) for r in timed if r.check == check)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=check)
    peak = next((r.timing.peak_bytes_per_s for r in timed if r.timing.peak_bytes_per_s), None)
    if peak:
        ax.axhline(peak / 1e9, color="grey", linestyle="--", label=f"HBM peak {peak / 1e12:.3g} TB/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens T")
    ax.set_ylabel("weight bandwidth, GB/s (touched MXFP4 bytes / time)")
    ax.set_title(report.title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def write_outputs(report: SelftestReport, out_dir: Path) -> list[str]:
    """Write the three files into ``out_dir`` (created); return lines naming what was written or not."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(report, out_dir / JSON_NAME)
    (out_dir / TEXT_NAME).write_text(render_table(report) + "\n", encoding="utf-8")
    lines = [f"wrote {out_dir / JSON_NAME}", f"wrote {out_dir / TEXT_NAME}"]
    why_not = write_png(report, out_dir / PNG_NAME)
    if why_not is not None:
        (out_dir / PNG_NAME).unlink(missing_ok=True)  # not an older run's plot beside this run's JSON
    lines.append(f"wrote {out_dir / PNG_NAME}" if why_not is None else f"no {PNG_NAME}: {why_not}")
    return lines
