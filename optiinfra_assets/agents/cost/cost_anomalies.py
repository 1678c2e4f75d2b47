"""Cost anomalies: each deployment's hourly spend through the shared anomaly detector, explained.

A finding says which deployment, the spend of the last complete hour against what that hour of the week
usually costs, since when it is anomalous, and the likely cause, read from the cost rows themselves
(instance-hours, the spot share, the price per instance-hour) and from the fleet's instance launches: a
scale-up, a lifecycle change (spot back to on-demand) or a price change. Only rises are reported: a
cheaper hour is no incident.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import numpy as np
import polars as pl

from optiinfra_assets.agents.anomaly import detect
from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import Instance, Lifecycle, Risk
from optiinfra_assets.snapshot import FleetSnapshot

AGENT = "cost"
METRIC = "cost_usd_per_hour"
# Cost rows are per instance and minute (metrics.SCHEMAS[Domain.COST].resolution == "1m").
COST_ROWS_PER_INSTANCE_HOUR = 60.0
HOURS_PER_WEEK = 168
HOURS_PER_DAY = 24
# Changes smaller than these are noise, not a cause: a tenth of an instance on average over the hour,
# five points of spot share, one percent of the price per instance-hour.
MIN_INSTANCE_CHANGE = 0.1
MIN_SPOT_SHARE_CHANGE = 0.05
MIN_PRICE_CHANGE = 0.01


@dataclass(frozen=True)
class CostHours:
    """A deployment's spend on a regular hourly grid (NaN where no cost row was stored)."""

    hours: np.ndarray  # datetime64[ms], one per hour, oldest first
    cost_usd: np.ndarray
    instance_hours: np.ndarray
    spot_instance_hours: np.ndarray
    # price per instance-hour per lifecycle (NaN where the lifecycle did not run that hour)
    price: dict[str, np.ndarray]


def _hour_floor(at: datetime) -> np.datetime64:
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return np.datetime64(at.replace(minute=0, second=0, microsecond=0, tzinfo=None), "ms")


def cost_hours(rows: pl.DataFrame, before: datetime | None) -> CostHours | None:
    """The hourly cost rows of one deployment (MetricStore.hourly_cost, one row per lifecycle and hour)
    as a regular hourly grid of complete hours: hours at or after ``before``'s hour are still being
    written, and the first stored hour may have been collected from part-way through, so both are left
    out. None when there is no complete hour."""
    if rows.is_empty():
        return None
    frame = rows.with_columns(
        pl.col("hour").dt.replace_time_zone(None).cast(pl.Datetime("ms")),
        (pl.col("samples").cast(pl.Float64) / COST_ROWS_PER_INSTANCE_HOUR).alias("instance_hours"),
    )
    if before is not None:
        frame = frame.filter(pl.col("hour") < _hour_floor(before))
    frame = frame.filter(pl.col("hour") > pl.col("hour").min())
    if frame.is_empty():
        return None
    per_hour = (
        frame.group_by("hour")
        .agg(
            pl.col("cost_usd").sum(),
            pl.col("instance_hours").sum(),
            pl.col("instance_hours").filter(pl.col("lifecycle") == str(Lifecycle.SPOT)).sum().alias("spot"),
        )
        .sort("hour")
    )
    first, last = per_hour["hour"][0], per_hour["hour"][-1]
    grid = pl.DataFrame({"hour": pl.datetime_range(first, last, "1h", eager=True).cast(pl.Datetime("ms"))})
    joined = grid.join(per_hour, on="hour", how="left").sort("hour")
    price: dict[str, np.ndarray] = {}
    for lifecycle in Lifecycle:
        mine = (
            frame.filter(pl.col("lifecycle") == str(lifecycle))
            .group_by("hour")
            .agg((pl.col("cost_usd").sum() / pl.col("instance_hours").sum()).alias("price"))
        )
        per = grid.join(mine, on="hour", how="left").sort("hour")
        price[str(lifecycle)] = per["price"].to_numpy().astype(np.float64)
    return CostHours(
        hours=joined["hour"].to_numpy().astype("datetime64[ms]"),
        cost_usd=joined["cost_usd"].to_numpy().astype(np.float64),
        instance_hours=joined["instance_hours"].to_numpy().astype(np.float64),
        spot_instance_hours=joined["spot"].to_numpy().astype(np.float64),
        price=price,
    )


def seasonal_expectation(values: np.ndarray, at: int, before: int) -> float:
    """What hour ``at`` of an hourly series usually is, from the hours before index ``before`` only: the
    median of the same hour of the week in earlier weeks; without a full week behind, of the same hour
    of the day; without a day, of all of them. NaN when nothing is known."""
    for period in (HOURS_PER_WEEK, HOURS_PER_DAY):
        same = values[[i for i in range(at - period, -1, -period) if i < before]]
        same = same[np.isfinite(same)]
        if same.size:
            return float(np.median(same))
    past = values[:before]
    past = past[np.isfinite(past)]
    return float(np.median(past)) if past.size else float("nan")


def _median_before(values: np.ndarray, before: int, hours: int = HOURS_PER_DAY) -> float:
    window = values[max(0, before - hours) : before]
    window = window[np.isfinite(window)]
    return float(np.median(window)) if window.size else float("nan")


def likely_causes(
    series: CostHours, since: int, last: int, launched: list[Instance], hours_per_month: float
) -> list[str]:
    """Why spend moved at index ``since`` (and still is at ``last``): each change of the drivers of cost,
    from the day before ``since`` to ``last``, in words. Empty when none moved."""
    causes: list[str] = []
    before_n = _median_before(series.instance_hours, since)
    after_n = float(series.instance_hours[last])
    if np.isfinite(before_n) and abs(after_n - before_n) >= MIN_INSTANCE_CHANGE:
        word = "scale-up" if after_n > before_n else "scale-down"
        names = ", ".join(
            f"{i.id} ({i.instance_type}, {i.lifecycle}, launched {i.launched_at.isoformat()})"
            for i in launched
        )
        causes.append(
            f"{word}: {before_n:.1f} -> {after_n:.1f} instances on average"
            + (f"; launched since: {names}" if names else "")
        )
    before_share = _median_before(series.spot_instance_hours, since) / before_n if before_n else float("nan")
    after_share = float(series.spot_instance_hours[last]) / after_n if after_n else float("nan")
    moved = abs(after_share - before_share) >= MIN_SPOT_SHARE_CHANGE  # False when either is NaN
    if moved:
        causes.append(
            f"lifecycle change: spot share {before_share:.0%} -> {after_share:.0%} of instance-hours"
        )
    for lifecycle, prices in series.price.items():
        old, new = _median_before(prices, since), float(prices[last])
        if np.isfinite(old) and np.isfinite(new) and old > 0 and abs(new / old - 1.0) >= MIN_PRICE_CHANGE:
            extra = (new - old) * after_n * hours_per_month
            causes.append(
                f"price change: {lifecycle} ${old:.3f} -> ${new:.3f} per instance-hour "
                f"(~${extra:,.0f}/month at the current size)"
            )
    return causes


def _launched_since(snapshot: FleetSnapshot, deployment_id: str, since: np.datetime64) -> list[Instance]:
    start = since.astype("datetime64[ms]").astype(datetime).replace(tzinfo=UTC) - timedelta(hours=1)
    return sorted(
        (
            i
            for i in snapshot.instances
            if i.deployment_id == deployment_id
            and (i.launched_at if i.launched_at.tzinfo else i.launched_at.replace(tzinfo=UTC)) >= start
        ),
        key=lambda i: (i.launched_at, i.id),
    )


@dataclass(frozen=True)
class _Anomaly:
    deployment_id: str
    customer_id: str
    since: int
    actual: float
    expected: float
    score: float
    series: CostHours


def find_cost_anomaly(
    series: CostHours, settings: DecisionSettings
) -> tuple[int, float, float, float] | None:
    """(index of the alert, last hour's spend, its expected spend, the alert's score) when the shared
    detector alerted on a rise within the recent hours and the last complete hour is still well above
    what that hour of the week usually costs; None otherwise."""
    values = series.cost_usd
    last = len(values) - 1
    rise = 1.0 + settings.cost_anomaly_min_rise_pct / 100.0
    # The last hour must end up this far above its usual level anyway (below): most deployments are not,
    # and they skip the detector (~0.1 s per 35-day series on 2 cores, a lot across a large fleet). The
    # expectation of hour `last` reads the same hours of earlier weeks (or days), none of them in the
    # recent window, so it is the one the check below computes.
    usual = seasonal_expectation(values, last, last)
    if not np.isfinite(values[last]) or not np.isfinite(usual) or values[last] < usual * rise:
        return None
    result = detect(values, series.hours)
    recent = range(max(0, last - settings.cost_anomaly_recent_hours + 1), last + 1)
    alerts = [i for i in recent if result.is_anomaly[i] and str(result.view[i]).endswith("_up")]
    if not alerts:
        return None
    since = alerts[-1]
    # Several alerts in the window may be one event growing (a second, stronger step): it started at the
    # earliest one after which spend never went back to its usual level.
    for i in reversed(alerts[:-1]):
        between = values[i : since + 1]
        if np.all(between[np.isfinite(between)] > seasonal_expectation(values, i, i)):
            since = i
    expected = seasonal_expectation(values, last, since)
    if not np.isfinite(expected):
        return None
    if values[last] < expected * rise:
        return None  # it came back down
    return since, float(values[last]), expected, float(result.score[since])


class CostAnomalies(Detector):
    name: ClassVar[str] = "cost_anomalies"
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Hourly spend per deployment through the shared anomaly detector, against the same hour of the "
        "week; explained by a scale-up, a lifecycle change or a price change, with the customer's share."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        anomalies: list[_Anomaly] = []
        # Per customer: each deployment's rise of the last hour over its usual level, and its series.
        rises: dict[str, dict[str, float]] = {}
        series_of: dict[str, CostHours] = {}
        for deployment in snapshot.deployments:
            series = cost_hours(snapshot.hourly_of(str(Domain.COST), deployment.id), snapshot.taken_at)
            if series is None:
                continue
            series_of[deployment.id] = series
            last = len(series.cost_usd) - 1
            usual = seasonal_expectation(series.cost_usd, last, last)
            if np.isfinite(usual) and np.isfinite(series.cost_usd[last]):
                rises.setdefault(deployment.customer_id, {})[deployment.id] = (
                    float(series.cost_usd[last]) - usual
                )
            found = find_cost_anomaly(series, settings)
            if found is not None:
                anomalies.append(_Anomaly(deployment.id, deployment.customer_id, *found, series))
        findings = [
            self._finding(a, snapshot, settings, sum(rises.get(a.customer_id, {}).values()))
            for a in anomalies
        ]
        flagged = {a.customer_id for a in anomalies}
        for customer in snapshot.customers:
            if customer.id not in flagged:
                findings += self._customer_finding(customer.id, snapshot, settings, rises, series_of)
        return findings

    def _customer_finding(
        self,
        customer_id: str,
        snapshot: FleetSnapshot,
        settings: DecisionSettings,
        rises: dict[str, dict[str, float]],
        series_of: dict[str, CostHours],
    ) -> list[Finding]:
        """A customer whose total spend is anomalous though no one deployment's is (several small rises):
        one finding, on the deployment that rose most."""
        mine = [d.id for d in snapshot.deployments if d.customer_id == customer_id and d.id in series_of]
        if len(mine) < 2 or not rises.get(customer_id):
            return []
        frames = [snapshot.hourly_of(str(Domain.COST), did) for did in mine]
        total = cost_hours(pl.concat(frames, how="vertical_relaxed"), snapshot.taken_at)
        found = None if total is None else find_cost_anomaly(total, settings)
        if total is None or found is None:
            return []
        since, actual, expected, score = found
        top = max(rises[customer_id], key=lambda did: rises[customer_id][did])
        top_series = series_of[top]
        at = np.searchsorted(top_series.hours, total.hours[since])
        causes = likely_causes(
            top_series,
            min(int(at), len(top_series.cost_usd) - 1),
            len(top_series.cost_usd) - 1,
            _launched_since(snapshot, top, total.hours[since]),
            settings.hours_per_month,
        )
        customer_rise = sum(rises[customer_id].values())
        share = rises[customer_id][top] / customer_rise if customer_rise > 0 else 0.0
        return [
            self._finding(
                _Anomaly(top, customer_id, since, actual, expected, score, total),
                snapshot,
                settings,
                customer_rise,
                subject=f"customer {customer_id}",
                explanation=f"{top} rose most ({share:.0%} of the rise): "
                + ("; ".join(causes) or "no change"),
            )
        ]

    def _finding(
        self,
        a: _Anomaly,
        snapshot: FleetSnapshot,
        settings: DecisionSettings,
        customer_delta: float,
        subject: str = "",
        explanation: str = "",
    ) -> Finding:
        """The finding of an anomaly of a deployment's spend (or, with ``subject``, of a customer's total,
        reported on ``a.deployment_id`` with its ``explanation``)."""
        series, last = a.series, len(a.series.cost_usd) - 1
        since_hour = series.hours[a.since]
        launched = _launched_since(snapshot, a.deployment_id, since_hour)
        causes = likely_causes(series, a.since, last, launched, settings.hours_per_month)
        rise_pct = 100.0 * (a.actual / a.expected - 1.0) if a.expected > 0 else float("inf")
        delta = a.actual - a.expected
        share = (
            f"; {min(delta / customer_delta, 1.0):.0%} of customer {a.customer_id}'s rise in hourly spend"
            if customer_delta > 0 and not subject
            else ""
        )
        explanation = explanation or (
            "; ".join(causes)
            if causes
            else "no change in instance count, lifecycle or price explains it: check usage-based charges"
        )
        since = since_hour.astype("datetime64[ms]").astype(datetime).replace(tzinfo=UTC).isoformat()
        return Finding(
            detector=self.name,
            customer_id=a.customer_id,
            deployment_id=a.deployment_id,
            severity=Risk.HIGH if rise_pct >= settings.cost_anomaly_high_rise_pct else Risk.MEDIUM,
            metric=("customer_" if subject else "") + METRIC,
            value=round(a.actual, 2),
            expected=round(a.expected, 2),
            since=since,
            summary=(
                f"spend of {subject or a.deployment_id} is anomalous since {since}: ${a.actual:,.2f}/h against "
                f"${a.expected:,.2f}/h usual for this hour of the week (+{rise_pct:.0f}%, "
                f"~${delta * settings.hours_per_month:,.0f}/month; score {a.score:.2f}){share}"
            ),
            explanation=explanation,
        )
