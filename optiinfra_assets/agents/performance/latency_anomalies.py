"""Latency and throughput anomalies: each deployment's hourly p95, tail, TTFT, inter-token latency and
throughput through the shared anomaly detector, with what explains an anomalous hour: a change (instances
relaunched or a rollout under way just before it), more load, KV-cache pressure, or nothing we can see (a
regression: a model or engine issue)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal

import numpy as np
import polars as pl

from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.findings import NewestHour, hourly_series, newest_hour_anomalies
from optiinfra_assets.agents.performance import AGENT
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Deployment, Instance, Risk
from optiinfra_assets.snapshot import FleetSnapshot

LOAD = "requests_per_s_avg"
KV = "kv_cache_usage_avg"
PREEMPTIONS = "preemptions_per_s_avg"
# Load this much above (or below, for throughput) its usual level explains a change by itself.
LOAD_RISE = 1.25
# A change (instances launched, a rollout) this long before an anomalous hour is a suspect for it.
CHANGE_WINDOW = timedelta(hours=2)


@dataclass(frozen=True)
class Watched:
    """One hourly figure the detector watches and which side of it is bad."""

    metric: str  # the finding's metric
    column: str  # the hourly rollup column (MetricStore.hourly)
    worse: Literal["high", "low"]
    label: str
    slo_bound: bool = False  # compared with the customer's p95 SLO for severity
    # Read instead, for the whole series, when some hour lacks ``column`` (rolled up before the store kept it):
    # a series that switched definitions half-way would flag the switch.
    fallback: str | None = None


WATCHED: tuple[Watched, ...] = (
    Watched("latency_p95_ms", "latency_p95_ms_p50", "high", "p95 latency", slo_bound=True),
    # The tail: the hour's average per-second p99; before the rollup kept it (metric store v7), the 99th
    # percentile of the hour's per-second p95.
    Watched(
        "latency_p99_ms",
        "latency_p99_ms_avg",
        "high",
        "p99 latency",
        slo_bound=True,
        fallback="latency_p95_ms_p99",
    ),
    Watched("ttft_ms", "ttft_ms_p50", "high", "time to first token"),
    Watched("itl_ms", "itl_ms_p50", "high", "inter-token latency"),
    Watched("tokens_per_s", "tokens_per_s_avg", "low", "throughput"),
)


def _utc(at: datetime) -> datetime:
    """Naive times (as some stores return them) are UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def recent_change(deployment: Deployment, instances: list[Instance], since: datetime) -> str | None:
    """What changed on the deployment from ``since`` on, in words, or None."""
    since = _utc(since)
    if deployment.rollout_to is not None:
        changed = ", ".join(deployment.config.changes(deployment.rollout_to)) or "its config"
        return f"a rollout is under way ({changed}, {deployment.rollout_fraction:.0%} applied)"
    launched = [i for i in instances if _utc(i.launched_at) >= since]
    if not launched:
        return None
    latest = max(_utc(i.launched_at) for i in launched)
    others = [i for i in instances if _utc(i.launched_at) < since]
    engines = {i.engine for i in launched}
    differs = bool(others) and any(e != others[0].engine for e in engines)
    what = " with a different engine config" if differs else ""
    return f"{len(launched)} instance{'s' if len(launched) != 1 else ''} launched{what} by {latest:%Y-%m-%d %H:%M}"


def _kv_pressure(rows: pl.DataFrame, last: int, settings: DecisionSettings) -> str | None:
    """The KV-cache pressure of hour ``last`` in words: preemptions where the engine counts them, else the
    cache's usage; None when there is none."""
    load = _floats(rows, LOAD)
    preemptions = _floats(rows, PREEMPTIONS)
    if preemptions is not None and load is not None and np.isfinite(preemptions[last]) and load[last] > 0:
        share = preemptions[last] / load[last]
        if share < settings.kv_preempted_share:
            return None
        return f"KV-cache pressure: vLLM preempted {share:.1%} of requests ({preemptions[last]:.3f}/s)"
    kv = _floats(rows, KV)
    if kv is not None and kv[last] >= settings.kv_pressure_usage:
        return f"KV-cache pressure: {kv[last]:.0%} of the cache in use"
    return None


def _floats(rows: pl.DataFrame, column: str) -> np.ndarray | None:
    """The column as floats, NaN where null (polars' to_numpy makes a float null NaN), None when absent."""
    return rows[column].cast(pl.Float64).to_numpy() if column in rows.columns else None


def explain(
    watched: Watched, rows: pl.DataFrame, last: int, change: str | None, settings: DecisionSettings
) -> str:
    """Why the newest hour of ``watched`` is anomalous: a change first, then load, then the KV cache."""
    load = _floats(rows, LOAD)
    usual_load = float(np.median(load[:last])) if load is not None and last else None
    pressure = _kv_pressure(rows, last, settings)
    context = [pressure] if pressure else []
    kv_full = pressure is not None
    more_load = usual_load is not None and usual_load > 0 and load[last] >= LOAD_RISE * usual_load
    less_load = usual_load is not None and usual_load > 0 and load[last] * LOAD_RISE <= usual_load
    if change is not None:
        return f"a regression after a change: {change}" + (f" ({'; '.join(context)})" if context else "")
    if watched.worse == "low" and less_load:
        return (
            f"load: {load[last]:.2f} req/s against a usual {usual_load:.2f} (less demand, not slower serving)"
        )
    if kv_full:
        return context[0]
    if more_load:
        return f"load: {load[last]:.2f} req/s against a usual {usual_load:.2f}"
    return "no load or KV-cache change explains it: a regression (a change, a model or engine issue)"


def series_column(rows: pl.DataFrame, watched: Watched) -> str | None:
    """The column ``watched`` is read from: its own when every hour has it, else its fallback."""
    values = _floats(rows, watched.column)
    if values is not None and (np.isfinite(values).all() or watched.fallback not in rows.columns):
        return watched.column
    return watched.fallback if watched.fallback in rows.columns else None


class LatencyAnomalies(Detector):
    name: ClassVar[str] = "latency_anomalies"
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Hourly p95, tail latency, TTFT, inter-token latency and throughput per deployment through the shared "
        "anomaly detector, explained by a change, load, KV-cache pressure or a regression."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        # Every watched series of the fleet first, then the shared detector on all of them at once.
        checks: list[tuple[Deployment, pl.DataFrame, Watched]] = []
        series: list[tuple[np.ndarray, np.ndarray]] = []
        for deployment, rows in hourly_series(snapshot, "performance"):
            hours = rows["hour"].to_numpy()
            for watched in WATCHED:
                column = series_column(rows, watched)
                if column is None:
                    continue
                values = _floats(rows, column)
                if values is not None and not np.isnan(values).all():
                    checks.append((deployment, rows, watched))
                    series.append((values, hours))
        findings: list[Finding] = []
        for (deployment, rows, watched), newest in zip(checks, newest_hour_anomalies(series), strict=True):
            if newest is None:
                continue  # only the newest hour matters now
            finding = self._finding(snapshot, deployment, rows, watched, newest, settings)
            if finding is not None:
                findings.append(finding)
        return findings

    def _finding(
        self,
        snapshot: FleetSnapshot,
        deployment: Deployment,
        rows: pl.DataFrame,
        watched: Watched,
        newest: NewestHour,
        settings: DecisionSettings,
    ) -> Finding | None:
        """The finding of a flagged newest hour, or None when it is off on its good side."""
        customer = snapshot.customer_by_id.get(deployment.customer_id)
        slo = customer.slo_p95_latency_ms if customer else float("inf")
        last, usual = newest.last, newest.usual
        worse = newest.value > usual if watched.worse == "high" else newest.value < usual
        if not worse:
            return None  # and only its bad side
        hour: datetime = rows["hour"][last]
        instances = snapshot.running_by_deployment.get(deployment.id, [])
        change = recent_change(deployment, instances, hour - CHANGE_WINDOW)
        explanation = explain(watched, rows, last, change, settings)
        if watched.slo_bound:
            severity = Risk.HIGH if newest.value > slo else Risk.MEDIUM
        else:
            severity = Risk.LOW if explanation.startswith("load:") and watched.worse == "low" else Risk.MEDIUM
        unit = "tokens/s" if watched.metric == "tokens_per_s" else "ms"
        return Finding(
            detector=self.name,
            customer_id=deployment.customer_id,
            deployment_id=deployment.id,
            severity=severity,
            metric=watched.metric,
            value=round(newest.value, 1),
            expected=round(usual, 1),
            since=str(hour),
            summary=(
                f"{watched.label} of {deployment.id} is anomalous in the last hour: {newest.value:.0f} {unit} "
                f"against a usual {usual:.0f} (score {newest.score:.2f})"
            ),
            explanation=explanation,
        )
