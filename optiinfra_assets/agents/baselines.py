"""Robust baselines per customer, deployment, metric and hour of week, computed in ClickHouse SQL.

A baseline row holds the median, the MAD (median of |x - median|), p05, p95 and n of a metric over the
lookback window, per hour of the week (UTC, Monday 00:00 = 0), aggregated over the deployment's
instances. A row with ``hour_of_week = ALL_HOURS`` (168) holds the same figures over the whole week;
:func:`load_baselines` hides it, :func:`overall_baseline` reads one and :func:`load_overall_baselines`
reads them all.

How it stays cheap (bench/full_pass.py): one read of the samples per domain and shard of deployments
(consecutive in the table's sort order, at most SHARD_ROWS samples, which bounds memory), no join. Each
hour group's values are collected and sorted once; the quantiles are read off the sorted array by index
(linear interpolation, as numpy's default) and so is the MAD, since the k values nearest the median are a
contiguous run of the sorted array. Hour-of-week figures are exact, as are whole-week figures up to
WEEK_SAMPLE values; above that, the whole week's come from evenly spaced order statistics of each hour
(one in ``every``), a deterministic equal-probability sample; its n is always the full count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.snapshot import BaselineStat
from resources.metric_store import ALL_HOURS, BASELINE_TABLE, HOURLY_TABLES, MetricStore

__all__ = [
    "ALL_HOURS",
    "BASELINE_METRICS",
    "BaselineStat",
    "compute_baselines",
    "is_anomalous",
    "load_baselines",
    "load_overall_baselines",
    "overall_baseline",
]

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
# Whole-week figures of a deployment with more values than this come from a sample of about this size
# (exact below it): at 1,000 instances, a median relative error of 0.03-0.2% against the exact figures,
# 3-5x smaller than the 8,192-value reservoir the baselines used before (bench/full_pass.py).
WEEK_SAMPLE = 4096
# Rows one query aggregates at most (when the rollups can tell): bounds the memory of a domain's
# baselines whatever the fleet size, at ~50 bytes per collected value.
SHARD_ROWS = 2_000_000
QUANTILES = {"p05": 0.05, "median": 0.5, "p95": 0.95}
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
_WINDOW = "{since:DateTime64(3, 'UTC')}", "{now:DateTime64(3, 'UTC')}"


# ------------------------------------------------------------------------------------------- the SQL


def _source_sql(store: MetricStore, domain: Domain) -> str:
    """(customer_id, deployment_id, ts, <metrics>) rows of the window and shard, one per sample."""
    db, (since, now) = store.database, _WINDOW
    shard = "deployment_id IN {deployments:Array(String)}"
    if domain == Domain.COST:
        # Cost per deployment-hour: the rollup already sums the minutes (and lifecycles) of each hour.
        return (
            "SELECT customer_id, deployment_id, toDateTime64(hour, 3, 'UTC') AS ts, "
            "sum(cost_usd) AS cost_usd_per_hour "
            f"FROM {db}.cost_hourly WHERE hour >= {since} AND hour < {now} AND {shard} "
            "GROUP BY customer_id, deployment_id, hour"
        )
    metrics = ", ".join(BASELINE_METRICS[domain])
    return (
        f"SELECT customer_id, deployment_id, ts, {metrics} "
        f"FROM {db}.{SCHEMAS[domain].table} WHERE ts >= {since} AND ts < {now} AND {shard}"
    )


def _quantile_sql(sorted_array: str, level: float) -> str:
    """The ``level`` quantile of a sorted, non-empty array: linear interpolation between the order
    statistics around level * (n - 1), as numpy's default."""
    s = sorted_array
    pos = f"({level} * (length({s}) - 1))"
    lo = f"toUInt32(floor({pos}))"
    return f"({s}[{lo} + 1] + ({pos} - {lo}) * ({s}[least({lo} + 2, length({s}))] - {s}[{lo} + 1]))"


def _mad_sql(sorted_array: str, median: str, name: str) -> str:
    """Median of |x - median| over a sorted, non-empty array, without sorting the deviations.

    The k + 1 values nearest the median are a contiguous run s[i..i+k], and a run's largest deviation is
    at one of its ends: the k-th smallest deviation is the least over i of max(m - s[i], s[i+k] - m).
    numpy's median of n deviations is that for k = (n - 1) // 2 when n is odd; when n is even it is
    averaged with the next smallest deviation: the nearer of the two values just outside the best run,
    or the k-th itself when ties make that run one of several (then a neighbour is nearer than it).
    ``name`` keeps the inline aliases of different arrays apart.
    """
    s, m, n = sorted_array, median, f"length({sorted_array})"
    k = f"intDiv({n} - 1, 2)"
    runs = f"arrayMap((a, b) -> greatest({m} - a, b - {m}), arraySlice({s}, 1, {n} - {k}), arraySlice({s}, {k} + 1))"
    kth = f"(arrayMin({runs} AS runs_{name}) AS kth_{name})"
    start = f"indexOf(runs_{name}, kth_{name})"
    below = f"if({start} > 1, {m} - {s}[{start} - 1], inf)"
    above = f"if({start} + {k} + 1 <= {n}, {s}[{start} + {k} + 1] - {m}, inf)"
    next_ = f"greatest(kth_{name}, least({below}, {above}))"
    return f"(({kth} + if({n} % 2 = 1, kth_{name}, {next_})) / 2)"


def _baseline_sql(store: MetricStore, domain: Domain) -> str:
    """Per (customer, deployment, hour_of_week) of one shard, ALL_HOURS included: n and each metric's
    quantiles and MAD, in one read of the samples.

    Per hour group: its values sorted, their quantiles and MAD, and its share of the week's sample (all
    its values for a deployment at or below WEEK_SAMPLE values). Per deployment: the hours' figures
    gathered into arrays, the week's sample merged and sorted, its quantiles and MAD. ARRAY JOIN unfolds
    the hours and the week into rows again.
    """
    names = BASELINE_METRICS[domain]
    hour = "toUInt8((intDiv(toUnixTimestamp(ts), 3600) + 72) % 168)"  # the epoch began on a Thursday
    every = "transform(deployment_id, {deployments:Array(String)}, {every:Array(UInt64)}, toUInt64(1))"
    stats = [f"{stat}_{m}" for m in names for stat in (*QUANTILES, "mad")]
    sorted_hours = (
        f"SELECT customer_id, deployment_id, hour_of_week, count() AS n, {every} AS every, "
        + ", ".join(f"arraySort(groupArray({m})) AS s_{m}" for m in names)
        + f" FROM (SELECT *, {hour} AS hour_of_week FROM ({_source_sql(store, domain)}))"
        " GROUP BY customer_id, deployment_id, hour_of_week"
    )
    # The week's sample: every ``every``-th of each hour's sorted values, from a position that moves
    # with the hour of week. Each value is picked with the same probability, and the picks of an hour are
    # evenly spaced order statistics of it, so the sample follows the week's distribution closely. (The
    # lambda captures columns only: a captured expression would be evaluated once per element.)
    picks = {
        f"w_{m}": f"arrayFilter((v, i) -> (i + hour_of_week) % every = 0, s_{m}, arrayEnumerate(s_{m}))"
        for m in names
    }
    hour_stats = _stats_sql(
        sorted_hours, ["customer_id", "deployment_id", "hour_of_week", "n", "every"], names, picks
    )
    gathered = ["hours", "hour_n", "week_n", *(f"hour_{s}" for s in stats)]
    per_deployment = (
        "SELECT customer_id, deployment_id, groupArray(hour_of_week) AS hours, groupArray(n) AS hour_n, "
        "sum(n) AS week_n, "
        + ", ".join([f"groupArray({s}) AS hour_{s}" for s in stats])
        + ", "
        + ", ".join(f"arraySort(arrayFlatten(groupArray(w_{m}))) AS s_{m}" for m in names)
        + f" FROM ({hour_stats}) GROUP BY customer_id, deployment_id"
    )
    week_stats = _stats_sql(per_deployment, ["customer_id", "deployment_id", *gathered], names)
    unfold = ", ".join(
        [f"arrayConcat(hours, [toUInt8({ALL_HOURS})]) AS hour_of_week", "arrayConcat(hour_n, [week_n]) AS n"]
        + [f"arrayConcat(hour_{s}, [{s}]) AS {s}" for s in stats]
    )
    return (
        f"SELECT customer_id, deployment_id, hour_of_week, n, {', '.join(stats)} "
        f"FROM ({week_stats}) ARRAY JOIN {unfold}"
    )


def _stats_sql(
    rows: str, carried: list[str], names: tuple[str, ...], extra: Mapping[str, str] | None = None
) -> str:
    """``carried`` columns, each metric's quantiles and MAD, and ``extra`` columns (alias -> expression),
    over ``rows``, which hold a sorted, non-empty array ``s_<metric>`` per metric.

    Two layers: the MAD reads the median as a column of the layer below, since a lambda that captured
    the median's expression would evaluate it once per array element.
    """
    quantiles = [
        f"{_quantile_sql(f's_{m}', level)} AS {stat}_{m}" for m in names for stat, level in QUANTILES.items()
    ]
    extra = extra or {}
    inner = [*carried, *(f"s_{m}" for m in names), *quantiles, *(f"{e} AS {a}" for a, e in extra.items())]
    outer = [
        *carried,
        *(f"{stat}_{m}" for m in names for stat in QUANTILES),
        *(f"{_mad_sql(f's_{m}', f'median_{m}', m)} AS mad_{m}" for m in names),
        *extra,
    ]
    return f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM ({rows}))"


def _sizes_sql(store: MetricStore, domain: Domain) -> str:
    """Samples per deployment in the window: from the hourly rollup (no scan of the raw table), or for
    cost from its source, which is itself the hourly rollup."""
    db, (since, now) = store.database, _WINDOW
    if domain == Domain.COST:
        return (
            f"SELECT customer_id, deployment_id, uniqExact(hour) AS samples FROM {db}.cost_hourly "
            f"WHERE hour >= {since} AND hour < {now} GROUP BY customer_id, deployment_id"
        )
    return (
        f"SELECT customer_id, deployment_id, sum(samples) AS samples FROM {db}.{HOURLY_TABLES[domain]} "
        f"WHERE hour >= toStartOfHour({since}) AND hour < {now} GROUP BY customer_id, deployment_id"
    )


# ------------------------------------------------------------------------------------------ computing


@dataclass(frozen=True)
class _Shard:
    deployments: list[str]
    every: list[int]  # per deployment: one sample in ``every`` counts for the whole week


def _shards(sizes: pl.DataFrame) -> list[_Shard]:
    """Consecutive deployments (in the table's sort order, so that each shard reads a few ranges of the
    primary key) of at most SHARD_ROWS samples together, or one deployment alone if bigger."""
    shards: list[_Shard] = []
    current, rows = _Shard([], []), 0
    for did, samples in sizes.sort("customer_id", "deployment_id").select("deployment_id", "samples").rows():
        if current.deployments and rows + samples > SHARD_ROWS:
            shards.append(current)
            current, rows = _Shard([], []), 0
        current.deployments.append(did)
        current.every.append(max(1, math.ceil(samples / WEEK_SAMPLE)))
        rows += samples
    if current.deployments:
        shards.append(current)
    return shards


def _to_long(wide: pl.DataFrame, domain: Domain, computed_at: datetime) -> pl.DataFrame:
    """One row per (deployment, metric, hour of week)."""
    parts = [
        wide.select(
            "customer_id",
            "deployment_id",
            pl.lit(str(domain)).alias("domain"),
            pl.lit(m).alias("metric"),
            pl.col("hour_of_week").cast(pl.UInt8),
            *(pl.col(f"{stat}_{m}").cast(pl.Float64).alias(stat) for stat in ("median", "mad", "p05", "p95")),
            pl.col("n").cast(pl.UInt64),
            pl.lit(computed_at).cast(pl.Datetime("ms", "UTC")).alias("computed_at"),
        )
        for m in BASELINE_METRICS[domain]
    ]
    return pl.concat(parts).select(BASELINE_COLUMNS).sort("deployment_id", "metric", "hour_of_week")


def compute_baselines(
    store: MetricStore, domain: Domain, now: datetime, lookback_days: int = 7
) -> pl.DataFrame:
    """Compute the baselines of ``domain`` over [now - lookback_days, now), store them, return them.

    The returned rows (and what is stored) include the ALL_HOURS row of each deployment and metric.
    """
    if domain not in BASELINE_METRICS:  # the per-GPU rows (Domain.GPU): the detectors read their rollup
        return pl.DataFrame(schema=_empty_schema())
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    window = {"since": now - timedelta(days=lookback_days), "now": now}
    sql = _baseline_sql(store, domain)
    with store.session():
        sizes = store.query_polars(_sizes_sql(store, domain), window)
        parts = [
            store.query_polars(sql, window | {"deployments": shard.deployments, "every": shard.every})
            for shard in _shards(sizes)
        ]
        parts = [p for p in parts if not p.is_empty()]
        if not parts:
            return pl.DataFrame(schema=_empty_schema())
        rows = _to_long(pl.concat(parts), domain, now)
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


# -------------------------------------------------------------------------------------------- reading


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


def _stat(row: dict) -> BaselineStat:
    return BaselineStat(median=row["median"], mad=row["mad"], p05=row["p05"], p95=row["p95"], n=int(row["n"]))


def overall_baseline(store: MetricStore, deployment_id: str, metric: str) -> BaselineStat | None:
    """The latest whole-week baseline of a deployment's metric, or None if never computed."""
    frame = _load(store, None, deployment_id, metric, all_hours=True)
    return None if frame.is_empty() else _stat(frame.row(0, named=True))


def load_overall_baselines(store: MetricStore) -> dict[str, dict[str, BaselineStat]]:
    """deployment_id -> metric -> its latest whole-week baseline, for the whole fleet in one query."""
    out: dict[str, dict[str, BaselineStat]] = {}
    for row in _load(store, None, None, None, all_hours=True).iter_rows(named=True):
        out.setdefault(row["deployment_id"], {})[row["metric"]] = _stat(row)
    return out


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
