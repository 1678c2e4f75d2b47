"""Ingestion speed and memory: one hour of 1-second metrics for 1,000 GPU instances, per domain.

Each domain's 3.6 million rows go through ``ingest()`` (validation included) into a fresh chdb store,
then the same Arrow table goes straight into an identical table (same migrations, in a second database
of the same chdb folder) with a raw ``INSERT ... SELECT * FROM Python(t)``: the ratio is what validation
and the quarantine path cost on top of the engine.

Peak RSS of the ingestion path: before each ``ingest()`` the kernel's high-water mark is reset
(``echo 5 > /proc/self/clear_refs``) and ``VmHWM`` is read from ``/proc/self/status`` right after, so the
figure is the process's peak resident memory while ingesting (the input frame it holds included), not
the peak of building frames or of the raw insert. Where the reset is not allowed, it falls back to
``resource.getrusage`` (the whole process's peak, an upper bound).

Targets (2-core machine): rows/s >= 1,000,000; ratio to raw >= 0.5; peak RSS <= 2048 MiB.
Run: ``.venv/bin/python bench/ingest.py``
"""

from __future__ import annotations

import gc
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import SCHEMAS, TS, Domain
from resources.metric_store import INSERT_SETTINGS_SQL, ChdbMetricStore

INSTANCES = 1_000
SECONDS = 3_600
INSTANCES_PER_DEPLOYMENT = 10
DEPLOYMENTS_PER_CUSTOMER = 5
# The last full hour: older rows than the tables' TTL would be dropped as they are written.
START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def fleet() -> dict[str, tuple[str, str]]:
    out = {}
    for i in range(INSTANCES):
        dep = i // INSTANCES_PER_DEPLOYMENT
        out[f"i-{i:05d}"] = (f"c-{dep // DEPLOYMENTS_PER_CUSTOMER:03d}", f"d-{dep:04d}")
    return out


def key_columns(known: dict[str, tuple[str, str]]) -> dict[str, pl.Series]:
    """ts, customer, deployment, instance in arrival order: every instance once per second."""
    ids = list(known)
    idx = pl.Series(np.tile(np.arange(INSTANCES, dtype=np.uint32), SECONDS))
    start_ms = int(START.timestamp() * 1000)
    ts_ms = start_ms + np.repeat(np.arange(SECONDS, dtype=np.int64) * 1000, INSTANCES)
    return {
        "ts": pl.Series("ts", ts_ms).cast(TS),
        # Gathering from the small list of names is far faster than building millions of str objects.
        "customer_id": pl.Series("customer_id", [known[i][0] for i in ids]).gather(idx),
        "deployment_id": pl.Series("deployment_id", [known[i][1] for i in ids]).gather(idx),
        "instance_id": pl.Series("instance_id", ids).gather(idx),
    }


def performance_frame(rng: np.random.Generator, keys: dict[str, pl.Series]) -> pl.DataFrame:
    n = INSTANCES * SECONDS
    rps = rng.gamma(4.0, 1.5, n)
    ttft = rng.lognormal(np.log(180.0), 0.35, n)
    itl = rng.lognormal(np.log(25.0), 0.2, n)
    p50 = ttft + itl * rng.uniform(100, 300, n)
    measures = {
        "requests_per_s": rps,
        "ttft_ms": ttft,
        "itl_ms": itl,
        "latency_p50_ms": p50,
        "latency_p95_ms": p50 * rng.uniform(1.4, 2.0, n),
        "latency_p99_ms": p50 * rng.uniform(2.0, 3.0, n),
        "tokens_per_s": rps * rng.uniform(150, 400, n),
        "queue_length": rng.poisson(2.0, n).astype(np.float64),
        "kv_cache_usage": rng.beta(5.0, 3.0, n),
        "preemptions_per_s": rng.poisson(0.05, n).astype(np.float64),
    }
    return pl.DataFrame({**keys, **measures}).select(SCHEMAS[Domain.PERFORMANCE].columns)


def resource_frame(rng: np.random.Generator, keys: dict[str, pl.Series]) -> pl.DataFrame:
    n = INSTANCES * SECONDS
    util = np.clip(rng.normal(65.0, 15.0, n), 0.0, 100.0)
    measures = {
        "gpu_util_pct": util,
        "gpu_mem_used_gib": np.clip(rng.normal(62.0, 6.0, n), 0.0, 80.0),
        "gpu_mem_total_gib": np.full(n, 80.0),
        "power_w": 120.0 + util * rng.uniform(4.5, 5.5, n),
        "sm_clock_mhz": np.full(n, 1980.0),
        "throttle_reasons": np.zeros(n),
    }
    return pl.DataFrame({**keys, **measures}).select(SCHEMAS[Domain.RESOURCE].columns)


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib(reset_ok: bool) -> float:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def raw_insert(store: ChdbMetricStore, table: str, frame: pl.DataFrame) -> float:
    t = frame.to_arrow()  # noqa: F841 - chdb's Python(t) reads it by name from this frame
    with store._open() as session:
        started = time.perf_counter()
        # The engine settings the store uses too: the ratio then prices validation, not a setting.
        session.query(
            f"INSERT INTO {store.database}.{table} SELECT * FROM Python(t) SETTINGS {INSERT_SETTINGS_SQL}",
            "CSV",
        )
        return time.perf_counter() - started


def main() -> None:
    rng = np.random.default_rng(7)
    known = fleet()
    with tempfile.TemporaryDirectory() as tmp:
        store = ChdbMetricStore(Path(tmp) / "chdb")
        raw_store = ChdbMetricStore(Path(tmp) / "chdb", database="raw")
        store.migrate()
        raw_store.migrate()
        keys = key_columns(known)
        total_rows, total_s, total_raw_s, peak = 0, 0.0, 0.0, 0.0
        for domain, build in ((Domain.PERFORMANCE, performance_frame), (Domain.RESOURCE, resource_frame)):
            frame = build(rng, keys)
            gc.collect()
            reset_ok = reset_peak_rss()
            started = time.perf_counter()
            report = ingest(store, domain, frame, known)
            seconds = time.perf_counter() - started
            peak = max(peak, peak_rss_mib(reset_ok))
            assert report.accepted == frame.height, report
            raw_s = raw_insert(raw_store, SCHEMAS[domain].table, frame)
            print(
                f"{domain}: rows={frame.height} seconds={seconds:.2f} rows_per_s={frame.height / seconds:,.0f} "
                f"raw_seconds={raw_s:.2f} raw_rows_per_s={frame.height / raw_s:,.0f}"
            )
            total_rows, total_s, total_raw_s = (
                total_rows + frame.height,
                total_s + seconds,
                total_raw_s + raw_s,
            )
            del frame
        print(
            f"rows_per_s={total_rows / total_s:.0f} ratio_vs_raw={total_raw_s / total_s:.2f} peak_rss_mib={peak:.0f}"
        )


if __name__ == "__main__":
    main()
