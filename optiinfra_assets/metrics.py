"""The four raw metric domains: their columns, types and the limits a valid value obeys.

Every source (sandbox, Prometheus scraper, NVML) produces frames in these schemas; the ingestion path
(optiinfra_assets.ingest) validates them against these limits and the metric store (resources.metric_store)
creates its ClickHouse tables from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import polars as pl


class Domain(StrEnum):
    COST = "cost"
    PERFORMANCE = "performance"
    RESOURCE = "resource"
    QUALITY = "quality"


TS = pl.Datetime("ms", "UTC")
KEY_COLUMNS: dict[str, pl.DataType] = {
    "ts": TS,
    "customer_id": pl.String(),
    "deployment_id": pl.String(),
    "instance_id": pl.String(),
}


@dataclass(frozen=True)
class Measure:
    name: str
    unit: str
    lo: float = 0.0  # smallest valid value (inclusive)
    hi: float = float("inf")  # largest valid value (inclusive)


@dataclass(frozen=True)
class DomainSchema:
    domain: Domain
    table: str
    resolution: str  # how often a row is emitted per instance
    retention_days: int
    labels: dict[str, pl.DataType]  # string columns besides the keys
    measures: tuple[Measure, ...]

    @property
    def polars_schema(self) -> dict[str, pl.DataType]:
        return {**KEY_COLUMNS, **self.labels, **{m.name: pl.Float64() for m in self.measures}}

    @property
    def columns(self) -> list[str]:
        return list(self.polars_schema)


SCHEMAS: dict[Domain, DomainSchema] = {
    Domain.COST: DomainSchema(
        Domain.COST,
        table="cost_metrics",
        resolution="1m",
        retention_days=90,
        labels={"instance_type": pl.String(), "lifecycle": pl.String()},
        measures=(Measure("price_usd_per_hour", "USD/h"), Measure("cost_usd", "USD")),
    ),
    Domain.PERFORMANCE: DomainSchema(
        Domain.PERFORMANCE,
        table="performance_metrics",
        resolution="1s",
        retention_days=30,
        labels={},
        measures=(
            Measure("requests_per_s", "req/s"),
            Measure("ttft_ms", "ms"),
            Measure("itl_ms", "ms"),
            Measure("latency_p50_ms", "ms"),
            Measure("latency_p95_ms", "ms"),
            Measure("latency_p99_ms", "ms"),
            Measure("tokens_per_s", "tok/s"),
            Measure("queue_length", "requests"),
            Measure("kv_cache_usage", "fraction", 0.0, 1.0),
        ),
    ),
    Domain.RESOURCE: DomainSchema(
        Domain.RESOURCE,
        table="resource_metrics",
        resolution="1s",
        retention_days=30,
        labels={},
        measures=(
            Measure("gpu_util_pct", "%", 0.0, 100.0),
            Measure("gpu_mem_used_gib", "GiB"),
            Measure("gpu_mem_total_gib", "GiB"),
            Measure("power_w", "W"),
        ),
    ),
    Domain.QUALITY: DomainSchema(
        Domain.QUALITY,
        table="quality_metrics",
        resolution="per sampled request",
        retention_days=90,
        labels={"request_id": pl.String()},
        measures=(
            Measure("quality_score", "0-1", 0.0, 1.0),
            Measure("hallucination_score", "0-1", 0.0, 1.0),
            Measure("toxicity_score", "0-1", 0.0, 1.0),
        ),
    ),
}
