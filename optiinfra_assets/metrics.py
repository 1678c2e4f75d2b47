"""The raw metric domains: their columns, types and the limits a valid value obeys.

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
    GPU = "gpu"  # per GPU (MIG device) of an instance, beside the per-instance RESOURCE rows


TS = pl.Datetime("ms", "UTC")
KEY_COLUMNS: dict[str, pl.DataType] = {
    "ts": TS,
    "customer_id": pl.String(),
    "deployment_id": pl.String(),
    "instance_id": pl.String(),
}


@dataclass(frozen=True)
class Measure:
    """A measured column. ``hi`` is a physical bound, not a plausibility guess: a value beyond it is a
    unit error or a broken exporter (``ttft_ms=1e300``), and one such row would own every max and avg."""

    name: str
    unit: str
    lo: float = 0.0  # smallest valid value (inclusive)
    hi: float = float("inf")  # largest valid value (inclusive)
    at_most: str | None = None  # another measure of the row this one cannot exceed (used <= total)


# Physical bounds, per instance (the largest instances hold 8 GPUs).
HOUR_MS = 3_600_000.0  # a latency beyond an hour is a timeout or a unit error, not a latency
MAX_PRICE_USD_PER_HOUR = 1_000.0  # the dearest GPU instance lists at about 100 USD/h
MAX_INSTANCE_GPU_MEMORY_GIB = 2_048.0  # 8 GPUs of at most 192 GiB hold 1,536 GiB
MAX_INSTANCE_POWER_W = 20_000.0  # 8 GPUs of at most 1,200 W, with headroom
MAX_REQUESTS_PER_S = 1_000_000.0
MAX_TOKENS_PER_S = 100_000_000.0
MAX_QUEUE_LENGTH = 10_000_000.0
# No GPU's SM clock reaches 3.5 GHz (H100 SXM boosts to 1,980 MHz, L40S to 2,520 MHz).
MAX_SM_CLOCK_MHZ = 5_000.0
# Per GPU: the largest GPU holds 192 GiB (B200); the most a board draws is ~1,200 W.
MAX_GPU_MEMORY_GIB = 256.0
MAX_GPU_POWER_W = 2_000.0
# NVML's clocks-event (throttle) reasons are a bitmask; every reason NVML defines fits in 16 bits.
MAX_THROTTLE_REASONS = float(0xFFFF)


class ThrottleReason:
    """NVML's clocks-event reason bits (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*), and the
    groups a finding names: the bits that mean a GPU ran slower than asked for a physical limit. GPU idle
    (0x1), application clocks (0x2) and sync boost (0x10) are settings or idleness, not throttling."""

    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL = 0x20
    HW_THERMAL = 0x40
    HW_POWER_BRAKE = 0x80
    # group -> (bits, what a finding calls it)
    GROUPS: dict[str, tuple[int, str]] = {
        "power": (SW_POWER_CAP | HW_POWER_BRAKE, "power cap"),
        "thermal": (SW_THERMAL | HW_THERMAL, "thermal"),
        "hw_slowdown": (HW_SLOWDOWN, "hardware slowdown"),
    }


@dataclass(frozen=True)
class DomainSchema:
    domain: Domain
    table: str
    resolution: str  # how often a row is emitted per instance
    retention_days: int
    labels: dict[str, pl.DataType]  # string columns besides the keys
    measures: tuple[Measure, ...]
    # Labels that split an instance's rows into several series (one per GPU): ts is unique and ordered per
    # (instance, these labels), not per instance.
    series: tuple[str, ...] = ()
    # True: a source may have no such rows at all (Prometheus has no per-GPU figures); none is not stale.
    optional: bool = False

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
        measures=(
            Measure("price_usd_per_hour", "USD/h", hi=MAX_PRICE_USD_PER_HOUR),
            # A row is one minute of one instance; bounded by an hour of the dearest, so a coarser source fits.
            Measure("cost_usd", "USD", hi=MAX_PRICE_USD_PER_HOUR),
        ),
    ),
    Domain.PERFORMANCE: DomainSchema(
        Domain.PERFORMANCE,
        table="performance_metrics",
        resolution="1s",
        retention_days=30,
        labels={},
        measures=(
            Measure("requests_per_s", "req/s", hi=MAX_REQUESTS_PER_S),
            Measure("ttft_ms", "ms", hi=HOUR_MS),
            Measure("itl_ms", "ms", hi=HOUR_MS),
            Measure("latency_p50_ms", "ms", hi=HOUR_MS),
            Measure("latency_p95_ms", "ms", hi=HOUR_MS),
            Measure("latency_p99_ms", "ms", hi=HOUR_MS),
            Measure("tokens_per_s", "tok/s", hi=MAX_TOKENS_PER_S),
            Measure("queue_length", "requests", hi=MAX_QUEUE_LENGTH),
            Measure("kv_cache_usage", "fraction", 0.0, 1.0),
            # Running sequences evicted from the KV cache (vLLM's num_preemptions counter over the
            # interval, per second); a sequence can be preempted again, so only the request bound holds.
            Measure("preemptions_per_s", "preemptions/s", hi=MAX_REQUESTS_PER_S),
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
            Measure("gpu_mem_used_gib", "GiB", hi=MAX_INSTANCE_GPU_MEMORY_GIB, at_most="gpu_mem_total_gib"),
            Measure("gpu_mem_total_gib", "GiB", hi=MAX_INSTANCE_GPU_MEMORY_GIB),
            Measure("power_w", "W", hi=MAX_INSTANCE_POWER_W),
            # The slowest GPU's SM clock: one throttled GPU holds back a tensor-parallel instance.
            Measure("sm_clock_mhz", "MHz", hi=MAX_SM_CLOCK_MHZ),
            # The instance's GPUs' throttle reasons OR-ed (ThrottleReason bits), as a float like every measure.
            Measure("throttle_reasons", "bitmask", hi=MAX_THROTTLE_REASONS),
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
    # Issue 9: one row per GPU (a MIG device is its own row), so that one idle, throttled or failing GPU of
    # a multi-GPU instance shows; every 10 s, which keeps the sandbox's volume under its per-instance rows.
    Domain.GPU: DomainSchema(
        Domain.GPU,
        table="gpu_metrics",
        resolution="10s",
        retention_days=30,
        # NVML's index of the physical GPU ("3"; a MIG device "3/1": GPU 3's MIG device 1) and its UUID
        # (GPU-... or MIG-...), which survives a reboot that renumbers the GPUs.
        labels={"gpu_index": pl.String(), "gpu_uuid": pl.String()},
        measures=(
            Measure("gpu_util_pct", "%", 0.0, 100.0),
            Measure("gpu_mem_used_gib", "GiB", hi=MAX_GPU_MEMORY_GIB, at_most="gpu_mem_total_gib"),
            Measure("gpu_mem_total_gib", "GiB", hi=MAX_GPU_MEMORY_GIB),
            Measure("power_w", "W", hi=MAX_GPU_POWER_W),
            Measure("sm_clock_mhz", "MHz", hi=MAX_SM_CLOCK_MHZ),
            Measure("throttle_reasons", "bitmask", hi=MAX_THROTTLE_REASONS),  # this GPU's own bits
        ),
        series=("gpu_index",),
        optional=True,
    ),
}
