"""DSPARK worker figures read from a running server: Prometheus ``/metrics`` and ``/server_info``.

Every figure is a difference of two snapshots taken around one benchmark run,
so warm-up traffic and earlier levels do not leak into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import requests

PREFIX = "sglang_dspark:"
HISTOGRAMS = (
    "accept_length",
    "verify_tokens_per_step",
    "overhead_seconds",
    "step_seconds",
    "schedule_seconds",
    "draft_seconds",
)
# Counters of the worker's info record (``/server_info`` -> internal_states[0].dspark_info_record).
INFO_COUNTERS = (
    "dspark_decode_steps",
    "dspark_verify_steps",
    "dspark_draft_seconds",
    "dspark_schedule_seconds",
    "dspark_verify_seconds",
    "dspark_overhead_seconds",
    "dspark_step_seconds",
    "dspark_plain_steps",
)


@dataclass(frozen=True)
class Histogram:
    """One Prometheus histogram: sum, count and cumulative bucket counts by upper bound."""

    total: float
    count: float
    buckets: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        bounds = [b for b, _ in self.buckets]
        if bounds != sorted(bounds):
            raise ValueError("histogram buckets must be sorted by upper bound")

    def minus(self, before: "Histogram | None") -> "Histogram":
        """This histogram less an earlier snapshot of it."""
        if before is None:
            return self
        old = dict(before.buckets)
        return Histogram(
            total=self.total - before.total,
            count=self.count - before.count,
            buckets=tuple((b, c - old.get(b, 0.0)) for b, c in self.buckets),
        )

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def bin_counts(self) -> list[tuple[float, float]]:
        """Non-cumulative (upper bound, count) pairs, ``+Inf`` bin last."""
        out, prev = [], 0.0
        for bound, cum in self.buckets:
            out.append((bound, cum - prev))
            prev = cum
        return out


@dataclass(frozen=True)
class Snapshot:
    """Histograms of ``/metrics`` and counters of ``/server_info`` at one instant."""

    histograms: dict[str, Histogram] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def parse_histograms(text: str) -> dict[str, Histogram]:
    """The ``sglang_dspark:*`` histograms of a Prometheus exposition, summed over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    acc: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX) or family.type != "histogram":
            continue
        short = family.name[len(PREFIX):]
        slot = acc.setdefault(short, {"sum": 0.0, "count": 0.0, "buckets": {}})
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                slot["buckets"][bound] = slot["buckets"].get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                slot["sum"] += sample.value
            elif sample.name.endswith("_count"):
                slot["count"] += sample.value
    return {
        name: Histogram(total=s["sum"], count=s["count"], buckets=tuple(sorted(s["buckets"].items())))
        for name, s in acc.items()
    }


def snapshot(base_url: str, *, timeout: float = 60.0) -> Snapshot:
    """Read ``/metrics`` (when the server exports it) and the DSPARK info record."""
    histograms: dict[str, Histogram] = {}
    try:
        resp = requests.get(base_url + "/metrics", timeout=timeout)
        if resp.status_code == 200:
            histograms = parse_histograms(resp.text)
    except requests.RequestException:
        pass
    info: dict = {}
    try:
        resp = requests.get(base_url + "/server_info", timeout=timeout)
        if resp.status_code == 200:
            states = resp.json().get("internal_states") or [{}]
            info = dict(states[0].get("dspark_info_record") or {})
    except (requests.RequestException, ValueError):
        pass
    return Snapshot(histograms=histograms, info=info)


def position_acceptance(accept: Histogram, block_size: int | None = None) -> list[float]:
    """P(draft position j is accepted) for j = 1, 2, ...: P(committed tokens per step >= j + 1).

    ``accept`` counts tokens committed per request per step (accepted drafts
    plus the bonus token) in integer buckets, so ``cum(le=j)`` is the number
    of steps that committed at most j tokens.
    """
    if not accept.count:
        return []
    cum = dict(accept.buckets)
    top = block_size or int(max((b for b in cum if b != float("inf")), default=1)) - 1
    return [1.0 - cum.get(float(j), accept.count) / accept.count for j in range(1, top + 1)]


def position_acceptance_from_record(histogram: list[int]) -> list[float]:
    """The same as :func:`position_acceptance`, from the info record's ``dspark_accept_histogram``.

    ``histogram[n]`` counts steps that committed n tokens.
    """
    total = sum(histogram)
    if not total:
        return []
    return [sum(histogram[j + 1:]) / total for j in range(1, len(histogram) - 1)]


def dspark_figures(before: Snapshot, after: Snapshot) -> dict | None:
    """DSPARK figures of the interval between two snapshots; None when the server has no DSPARK worker."""
    if not after.info and not any(name in after.histograms for name in HISTOGRAMS):
        return None
    delta = {name: after.histograms[name].minus(before.histograms.get(name)) for name in HISTOGRAMS
             if name in after.histograms}
    out: dict = {"impl": after.info.get("dspark_impl"), "source": {}}

    accept = delta.get("accept_length")
    record_hist = _record_delta_histogram(before.info, after.info)
    if accept is not None and accept.count:
        out["mean_accept_length"] = accept.mean
        # The info record's histogram is block size + 2 long (0 .. block + 1 tokens committed).
        block = len(record_hist) - 2 if len(record_hist) > 2 else None
        out["position_acceptance"] = position_acceptance(accept, block)
        out["source"]["accept_length"] = "/metrics sglang_dspark:accept_length"
    elif record_hist:
        n = sum(record_hist)
        out["mean_accept_length"] = sum(i * c for i, c in enumerate(record_hist)) / n if n else None
        out["position_acceptance"] = position_acceptance_from_record(record_hist)
        out["source"]["accept_length"] = "/server_info dspark_accept_histogram"
    if record_hist:
        out["accept_histogram"] = record_hist

    verify = delta.get("verify_tokens_per_step")
    if verify is not None and verify.count:
        out["verify_steps"] = verify.count
        out["mean_verify_tokens_per_step"] = verify.mean
        out["verify_tokens_histogram"] = [[b, c] for b, c in verify.bin_counts()]
        out["source"]["verify_tokens"] = "/metrics sglang_dspark:verify_tokens_per_step"

    overhead, step = delta.get("overhead_seconds"), delta.get("step_seconds")
    if overhead is not None and step is not None and step.total > 0:
        out["scheduling_overhead_share"] = overhead.total / step.total
        out["mean_step_ms"] = 1000 * step.mean if step.count else None
        out["source"]["overhead"] = "/metrics sglang_dspark:overhead_seconds / step_seconds"
    elif after.info.get("dspark_step_seconds", 0) - before.info.get("dspark_step_seconds", 0) > 0:
        step_s = after.info["dspark_step_seconds"] - before.info.get("dspark_step_seconds", 0)
        overhead_s = after.info.get("dspark_overhead_seconds", 0) - before.info.get("dspark_overhead_seconds", 0)
        out["scheduling_overhead_share"] = overhead_s / step_s
        out["source"]["overhead"] = "/server_info dspark_overhead_seconds / dspark_step_seconds"
    else:
        out["scheduling_overhead_share"] = None
        out["overhead_missing"] = (
            "the server exports no sglang_dspark:overhead_seconds / step_seconds "
            "(start it with --enable-metrics; needs a worker that records them)"
        )
    for name in ("schedule_seconds", "draft_seconds"):
        h = delta.get(name)
        if h is not None and h.count:
            out[f"mean_{name[:-8]}_ms"] = 1000 * h.mean
    for key in INFO_COUNTERS:
        if key in after.info:
            out[key] = after.info[key] - before.info.get(key, 0)
    steps = out.get("dspark_verify_steps")
    if steps and "dspark_plain_steps" in out:
        # Share of request-steps the speculation gate decoded plainly (no drafting).
        out["plain_step_share"] = out["dspark_plain_steps"] / steps
    if after.info.get("dspark_gate") is not None:
        out["gate"] = after.info["dspark_gate"]
    return out


def _record_delta_histogram(before: dict, after: dict) -> list[int]:
    new = list(after.get("dspark_accept_histogram") or [])
    old = list(before.get("dspark_accept_histogram") or [])
    old += [0] * (len(new) - len(old))
    return [a - b for a, b in zip(new, old)]
