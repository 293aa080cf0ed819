"""Figures of a side-by-side run: per-level rows, cost per million output tokens, the Markdown table."""

from __future__ import annotations

from sglang_dspark.bench_serving import REPORTED

# bench_serving keys kept for every level (REPORTED plus the tails the seeds compare).
BENCH_KEYS = tuple(dict.fromkeys((
    *REPORTED,
    "p90_ttft_ms", "p99_ttft_ms", "mean_ttft_ms",
    "p90_itl_ms", "mean_itl_ms",
    "mean_tpot_ms", "median_tpot_ms",
    "mean_e2e_latency_ms", "p99_e2e_latency_ms",
    "total_input_tokens", "request_throughput", "max_concurrency",
)))


def cost_per_million_tokens(price_per_hour: float | None, tokens_per_second: float | None) -> float | None:
    """Price of one million output tokens at ``tokens_per_second`` on a device rented at ``price_per_hour``."""
    if price_per_hour is None or not tokens_per_second:
        return None
    if price_per_hour < 0:
        raise ValueError("price per hour must be >= 0")
    return price_per_hour / (tokens_per_second * 3600.0) * 1e6


def per_user_speed(bench: dict) -> float | None:
    """Decode speed one user sees (tokens/s after the first token): 1000 / mean TPOT in ms."""
    tpot = bench.get("mean_tpot_ms")
    return 1000.0 / tpot if tpot else None


def level_row(concurrency: int, bench: dict, dspark: dict | None, price_per_hour: float | None) -> dict:
    """One concurrency level of one server: bench_serving figures plus derived ones."""
    figures = {key: bench.get(key) for key in BENCH_KEYS}
    return {
        "concurrency": concurrency,
        "bench": figures,
        "per_user_tok_s": per_user_speed(figures),
        "cost_per_million_output_tokens": cost_per_million_tokens(price_per_hour, figures["output_throughput"]),
        "dspark": dspark,
    }


def add_speedups(servers: dict[str, dict], reference: str = "none") -> None:
    """Set ``speedup_vs_none`` on every level of every measured server (same concurrency)."""
    ref = servers.get(reference)
    ref_tps = {lvl["concurrency"]: lvl["bench"]["output_throughput"] for lvl in (ref or {}).get("levels", [])}
    for server in servers.values():
        for lvl in server.get("levels", []):
            base = ref_tps.get(lvl["concurrency"])
            tps = lvl["bench"]["output_throughput"]
            lvl["speedup_vs_none"] = tps / base if base and tps is not None else None


def _fmt(value, spec: str = ".2f", empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def _percentiles(bench: dict, metric: str, spec: str) -> str:
    return " / ".join(_fmt(bench.get(f"{p}_{metric}_ms"), spec) for p in ("median", "p95", "p99"))


def accept_length_of(server: dict, level: dict) -> float | None:
    """Tokens committed per request per step: 1 for plain decoding, measured otherwise."""
    if not server.get("speculative"):
        return 1.0
    d = level.get("dspark") or {}
    return d.get("mean_accept_length") or level["bench"].get("accept_length")


def format_table(report: dict) -> str:
    """The Markdown table of every server and level, unavailable servers with their reason."""
    price = report.get("price_per_gpu_hour")
    rows = [
        "| server | conc. | status | out tok/s | vs none | per-user tok/s | TTFT p50 / p95 / p99 (ms) "
        "| ITL p50 / p95 / p99 (ms) | accept len | verify tok/step | plain steps | sched. overhead | $ / M out tok |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, server in report["servers"].items():
        if not server.get("levels"):
            rows.append(f"| {server['label']} | - | {server['status']}: {server.get('reason', '')} "
                        "| - | - | - | - | - | - | - | - | - | - |")
            continue
        for lvl in server["levels"]:
            b = lvl["bench"]
            d = lvl.get("dspark") or {}
            share = d.get("scheduling_overhead_share")
            plain = d.get("plain_step_share")
            rows.append(
                f"| {server['label']} | {lvl['concurrency']} | {server['status']} "
                f"| {_fmt(b['output_throughput'])} | {_fmt(lvl.get('speedup_vs_none'), '.2f')}"
                f"{'' if lvl.get('speedup_vs_none') is None else 'x'} | {_fmt(lvl['per_user_tok_s'])} "
                f"| {_percentiles(b, 'ttft', '.0f')} | {_percentiles(b, 'itl', '.1f')} "
                f"| {_fmt(accept_length_of(server, lvl))} | {_fmt(d.get('mean_verify_tokens_per_step'))} "
                f"| {_fmt(None if plain is None else 100 * plain, '.0f')}{'' if plain is None else ' %'} "
                f"| {_fmt(None if share is None else 100 * share, '.2f')}{'' if share is None else ' %'} "
                f"| {_fmt(lvl['cost_per_million_output_tokens'], '.4g')} |"
            )
    notes = [
        "",
        f"Scenario `{report['scenario']['name']}`: {report['scenario']['description']}",
        f"Model `{report['model']}`, drafter `{report.get('drafter')}`, device {report['device']}, "
        f"greedy, bench_serving seed {report['scenario']['seed']}.",
        "per-user tok/s = 1000 / mean TPOT; accept len = tokens committed per request per step; "
        "sched. overhead = DSPARK prefix scheduler + bookkeeping time / whole step time "
        "(`sglang_dspark:overhead_seconds` / `step_seconds`); plain steps = share of request-steps "
        "the speculation gate decoded without drafting because that measured faster. DSPARK figures are differences of the "
        "worker's histograms around each level; other speculative servers show bench_serving's "
        "`accept_length` (SGLang's running average since server start).",
    ]
    if price is not None:
        notes.append(f"$ / M out tok at {price} per device-hour and the measured output throughput.")
    return "\n".join(rows + notes) + "\n"
