"""Robust baselines per customer, deployment, metric and hour of week, computed in ClickHouse SQL.

A baseline row holds the median, the MAD (median of |x - median|, two passes), p05, p95 and n of a
metric over the lookback window, per hour of the week (UTC, Monday 00:00 = 0), aggregated over the
deployment's instances. A row with ``hour_of_week = ALL_HOURS`` (168) holds the same figures over the
whole week; :func:`load_baselines` hides it and :func:`overall_baseline` reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from optiinfra_assets.metrics import SCHEMAS, Domain
from resources.metric_store import BASELINE_TABLE, MetricStore

BASELINE_METRICS: dict[Domain, tuple[str, ...]] = {
    Domain.PERFORMANCE: (
        "ttft_ms",
        "itl_ms",
        "latency_p95_ms",
        "tokens_per_s",
        "requests_per_s",
        "kv_cache_usage",
    ),
    Domain.RESOURCE: ("gpu_util_pct", "gpu_mem_used_gib", "power_w"),
    Domain.QUALITY: ("quality_score", "hallucination_score", "toxicity_score"),
    Domain.COST: ("cost_usd_per_hour",),
}
ALL_HOURS = 168
BASELINE_COLUMNS = (
    "customer_id",
    "deployment_id",
    "domain",
    "metric",
    "hour_of_week",
    "median",
    "mad",
    "p05",
    "p95",
    "n",
    "computed_at",
)


@dataclass(frozen=True)
class BaselineStat:
    median: float
    mad: float
    p05: float
    p95: float
    n: int


def _source_sql(store: MetricStore, domain: Domain) -> str:
    """(customer_id, deployment_id, ts, <metrics>) rows of the window, one per sample."""
    db = store.database
    if domain == Domain.COST:
        # Cost per deployment-hour: the rollup already sums the minutes (and lifecycles) of each hour.
        return (
            "SELECT customer_id, deployment_id, toDateTime64(hour, 3, 'UTC') AS ts, "
            f"sum(cost_usd) AS cost_usd_per_hour FROM {db}.cost_hourly "
            "WHERE hour >= {since:DateTime64(3, 'UTC')} AND hour < {now:DateTime64(3, 'UTC')} "
            "GROUP BY customer_id, deployment_id, hour"
        )
    metrics = ", ".join(BASELINE_METRICS[domain])
    return (
        f"SELECT customer_id, deployment_id, ts, {metrics} FROM {db}.{SCHEMAS[domain].table} "
        "WHERE ts >= {since:DateTime64(3, 'UTC')} AND ts < {now:DateTime64(3, 'UTC')}"
    )


def _baseline_sql(store: MetricStore, domain: Domain) -> str:
    """Wide result: per (customer, deployment, hour_of_week) the quantiles, MAD and n of each metric.

    Each sample counts twice, once for its hour of week and once for ALL_HOURS, so one pair of scans
    gives both. Quantiles use ``quantiles`` (reservoir of 8192 per group, exact below that size and
    interpolated like numpy's default); the MAD is the median of |x - median| in a second pass.
    """
    metrics = BASELINE_METRICS[domain]
    hour = f"arrayJoin([toUInt8((toDayOfWeek(ts) - 1) * 24 + toHour(ts)), toUInt8({ALL_HOURS})])"
    samples = f"SELECT customer_id, deployment_id, {hour} AS hour_of_week, * EXCEPT (customer_id, deployment_id) FROM ({_source_sql(store, domain)})"
    keys = "customer_id, deployment_id, hour_of_week"
    quantiles = ", ".join(f"quantiles(0.05, 0.5, 0.95)({m}) AS q_{m}" for m in metrics)
    counts = ", ".join(f"count({m}) AS n_{m}" for m in metrics)
    mads = ", ".join(f"median(abs(s.{m} - q.q_{m}[2])) AS mad_{m}" for m in metrics)
    picks = ", ".join(f"any(q.q_{m}) AS q_{m}, any(q.n_{m}) AS n_{m}" for m in metrics)
    return (
        f"WITH samples AS ({samples}), "
        f"stats AS (SELECT {keys}, {quantiles}, {counts} FROM samples GROUP BY {keys}) "
        f"SELECT s.customer_id AS customer_id, s.deployment_id AS deployment_id, "
        f"s.hour_of_week AS hour_of_week, {picks}, {mads} "
        f"FROM samples AS s INNER JOIN stats AS q "
        f"ON s.customer_id = q.customer_id AND s.deployment_id = q.deployment_id "
        f"AND s.hour_of_week = q.hour_of_week GROUP BY s.customer_id, s.deployment_id, s.hour_of_week"
    )


def _to_long(wide: pl.DataFrame, domain: Domain, computed_at: datetime) -> pl.DataFrame:
    parts = [
        wide.select(
            "customer_id",
            "deployment_id",
            pl.lit(str(domain)).alias("domain"),
            pl.lit(m).alias("metric"),
            pl.col("hour_of_week").cast(pl.UInt8),
            pl.col(f"q_{m}").list.get(1).alias("median"),
            pl.col(f"mad_{m}").cast(pl.Float64).alias("mad"),
            pl.col(f"q_{m}").list.get(0).alias("p05"),
            pl.col(f"q_{m}").list.get(2).alias("p95"),
            pl.col(f"n_{m}").cast(pl.UInt64).alias("n"),
            pl.lit(computed_at).cast(pl.Datetime("ms", "UTC")).alias("computed_at"),
        )
        for m in BASELINE_METRICS[domain]
    ]
    return pl.concat(parts).filter(pl.col("n") > 0).sort("deployment_id", "metric", "hour_of_week")


def compute_baselines(
    store: MetricStore, domain: Domain, now: datetime, lookback_days: int = 7
) -> pl.DataFrame:
    """Compute the baselines of ``domain`` over [now - lookback_days, now), store them, return them.

    The returned rows (and what is stored) include the ALL_HOURS row of each deployment and metric.
    """
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    params = {"since": now - timedelta(days=lookback_days), "now": now}
    with store.session():
        wide = store.query_polars(_baseline_sql(store, domain), params)
        if wide.is_empty():
            return pl.DataFrame(schema=_empty_schema())
        rows = _to_long(wide, domain, now)
        store.insert_polars(BASELINE_TABLE, rows)
    return rows


def _empty_schema() -> dict[str, pl.DataType]:
    return {
        "customer_id": pl.String(),
        "deployment_id": pl.String(),
        "domain": pl.String(),
        "metric": pl.String(),
        "hour_of_week": pl.UInt8(),
        "median": pl.Float64(),
        "mad": pl.Float64(),
        "p05": pl.Float64(),
        "p95": pl.Float64(),
        "n": pl.UInt64(),
        "computed_at": pl.Datetime("ms", "UTC"),
    }


def _load(
    store: MetricStore,
    domain: Domain | None,
    deployment_id: str | None,
    metric: str | None,
    all_hours: bool,
) -> pl.DataFrame:
    clauses = ["hour_of_week = {all:UInt8}" if all_hours else "hour_of_week < {all:UInt8}"]
    params: dict[str, object] = {"all": ALL_HOURS}
    for name, value in (("domain", domain), ("deployment_id", deployment_id), ("metric", metric)):
        if value is not None:
            clauses.append(f"{name} = {{{name}:String}}")
            params[name] = str(value)
    # FINAL collapses the ReplacingMergeTree to the latest computation of each key.
    return store.query_polars(
        f"SELECT {', '.join(BASELINE_COLUMNS)} FROM {store.database}.{BASELINE_TABLE} FINAL "
        f"WHERE {' AND '.join(clauses)} ORDER BY customer_id, deployment_id, domain, metric, hour_of_week",
        params,
    )


def load_baselines(
    store: MetricStore, domain: Domain | None = None, deployment_id: str | None = None
) -> pl.DataFrame:
    """The latest baseline per (customer, deployment, domain, metric, hour_of_week 0..167)."""
    return _load(store, domain, deployment_id, None, all_hours=False)


def overall_baseline(store: MetricStore, deployment_id: str, metric: str) -> BaselineStat | None:
    """The latest whole-week baseline of a deployment's metric, or None if never computed."""
    frame = _load(store, None, deployment_id, metric, all_hours=True)
    if frame.is_empty():
        return None
    row = frame.row(0, named=True)
    return BaselineStat(median=row["median"], mad=row["mad"], p05=row["p05"], p95=row["p95"], n=int(row["n"]))


def is_anomalous(value: float, stat: BaselineStat, z: float = 3.5) -> bool:
    """Robust z-score test: |0.6745 * (x - median) / MAD| > z.

    A MAD of zero (over half the samples equal) would make every other value infinitely far: the
    p05-p95 spread then stands in for the scale (as a normal's 3.29 sigma), and with no spread at all
    only a value different from the median is anomalous. A non-finite value always is.
    """
    if not math.isfinite(value):
        return True
    if stat.n == 0:
        return False
    deviation = value - stat.median
    if stat.mad > 0:
        return abs(0.6745 * deviation / stat.mad) > z
    if stat.p95 > stat.p05:
        return abs(deviation / ((stat.p95 - stat.p05) / 3.29)) > z
    return not math.isclose(value, stat.median, rel_tol=1e-9, abs_tol=1e-12)
