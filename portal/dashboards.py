"""Dashboards per agent: which measures each plots, read as series from the metric store in one set-based
query per domain, with anomalies marked by the shared detector and the budget forecast by the shared
forecaster. Plain functions: the API serves what they return, the pages plot it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from optiinfra_assets.agents.anomaly import detect
from optiinfra_assets.agents.forecast import forecast
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import RecommendationStatus
from resources.metric_store import MetricStore
from resources.state_store import StateStore

# Time ranges offered, and the bucket each is read at (about 150-360 points a series).
RANGES: dict[str, tuple[timedelta, int]] = {
    "1h": (timedelta(hours=1), 20),
    "6h": (timedelta(hours=6), 60),
    "24h": (timedelta(hours=24), 300),
    "7d": (timedelta(days=7), 3600),
}
FORECAST_HISTORY = timedelta(days=7)
# A series that stays within this fraction of its median is drawn flat: marking "anomalies" on it would
# point at noise no one can see (display only; the detectors' own findings are their assets).
FLAT_FRACTION = 0.005
FORECAST_HORIZON_H = 24


@dataclass(frozen=True)
class Panel:
    title: str
    domain: Domain
    measure: str
    aggregate: str  # how a bucket combines its rows (per deployment or instance)
    unit: str
    per_hour: bool = False  # a sum of USD per bucket shown as USD per hour
    slo: bool = False  # draw each customer's p95 SLO on it
    by: str = "deployment_id"


DASHBOARDS: dict[str, tuple[Panel, ...]] = {
    "cost": (Panel("Cost per hour", Domain.COST, "cost_usd", "sum", "USD/h", per_hour=True),),
    "performance": (
        Panel("Time to first token", Domain.PERFORMANCE, "ttft_ms", "avg", "ms"),
        Panel("Inter-token latency", Domain.PERFORMANCE, "itl_ms", "avg", "ms"),
        Panel("p95 latency vs SLO", Domain.PERFORMANCE, "latency_p95_ms", "max", "ms", slo=True),
        Panel("Throughput", Domain.PERFORMANCE, "tokens_per_s", "avg", "tok/s per replica"),
    ),
    "resource": (
        Panel("GPU utilization per instance", Domain.RESOURCE, "gpu_util_pct", "avg", "%", by="instance_id"),
        Panel(
            "GPU memory used per instance",
            Domain.RESOURCE,
            "gpu_mem_used_gib",
            "avg",
            "GiB",
            by="instance_id",
        ),
        Panel("GPU power per instance", Domain.RESOURCE, "power_w", "avg", "W", by="instance_id"),
        Panel("KV-cache use", Domain.PERFORMANCE, "kv_cache_usage", "avg", "fraction"),
    ),
    "application": (
        Panel("Quality score", Domain.QUALITY, "quality_score", "avg", "0-1"),
        Panel("Hallucination score", Domain.QUALITY, "hallucination_score", "avg", "0-1"),
        Panel("Toxicity score", Domain.QUALITY, "toxicity_score", "avg", "0-1"),
    ),
}


def _iso(values: list[datetime]) -> list[str]:
    return [v.isoformat() for v in values]


def _series(frame: pl.DataFrame, panel: Panel, step_s: int) -> list[dict[str, Any]]:
    out = []
    if frame.is_empty():
        return out
    for (key,), part in frame.group_by([panel.by], maintain_order=True):
        part = part.sort("t").drop_nulls(panel.measure)
        values = part[panel.measure].to_numpy().astype(np.float64)
        if panel.per_hour:
            values = values * 3600.0 / step_s
        times = part["t"].to_list()
        flagged = np.zeros(len(values), bool)
        if len(values) and np.ptp(values) > FLAT_FRACTION * max(abs(float(np.median(values))), 1e-9):
            flagged = detect(values, part["t"].to_numpy()).is_anomaly
        out.append(
            {
                "name": str(key),
                "customer": part["customer_id"][0],
                "x": _iso(times),
                "y": [round(float(v), 4) for v in values],
                "anomalies": {
                    "x": [t.isoformat() for t, a in zip(times, flagged, strict=True) if a],
                    "y": [round(float(v), 4) for v, a in zip(values, flagged, strict=True) if a],
                },
            }
        )
    return out


def dashboard(
    metrics: MetricStore,
    state: StateStore,
    name: str,
    customers: list[str],
    deployment_id: str | None,
    range_key: str,
    now: datetime,
) -> dict[str, Any]:
    """Every panel of dashboard ``name`` for these customers (already authorized) over ``range_key``."""
    span, step_s = RANGES[range_key]
    since = now - span
    slos = {c.id: c.slo_p95_latency_ms for c in state.list_customers() if c.id in customers}
    panels = []
    with metrics.session():
        frames: dict[tuple[Domain, str], pl.DataFrame] = {}
        for domain, by in {(p.domain, p.by) for p in DASHBOARDS[name]}:
            aggregates = {
                p.measure: p.aggregate for p in DASHBOARDS[name] if (p.domain, p.by) == (domain, by)
            }
            frames[(domain, by)] = metrics.series(
                domain, aggregates, since, now, step_s, customers, deployment_id, by=by
            )
        for panel in DASHBOARDS[name]:
            panels.append(
                {
                    "title": panel.title,
                    "unit": panel.unit,
                    "measure": panel.measure,
                    "series": _series(frames[(panel.domain, panel.by)], panel, step_s),
                    "slo": slos if panel.slo else None,
                }
            )
        extra: dict[str, Any] = {}
        if name == "cost":
            extra["forecast"] = budget_forecast(metrics, customers, deployment_id, now)
    if name == "cost":
        extra["savings"] = savings(state, customers, deployment_id)
    return {"dashboard": name, "range": range_key, "step_s": step_s, "panels": panels, **extra}


def budget_forecast(
    metrics: MetricStore, customers: list[str], deployment_id: str | None, now: datetime
) -> dict[str, Any]:
    """Total spend per hour of the selection over the last week, and the next day forecast with its
    80% and 95% intervals (the shared forecaster)."""
    frame = metrics.series(
        Domain.COST, {"cost_usd": "sum"}, now - FORECAST_HISTORY, now, 3600, customers, deployment_id
    )
    hourly = frame.group_by("t").agg(pl.col("cost_usd").sum()).sort("t")
    if hourly.height:
        hourly = hourly.head(hourly.height - 1)  # the current hour is still filling
    history = {"x": _iso(hourly["t"].to_list()), "y": [round(v, 4) for v in hourly["cost_usd"].to_list()]}
    try:
        fc = forecast(hourly["cost_usd"].to_numpy(), hourly["t"].to_numpy(), FORECAST_HORIZON_H)
    except ValueError as exc:
        return {"history": history, "error": str(exc)}
    x = [str(t) + "Z" for t in fc.timestamps.astype("datetime64[s]")]
    band = {
        k: [round(float(v), 4) for v in getattr(fc, k)]
        for k in ("point", "lower_80", "upper_80", "lower_95", "upper_95")
    }
    return {
        "history": history,
        "x": x,
        **band,
        "method": fc.method,
        "next_24h_usd": round(float(fc.point.sum()), 2),
    }


def savings(state: StateStore, customers: list[str], deployment_id: str | None) -> dict[str, Any]:
    """Monthly savings over time: estimated when executed changes were decided, realized as measured."""
    executed = [
        r
        for r in state.list_recommendations(status=RecommendationStatus.EXECUTED.value)
        if r.customer_id in customers and deployment_id in (None, r.deployment_id) and r.decided_at
    ]
    executed.sort(key=lambda r: r.decided_at)  # type: ignore[arg-type, return-value]
    outcomes = [
        o
        for o in state.list_outcomes()
        if o.customer_id in customers and deployment_id in (None, o.deployment_id) and not o.rolled_back
    ]
    est = np.cumsum([r.estimate.monthly_savings_usd for r in executed]).round(2).tolist()
    real = np.cumsum([o.realized_monthly_savings_usd for o in outcomes]).round(2).tolist()
    return {
        "estimated": {"x": [r.decided_at.isoformat() for r in executed if r.decided_at], "y": est},
        "realized": {"x": [o.at.isoformat() for o in outcomes], "y": real},
    }
