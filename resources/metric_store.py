"""The metric store: one set of ClickHouse SQL and DDL behind a small interface, two engines.

* :class:`ChdbMetricStore` — embedded chdb on disk (the default). chdb lets one process at a time
  open a data folder, and one engine exist in a process, while Dagster runs several processes; a
  process opens the engine under a lock next to the folder and keeps it between operations only while
  no other process waits for the folder (see :class:`_ChdbEngine`). Group an operation's queries in one
  :meth:`MetricStore.session` block.
* :class:`ClickHouseServerMetricStore` — a ClickHouse server through clickhouse-connect.

Queries take ClickHouse server-side parameters (``{name:Type}``), which both engines bind; table
names only ever come from code.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import polars as pl
import pyarrow as pa

from optiinfra_assets.metrics import SCHEMAS, Domain, DomainSchema, ThrottleReason
from resources.errors import StoreUnavailableError, mask_url
from resources.locks import HandoverLock, lock_path_for

__all__ = [
    "ChdbMetricStore",
    "ClickHouseServerMetricStore",
    "MetricStore",
    "StoreUnavailableError",
    "mask_url",
    "open_metric_store",
]

QUARANTINE_TABLE = "metric_quarantine"
BASELINE_TABLE = "deployment_baselines"
ALL_HOURS = 168  # the hour_of_week of a baseline's whole-week row (0..167 are the hours of the week)
MIGRATIONS_TABLE = "schema_migrations"

# Quantile levels every *_hourly quantiles state holds; read helpers split them into columns.
HOURLY_QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99)
# The measures each hourly rollup keeps (avg + quantiles); the agents read nothing else hourly.
HOURLY_MEASURES: dict[Domain, tuple[str, ...]] = {
    Domain.PERFORMANCE: (
        "requests_per_s",
        "ttft_ms",
        "itl_ms",
        "latency_p95_ms",
        "tokens_per_s",
        "queue_length",
        "kv_cache_usage",
        # v7: the hour's average per-second p99 (the tail the latency detector watches) and preemptions.
        "latency_p99_ms",
        "preemptions_per_s",
    ),
    Domain.RESOURCE: (
        "gpu_util_pct",
        "gpu_mem_used_gib",
        "gpu_mem_total_gib",
        "power_w",
        "sm_clock_mhz",
        *(f"throttle_{group}" for group in ThrottleReason.GROUPS),
    ),
    Domain.QUALITY: ("quality_score", "hallucination_score", "toxicity_score"),
}
# Hourly measures that are no raw column: the share of an hour's samples throttled for each reason group
# (ThrottleReason.GROUPS), from the throttle_reasons bitmask, whose own average would mean nothing.
# name -> (SQL of one sample, the raw column whose NaN means "not reported").
HOURLY_DERIVED: dict[str, tuple[str, str]] = {
    f"throttle_{group}": (
        f"toFloat64(bitAnd(toUInt64(if(isFinite(throttle_reasons), throttle_reasons, 0)), {bits}) != 0)",
        "throttle_reasons",
    )
    for group, (bits, _label) in ThrottleReason.GROUPS.items()
}
# The subset that also keeps quantile states: each one costs more per inserted row than the whole
# validation of it (bench/ingest.py), so only the measures agents read percentiles of.
HOURLY_QUANTILE_MEASURES: dict[Domain, tuple[str, ...]] = {
    Domain.PERFORMANCE: ("ttft_ms", "itl_ms", "latency_p95_ms", "kv_cache_usage"),
    Domain.RESOURCE: ("gpu_util_pct", "gpu_mem_used_gib", "power_w"),
    Domain.QUALITY: ("quality_score", "hallucination_score", "toxicity_score"),
}
HOURLY_TABLES: dict[Domain, str] = {
    Domain.PERFORMANCE: "performance_hourly",
    Domain.RESOURCE: "resource_hourly",
    Domain.QUALITY: "quality_hourly",
}

_TS_TYPE = "DateTime64(3, 'UTC')"
SERIES_AGGREGATES = ("avg", "sum", "max", "min")  # what MetricStore.series may apply


# --------------------------------------------------------------------------------------------- DDL


def _column_type(name: str, dtype: pl.DataType) -> str:
    if name == "ts":
        # Timestamps of one instance are near-regular: DoubleDelta turns them into runs of zeros.
        return f"{_TS_TYPE} CODEC(DoubleDelta, ZSTD(1))"
    if dtype == pl.String():
        # request_id is unique per row: a dictionary would only grow.
        return "String CODEC(ZSTD(1))" if name == "request_id" else "LowCardinality(String)"
    # Not Gorilla: measured in bench/ingest.py it cost 30-50% of insert throughput on 1-second
    # samples and compressed noisy gauges no better than ZSTD alone.
    return "Float64 CODEC(ZSTD(1))"


def _domain_table_ddl(db: str, schema: DomainSchema) -> str:
    columns = ",\n  ".join(f"{n} {_column_type(n, t)}" for n, t in schema.polars_schema.items())
    # Daily partitions for the 1-second domains keep TTL drops cheap; weekly ones for the sparse domains.
    partition = "toYYYYMMDD(ts)" if schema.resolution == "1s" else "toMonday(ts)"
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{schema.table} (\n  {columns}\n)\n"
        "ENGINE = MergeTree\n"
        f"PARTITION BY {partition}\n"
        "ORDER BY (customer_id, deployment_id, instance_id, ts)\n"
        f"TTL toDateTime(ts) + INTERVAL {schema.retention_days} DAY\n"
        "SETTINGS ttl_only_drop_parts = 1"
    )


def _quarantine_ddl(db: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{QUARANTINE_TABLE} (\n"
        f"  received_at {_TS_TYPE},\n"
        "  domain LowCardinality(String),\n"
        "  reason String,\n"
        "  field LowCardinality(String),\n"
        "  value String,\n"
        "  raw String CODEC(ZSTD(3)),\n"
        "  batch_id String\n"
        ")\nENGINE = MergeTree\nPARTITION BY toMonday(received_at)\n"
        "ORDER BY (domain, received_at)\n"
        "TTL toDateTime(received_at) + INTERVAL 90 DAY"
    )


def _baselines_ddl(db: str, table: str, order_by: str) -> str:
    # ReplacingMergeTree(computed_at): a recomputation replaces the older row of the same key.
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{table} (\n"
        "  customer_id LowCardinality(String),\n"
        "  deployment_id LowCardinality(String),\n"
        "  domain LowCardinality(String),\n"
        "  metric LowCardinality(String),\n"
        "  hour_of_week UInt8,\n"
        "  median Float64, mad Float64, p05 Float64, p95 Float64,\n"
        "  n UInt64,\n"
        f"  computed_at {_TS_TYPE}\n"
        ")\nENGINE = ReplacingMergeTree(computed_at)\n"
        f"ORDER BY {order_by}"
    )


_V1_BASELINE_TABLE = "metric_baselines"


def _v1_baselines_ddl(db: str) -> str:
    # Keyed by customer first: a lookup by deployment alone read a range per customer.
    return _baselines_ddl(
        db, _V1_BASELINE_TABLE, "(customer_id, deployment_id, domain, metric, hour_of_week)"
    )


def _baselines_by_deployment(db: str) -> list[str]:
    """v2: the baselines keyed by (whole week or not, deployment, metric, hour): the whole fleet's
    whole-week rows are one range of the key, one deployment's metric a few granules. The v1 rows are
    copied over; every statement can run again after a crash half-way."""
    return [
        _baselines_ddl(
            db,
            BASELINE_TABLE,
            f"(hour_of_week != {ALL_HOURS}, deployment_id, metric, hour_of_week, domain, customer_id)",
        ),
        _v1_baselines_ddl(db),  # again, empty, if a previous attempt dropped it already
        f"INSERT INTO {db}.{BASELINE_TABLE} SELECT * FROM {db}.{_V1_BASELINE_TABLE}",
        f"DROP TABLE IF EXISTS {db}.{_V1_BASELINE_TABLE}",
    ]


def _cost_hourly_ddl(db: str) -> list[str]:
    src = SCHEMAS[Domain.COST].table
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.cost_hourly (\n"
        "  customer_id LowCardinality(String), deployment_id LowCardinality(String),\n"
        "  lifecycle LowCardinality(String), hour DateTime('UTC'),\n"
        "  cost_usd Float64, samples UInt64\n"
        ")\nENGINE = SummingMergeTree\nPARTITION BY toYYYYMM(hour)\n"
        "ORDER BY (customer_id, deployment_id, lifecycle, hour)",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.cost_hourly_mv TO {db}.cost_hourly AS\n"
        "SELECT customer_id, deployment_id, lifecycle, toStartOfHour(ts) AS hour,\n"
        "  sum(cost_usd) AS cost_usd, count() AS samples\n"
        f"FROM {db}.{src} GROUP BY customer_id, deployment_id, lifecycle, hour",
    ]


def _quantiles(combinator: str = "") -> str:
    """``quantilesBFloat16<combinator>(levels)`` (the combinator suffix belongs to the name).

    BFloat16 quantiles keep a histogram of 8-bit-mantissa values: under 1% relative error, and in
    bench/ingest.py about a third cheaper per insert than the reservoir-sampling ``quantiles``, whose
    states dominated the cost of 1-second inserts.
    """
    return f"quantilesBFloat16{combinator}({', '.join(str(q) for q in HOURLY_QUANTILES)})"


def _hourly_view_ddl(db: str, domain: Domain, *, finite_avgs: bool) -> str:
    """The materialized view feeding ``domain``'s hourly table. ``finite_avgs`` (v3): averages skip NaN,
    which a source that may omit measures stores as "not reported"; v1 let one NaN make the hour's
    average NaN. The quantile states skip NaN already."""
    table, src = HOURLY_TABLES[domain], SCHEMAS[domain].table
    avgs, quantiled = HOURLY_MEASURES[domain], HOURLY_QUANTILE_MEASURES[domain]
    q_state = _quantiles("State")
    avg = "avgStateIf({m}, isFinite({m}))" if finite_avgs else "avgState({m})"
    states = [
        f"avgStateIf({HOURLY_DERIVED[m][0]}, isFinite({HOURLY_DERIVED[m][1]})) AS {m}_avg"
        if m in HOURLY_DERIVED
        else f"{avg.format(m=m)} AS {m}_avg"
        for m in avgs
    ]
    states += [f"{q_state}({m}) AS {m}_q" for m in quantiled]
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{table}_mv TO {db}.{table} AS\n"
        "SELECT customer_id, deployment_id, toStartOfHour(ts) AS hour, count() AS samples,\n"
        f"  {', '.join(states)}\n"
        f"FROM {db}.{src} GROUP BY customer_id, deployment_id, hour"
    )


def _aggregating_hourly_ddl(db: str, domain: Domain) -> list[str]:
    table = HOURLY_TABLES[domain]
    avgs, quantiled = HOURLY_MEASURES[domain], HOURLY_QUANTILE_MEASURES[domain]
    q = _quantiles()
    state_cols = [f"{m}_avg AggregateFunction(avg, Float64)" for m in avgs]
    state_cols += [f"{m}_q AggregateFunction({q}, Float64)" for m in quantiled]
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{table} (\n"
        "  customer_id LowCardinality(String), deployment_id LowCardinality(String),\n"
        "  hour DateTime('UTC'), samples SimpleAggregateFunction(sum, UInt64),\n"
        f"  {', '.join(state_cols)}\n"
        ")\nENGINE = AggregatingMergeTree\nPARTITION BY toYYYYMM(hour)\n"
        "ORDER BY (customer_id, deployment_id, hour)",
        _hourly_view_ddl(db, domain, finite_avgs=False),
    ]


def _hourly_views_skip_nan(db: str) -> list[str]:
    """v3: the hourly views with NaN-skipping averages (see :func:`_hourly_view_ddl`). Hours rolled up
    before stay as they were; each statement can run again after a crash half-way."""
    out: list[str] = []
    for domain, table in HOURLY_TABLES.items():
        out += [f"DROP VIEW IF EXISTS {db}.{table}_mv", _hourly_view_ddl(db, domain, finite_avgs=True)]
    return out


def _gpu_clocks_and_throttling(db: str) -> list[str]:
    """v5: the SM clock and throttle reasons of the resource domain, in the raw table and its hourly
    rollup (SM clock averaged, throttle reasons as the share of samples per reason group). Rows stored
    before read as "not reported" (NaN; an empty average state); each statement can run again."""
    raw, hourly = SCHEMAS[Domain.RESOURCE].table, HOURLY_TABLES[Domain.RESOURCE]
    added = ("sm_clock_mhz", "throttle_reasons")
    out = [
        f"ALTER TABLE {db}.{raw} ADD COLUMN IF NOT EXISTS {c} Float64 DEFAULT nan CODEC(ZSTD(1))"
        for c in added
    ]
    out += [
        f"ALTER TABLE {db}.{hourly} ADD COLUMN IF NOT EXISTS {m}_avg AggregateFunction(avg, Float64)"
        for m in ("sm_clock_mhz", *(f"throttle_{group}" for group in ThrottleReason.GROUPS))
    ]
    out += [f"DROP VIEW IF EXISTS {db}.{hourly}_mv", _hourly_view_ddl(db, Domain.RESOURCE, finite_avgs=True)]
    return out


REQUEST_SAMPLES_TABLE = "request_samples"


def _request_samples_ddl(db: str) -> str:
    """v4: the text of sampled requests (prompt, context, response) beside their scores: what a quality
    finding shows as the offending responses. Kept 30 days; texts compress well."""
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.{REQUEST_SAMPLES_TABLE} (\n"
        f"  ts {_TS_TYPE}, customer_id LowCardinality(String), deployment_id LowCardinality(String),\n"
        "  instance_id LowCardinality(String), request_id String,\n"
        "  prompt String CODEC(ZSTD(3)), context String CODEC(ZSTD(3)), response String CODEC(ZSTD(3)),\n"
        "  latency_ms Float64, quality_score Float64, hallucination_score Float64, toxicity_score Float64,\n"
        "  failed_checks LowCardinality(String)\n"
        ")\nENGINE = MergeTree\nPARTITION BY toMonday(ts)\n"
        "ORDER BY (deployment_id, ts, request_id)\n"
        "TTL toDateTime(ts) + INTERVAL 30 DAY"
    )


def _preemptions_and_p99(db: str) -> list[str]:
    """v7: the performance table's preemptions_per_s column, and the hourly rollup's averages of it and of
    latency_p99_ms (averages: a quantile state costs more per inserted row, see HOURLY_QUANTILE_MEASURES).
    Stores created at v1 since then have them already (IF NOT EXISTS); hours rolled up before read NaN."""
    perf, table = SCHEMAS[Domain.PERFORMANCE].table, HOURLY_TABLES[Domain.PERFORMANCE]
    return [
        # DEFAULT nan: rows written before read "not reported" (what averages skip), not zero preemptions.
        f"ALTER TABLE {db}.{perf} ADD COLUMN IF NOT EXISTS preemptions_per_s Float64 DEFAULT nan CODEC(ZSTD(1))",
        *(
            f"ALTER TABLE {db}.{table} ADD COLUMN IF NOT EXISTS {m}_avg AggregateFunction(avg, Float64)"
            for m in ("latency_p99_ms", "preemptions_per_s")
        ),
        f"DROP VIEW IF EXISTS {db}.{table}_mv",
        _hourly_view_ddl(db, Domain.PERFORMANCE, finite_avgs=True),
    ]


GPU_HOURLY_TABLE = "gpu_hourly"
# The per-GPU hourly rollup keeps averages only (no quantile states: they cost more per inserted row than
# the row's validation, see HOURLY_QUANTILE_MEASURES), and the throttle shares as the resource rollup does.
GPU_HOURLY_MEASURES: tuple[str, ...] = (
    "gpu_util_pct",
    "gpu_mem_used_gib",
    "power_w",
    "sm_clock_mhz",
    *(f"throttle_{group}" for group in ThrottleReason.GROUPS),
)
_GPU_HOURLY_KEY = "customer_id, deployment_id, instance_id, gpu_index, hour"


def _gpu_rows(db: str) -> list[str]:
    """v8: the per-GPU rows (issue 9) and their hourly rollup per GPU: mean utilization, memory, power and
    SM clock, and the share of samples throttled per reason group. Each statement can run again."""
    src = SCHEMAS[Domain.GPU].table
    states = [
        f"avgStateIf({HOURLY_DERIVED[m][0]}, isFinite({HOURLY_DERIVED[m][1]})) AS {m}_avg"
        if m in HOURLY_DERIVED
        else f"avgStateIf({m}, isFinite({m})) AS {m}_avg"
        for m in GPU_HOURLY_MEASURES
    ]
    state_cols = ", ".join(f"{m}_avg AggregateFunction(avg, Float64)" for m in GPU_HOURLY_MEASURES)
    return [
        _domain_table_ddl(db, SCHEMAS[Domain.GPU]),
        f"CREATE TABLE IF NOT EXISTS {db}.{GPU_HOURLY_TABLE} (\n"
        "  customer_id LowCardinality(String), deployment_id LowCardinality(String),\n"
        "  instance_id LowCardinality(String), gpu_index LowCardinality(String),\n"
        "  hour DateTime('UTC'), samples SimpleAggregateFunction(sum, UInt64),\n"
        f"  {state_cols}\n"
        ")\nENGINE = AggregatingMergeTree\nPARTITION BY toYYYYMM(hour)\n"
        f"ORDER BY ({_GPU_HOURLY_KEY})",
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{GPU_HOURLY_TABLE}_mv TO {db}.{GPU_HOURLY_TABLE} AS\n"
        "SELECT customer_id, deployment_id, instance_id, gpu_index, toStartOfHour(ts) AS hour,\n"
        f"  count() AS samples, {', '.join(states)}\n"
        f"FROM {db}.{src} GROUP BY {_GPU_HOURLY_KEY}",
    ]


def migrations(db: str) -> list[tuple[int, list[str]]]:
    """Versioned DDL, oldest first. Append a new version; never edit an applied one."""
    v1 = [_domain_table_ddl(db, s) for d, s in SCHEMAS.items() if d != Domain.GPU]  # GPU: v8
    v1 += [
        _quarantine_ddl(db),
        _v1_baselines_ddl(db),
        *_cost_hourly_ddl(db),
    ]
    for domain in HOURLY_TABLES:
        v1 += _aggregating_hourly_ddl(db, domain)
    return [
        (1, v1),
        (2, _baselines_by_deployment(db)),
        (3, _hourly_views_skip_nan(db)),
        (4, [_request_samples_ddl(db)]),
        (5, _gpu_clocks_and_throttling(db)),
        (7, _preemptions_and_p99(db)),
        (8, _gpu_rows(db)),
    ]


# ----------------------------------------------------------------------------------- parameters


# Feed the hourly materialized views in parallel with the table itself: on a 2-core machine this
# takes a 3.6M-row insert into performance_metrics from ~3.2 s to ~1.9 s (bench/ingest.py).
INSERT_SETTINGS: dict[str, int] = {"parallel_view_processing": 1, "max_insert_threads": 2}
INSERT_SETTINGS_SQL = ", ".join(f"{k}={v}" for k, v in INSERT_SETTINGS.items())


def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # naive datetimes are UTC throughout OptiInfra
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _param_text(value: Any) -> str:
    """A parameter in the text form ClickHouse parses for ``{name:Type}`` (what chdb needs)."""
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return _utc_text(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, date | int | float):
        return str(value)
    if isinstance(value, str):
        return value.replace("\\", "\\\\")  # parameters are parsed in the escaped format
    if isinstance(value, list | tuple):
        items = (_quote(v) if isinstance(v, str) else _param_text(v) for v in value)
        return f"[{', '.join(items)}]"
    raise TypeError(f"unsupported query parameter type {type(value).__name__}")


def _server_params(parameters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    # Datetimes go as UTC text so that both engines read the same instant, whatever the tzinfo.
    if not parameters:
        return None
    return {k: _utc_text(v) if isinstance(v, datetime) else v for k, v in parameters.items()}


# ------------------------------------------------------------------------------------- interface


class MetricStore(ABC):
    """ClickHouse metric tables, their rollups and the read helpers the agents use."""

    display_url: str
    database: str = "optiinfra"

    # -- engine primitives
    @abstractmethod
    def insert_arrow(self, table: str, data: pa.Table) -> None:
        """Append ``data`` (columns named as in the table) to ``database.table``."""

    @abstractmethod
    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table: ...

    @abstractmethod
    def command(self, sql: str) -> None: ...

    @abstractmethod
    def session(self) -> AbstractContextManager[None]:
        """Group several operations under one open engine (re-entrant; a no-op for the server)."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the engine or connection now rather than when the process ends."""

    # -- derived
    def query_polars(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pl.DataFrame:
        frame = pl.from_arrow(self.query_arrow(sql, parameters))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def insert_polars(self, table: str, frame: pl.DataFrame) -> None:
        """Append a polars frame (columns named as in the table)."""
        self.insert_arrow(table, frame.to_arrow())

    def migrate(self) -> int:
        """Apply the DDL versions not yet recorded in ``schema_migrations``; return the current version."""
        db = self.database
        with self.session():
            self.command(f"CREATE DATABASE IF NOT EXISTS {db}")
            self.command(
                f"CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE} "
                f"(version UInt32, applied_at {_TS_TYPE}) ENGINE = MergeTree ORDER BY version"
            )
            applied = set(self.query_polars(f"SELECT version FROM {db}.{MIGRATIONS_TABLE}")["version"])
            for version, statements in migrations(db):
                if version in applied:
                    continue
                for statement in statements:
                    self.command(statement)
                # Recorded last: a crash half-way re-runs the version, whose DDL is all IF NOT EXISTS.
                self.command(f"INSERT INTO {db}.{MIGRATIONS_TABLE} VALUES ({version}, now64(3))")
                applied.add(version)
            return max(applied)

    def count(self, table: str) -> int:
        return int(self.query_arrow(f"SELECT count() AS n FROM {self.database}.{table}")["n"][0].as_py())

    def watermarks(
        self, domain: Domain, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, datetime]:
        """instance_id -> latest ts stored. ``since`` limits the scan to rows at or after it (a caller
        that only compares newer rows needs nothing older), which prunes partitions; ``until`` ignores
        rows after it (rows dated in the future must never become a watermark)."""
        clauses, params = [], {}
        if since:
            clauses.append("ts >= {since:DateTime64(3, 'UTC')}")
            params["since"] = since
        if until:
            clauses.append("ts <= {until:DateTime64(3, 'UTC')}")
            params["until"] = until
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        frame = self.query_polars(
            f"SELECT instance_id, max(ts) AS latest FROM {self.database}.{SCHEMAS[domain].table} "
            f"{where} GROUP BY instance_id",
            params or None,
        )
        return dict(zip(frame["instance_id"].to_list(), frame["latest"].to_list(), strict=True))

    def stored_rows(
        self, domain: Domain, instance_ids: list[str], start: datetime, end: datetime
    ) -> pl.DataFrame:
        """The stored rows of these instances with ``start <= ts <= end`` (every column of the domain)."""
        schema = SCHEMAS[domain]
        frame = self.query_polars(
            f"SELECT {', '.join(schema.columns)} FROM {self.database}.{schema.table} "
            "WHERE instance_id IN {ids:Array(String)} "
            "AND ts >= {start:DateTime64(3, 'UTC')} AND ts <= {end:DateTime64(3, 'UTC')}",
            {"ids": instance_ids, "start": start, "end": end},
        )
        return frame.cast(schema.polars_schema) if frame.height else pl.DataFrame(schema=schema.polars_schema)

    # -- rollup readers
    def hourly_cost(self, deployment_id: str | None = None, since: datetime | None = None) -> pl.DataFrame:
        """Cost per customer, deployment, lifecycle and hour (USD spent in that hour)."""
        where, params = _filters(deployment_id, since)
        return self.query_polars(
            "SELECT customer_id, deployment_id, lifecycle, toDateTime64(hour, 3, 'UTC') AS hour, "
            "sum(cost_usd) AS cost_usd, "
            f"sum(samples) AS samples FROM {self.database}.cost_hourly {where} "
            "GROUP BY customer_id, deployment_id, lifecycle, hour ORDER BY deployment_id, hour, lifecycle",
            params,
        )

    def hourly_usage(self, deployment_id: str | None = None, since: datetime | None = None) -> pl.DataFrame:
        """Instance-hours and USD (``usd``) per customer, deployment, instance type, lifecycle and hour, from the raw
        cost rows (the hourly cost rollup has no instance type). A row's cost over its price is the time it
        covers, so instance-hours need no knowledge of the sample step."""
        where, params = _filters(deployment_id, since)
        where = where.replace("hour >= toStartOfHour", "ts >= toStartOfHour")
        table = SCHEMAS[Domain.COST].table
        return self.query_polars(
            "SELECT customer_id, deployment_id, instance_type, lifecycle, "
            "toDateTime64(toStartOfHour(ts), 3, 'UTC') AS hour, "
            "sumIf(c.cost_usd / c.price_usd_per_hour, c.price_usd_per_hour > 0) AS instance_hours, "
            f"sum(c.cost_usd) AS usd FROM {self.database}.{table} AS c {where} "
            "GROUP BY customer_id, deployment_id, instance_type, lifecycle, hour "
            "ORDER BY deployment_id, hour, instance_type, lifecycle",
            params,
        )

    def hourly(
        self, domain: Domain, deployment_id: str | None = None, since: datetime | None = None
    ) -> pl.DataFrame:
        """Per deployment-hour: samples, ``<m>_avg`` of each hourly measure and ``<m>_p50/_p95/_p99`` of
        each quantiled one (HOURLY_QUANTILE_MEASURES)."""
        table, avgs, quantiled = (
            HOURLY_TABLES[domain],
            HOURLY_MEASURES[domain],
            HOURLY_QUANTILE_MEASURES[domain],
        )
        where, params = _filters(deployment_id, since)
        q_merge = _quantiles("Merge")
        merged = [f"avgMerge({m}_avg) AS {m}_avg" for m in avgs] + [
            f"{q_merge}({m}_q) AS {m}_q" for m in quantiled
        ]
        # Grouped by the table's own sort key, in order: each quantile state is merged and finalized
        # before the next group's, where a hash aggregation held all of them at once (2.1 GiB of peak RSS
        # at 1,000 instances against 1.0 GiB in order, in bench/full_pass.py's store).
        frame = self.query_polars(
            "SELECT customer_id, deployment_id, toDateTime64(hour, 3, 'UTC') AS hour_start, "
            f"sum(samples) AS samples, {', '.join(merged)} FROM {self.database}.{table} {where} "
            "GROUP BY customer_id, deployment_id, hour ORDER BY deployment_id, hour "
            "SETTINGS optimize_aggregation_in_order = 1",
            params,
        ).rename({"hour_start": "hour"})
        split = [
            pl.col(f"{m}_q").list.get(i).alias(f"{m}_p{round(level * 100):02d}")
            for m in quantiled
            for i, level in enumerate(HOURLY_QUANTILES)
        ]
        return frame.with_columns(split).drop([f"{m}_q" for m in quantiled])

    def hourly_performance(
        self, deployment_id: str | None = None, since: datetime | None = None
    ) -> pl.DataFrame:
        return self.hourly(Domain.PERFORMANCE, deployment_id, since)

    def hourly_resource(
        self, deployment_id: str | None = None, since: datetime | None = None
    ) -> pl.DataFrame:
        return self.hourly(Domain.RESOURCE, deployment_id, since)

    def hourly_quality(self, deployment_id: str | None = None, since: datetime | None = None) -> pl.DataFrame:
        return self.hourly(Domain.QUALITY, deployment_id, since)

    def hourly_gpus(self, since: datetime | None = None) -> pl.DataFrame:
        """Per GPU and hour (customer, deployment, instance, gpu_index, hour): samples and ``<m>_avg`` of
        GPU_HOURLY_MEASURES; empty where no source reports per-GPU rows."""
        where, params = _filters(None, since)
        merged = ", ".join(f"avgMerge({m}_avg) AS {m}_avg" for m in GPU_HOURLY_MEASURES)
        return self.query_polars(
            "SELECT customer_id, deployment_id, instance_id, gpu_index, "
            f"toDateTime64(hour, 3, 'UTC') AS hour_start, sum(samples) AS samples, {merged} "
            f"FROM {self.database}.{GPU_HOURLY_TABLE} {where} GROUP BY {_GPU_HOURLY_KEY} "
            "ORDER BY deployment_id, instance_id, gpu_index, hour",
            params,
        ).rename({"hour_start": "hour"})

    def series(
        self,
        domain: Domain,
        aggregates: Mapping[str, str],
        since: datetime,
        until: datetime,
        step_s: int,
        customer_ids: list[str],
        deployment_id: str | None = None,
        by: str = "deployment_id",
    ) -> pl.DataFrame:
        """Raw metrics in ``step_s`` buckets, one row per bucket and deployment (or instance: ``by``),
        for the given customers only: ``t``, ``customer_id``, ``by`` and one column per measure, each
        aggregated as ``aggregates[measure]`` (avg, sum, max, min) over the bucket. One set-based query
        (the portal's dashboards)."""
        known = {m.name for m in SCHEMAS[domain].measures}
        bad = [m for m, f in aggregates.items() if m not in known or f not in SERIES_AGGREGATES]
        if bad:
            raise ValueError(f"aggregates: unknown measure or aggregate for {bad} in {domain}")
        if by not in ("deployment_id", "instance_id"):
            raise ValueError(f"by: expected deployment_id or instance_id, got {by!r}")
        columns = ", ".join(f"{f}({m}) AS {m}" for m, f in aggregates.items())
        where = [
            "ts >= {since:DateTime64(3, 'UTC')}",
            "ts < {until:DateTime64(3, 'UTC')}",
            "has({customers:Array(String)}, customer_id)",
        ]
        params: dict[str, Any] = {"since": since, "until": until, "customers": customer_ids, "step": step_s}
        if deployment_id is not None:
            where.append("deployment_id = {deployment_id:String}")
            params["deployment_id"] = deployment_id
        return self.query_polars(
            "SELECT toDateTime64(toStartOfInterval(ts, toIntervalSecond({step:UInt32})), 3, 'UTC') AS t, "
            f"customer_id, {by}, {columns} FROM {self.database}.{SCHEMAS[domain].table} "
            f"WHERE {' AND '.join(where)} GROUP BY t, customer_id, {by} ORDER BY {by}, t",
            params,
        )


def _filters(deployment_id: str | None, since: datetime | None) -> tuple[str, dict[str, Any]]:
    clauses, params = [], {}
    if deployment_id is not None:
        clauses.append("deployment_id = {deployment_id:String}")
        params["deployment_id"] = deployment_id
    if since is not None:
        clauses.append("hour >= toStartOfHour({since:DateTime64(3, 'UTC')})")
        params["since"] = since
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


# ------------------------------------------------------------------------------------------ chdb

# How often an idle engine checks whether another process waits for its folder: the longest that process
# waits once this one has no operation running.
HANDOVER_POLL_S = 0.1


class _ChdbEngine:
    """The process's chdb engine, kept open between operations for as long as no other process asks for
    its folder.

    chdb runs one engine per process, and each start after a stop leaves about five threads and a few
    file descriptors behind (chdb 4.4: measured in tests/test_metric_store.py), so a process that opened
    and closed it per operation ran out of descriptors. Keeping it open is safe only under the folder's
    lock, which other processes need: an idle engine watches for a waiting process and closes then, so a
    process keeps the folder only while nobody else wants it. Threads take turns: a thread holds
    ``turn`` for as long as its outermost session() block lasts.
    """

    def __init__(self) -> None:
        self._exit_hook = False
        self._reset()

    def _reset(self) -> None:
        self.turn = threading.RLock()
        self.path: Path | None = None
        self.session: Any = None
        self.folder: HandoverLock | None = None
        self.depth = 0  # session() blocks open in the thread that holds ``turn``
        self._watcher: threading.Thread | None = None

    @contextmanager
    def use(self, path: Path, lock_path: Path, display_url: str) -> Iterator[Any]:
        with self.turn:
            if self.depth and self.path != path:
                raise RuntimeError(
                    f"a chdb session on {self.path} is already open in this thread; "
                    f"chdb allows one per process, so {path} cannot be opened inside it"
                )
            if self.path != path:
                self.close()
                self._open(path, lock_path, display_url)
            self.depth += 1
            try:
                yield self.session
            finally:
                self.depth -= 1
                if not self.depth and self.folder is not None and self.folder.wanted():
                    self.close()

    def _open(self, path: Path, lock_path: Path, display_url: str) -> None:
        from chdb import session as chdb_session  # heavy import, only where the embedded engine runs

        if not self._exit_hook:
            # Registered after chdb's own exit hook, so that it runs before chdb tears its pools down.
            atexit.register(self.close_at_exit)
            self._exit_hook = True
        folder = HandoverLock(lock_path)
        folder.acquire()
        try:
            session = chdb_session.Session(str(path))
        except Exception as exc:
            folder.release()
            raise StoreUnavailableError("metric store", display_url, exc) from exc
        self.path, self.session, self.folder = path, session, folder
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, name="chdb-handover", daemon=True)
            self._watcher.start()

    def close(self, path: Path | None = None) -> None:
        """Close the engine (only if it is on ``path``, when given) and free its folder."""
        with self.turn:
            if self.session is None or (path is not None and path != self.path) or self.depth:
                return
            session, folder = self.session, self.folder
            self.path, self.session, self.folder = None, None, None
            try:
                session.close()
            finally:
                if folder is not None:
                    folder.release()

    def _watch(self) -> None:
        """Hand the folder over when the engine is idle and another process waits; end with the engine."""
        while True:
            time.sleep(HANDOVER_POLL_S)
            if not self.turn.acquire(blocking=False):
                continue  # an operation is running: it checks for waiters itself when it ends
            try:
                if self.session is None:
                    self._watcher = None
                    return
                if not self.depth and self.folder is not None and self.folder.wanted():
                    self.close()
            finally:
                self.turn.release()

    def forget(self) -> None:
        """In a forked child: drop the parent's engine and lock without touching them. The session object
        is kept referenced, never collected: its finalizer would shut down the engine's copy here."""
        if self.folder is not None:
            self.folder.forget()
        if self.session is not None:
            _INHERITED_SESSIONS.append(self.session)
        self._reset()  # with a fresh turn lock: the thread that held the parent's does not exist here

    def close_at_exit(self) -> None:
        """Close if no thread is in an operation; never wait for one (it may be a stuck daemon thread)."""
        if self.turn.acquire(blocking=False):
            try:
                self.close()
            finally:
                self.turn.release()


_INHERITED_SESSIONS: list[Any] = []
_CHDB_ENGINE = _ChdbEngine()
os.register_at_fork(after_in_child=_CHDB_ENGINE.forget)


class ChdbMetricStore(MetricStore):
    """Embedded chdb on disk at ``path``: the process's one engine, under the folder's handover lock."""

    def __init__(self, path: Path, database: str = "optiinfra") -> None:
        self.path = Path(path).resolve()
        self.database = database
        self.display_url = f"chdb://{self.path}"
        self.lock_path = lock_path_for(self.path)

    def _open(self) -> AbstractContextManager[Any]:
        return _CHDB_ENGINE.use(self.path, self.lock_path, self.display_url)

    def session(self) -> AbstractContextManager[None]:
        @contextmanager
        def block() -> Iterator[None]:
            with self._open():
                yield

        return block()

    def close(self) -> None:
        """Close the engine now if it is idle on this folder (it otherwise stays open until another
        process asks for the folder or this one exits), e.g. before the folder is deleted."""
        _CHDB_ENGINE.close(self.path)

    def command(self, sql: str) -> None:
        with self._open() as s:
            s.query(sql, "CSV")

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        params = {k: _param_text(v) for k, v in parameters.items()} if parameters else None
        with self._open() as s:
            return s.query(sql, "ArrowTable", params=params)

    def insert_polars(self, table: str, frame: pl.DataFrame) -> None:
        # chdb reads Arrow string views: the newest compat level hands polars' buffers over without
        # the copy to large_string (~0.1 s per million rows of text). The server path keeps the default.
        self.insert_arrow(table, frame.to_arrow(compat_level=pl.CompatLevel.newest()))

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        columns = ", ".join(data.column_names)
        # chdb's Python() table function finds ``data`` by name in this frame's locals.
        with self._open() as s:
            s.query(
                f"INSERT INTO {self.database}.{table} ({columns}) SELECT {columns} FROM Python(data) "
                f"SETTINGS {INSERT_SETTINGS_SQL}",
                "CSV",
            )


# ---------------------------------------------------------------------------------------- server


class ClickHouseServerMetricStore(MetricStore):
    """A ClickHouse server, e.g. ``http://user:pass@host:8123/optiinfra`` (https for TLS)."""

    def __init__(self, url: str) -> None:
        import clickhouse_connect  # only where the server engine is configured

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreUnavailableError(
                "metric store", url, "expected http(s)://user:pass@host:port/database"
            )
        self.url = url
        self.display_url = mask_url(url)
        self.database = parts.path.strip("/") or "optiinfra"
        driver_log = logging.getLogger("clickhouse_connect")
        level = driver_log.level
        # The driver logs its own line before raising; our error already says it once, URL masked.
        driver_log.setLevel(logging.CRITICAL)
        try:
            # The database may not exist yet (migrate creates it), so connect to the default one; every
            # statement names its database. get_client queries the server: an unreachable one fails here.
            self._client = clickhouse_connect.get_client(
                host=parts.hostname,
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                secure=parts.scheme == "https",
                connect_timeout=5,
            )
        except Exception as exc:
            raise StoreUnavailableError("metric store", url, exc) from exc
        finally:
            driver_log.setLevel(level)

    def session(self) -> AbstractContextManager[None]:
        return nullcontext()

    def close(self) -> None:
        self._client.close()

    def command(self, sql: str) -> None:
        self._client.command(sql)

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        return self._client.query_arrow(sql, parameters=_server_params(parameters))

    def insert_arrow(self, table: str, data: pa.Table) -> None:
        if data.num_rows:
            self._client.insert_arrow(table, data, database=self.database, settings=INSERT_SETTINGS)


def open_metric_store(url: str, home: Path) -> MetricStore:
    """The configured store: a ClickHouse server for a URL, else chdb under ``home/chdb``."""
    if url.strip():
        return ClickHouseServerMetricStore(url.strip())
    return ChdbMetricStore(Path(home) / "chdb")
