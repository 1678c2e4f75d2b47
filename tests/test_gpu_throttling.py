"""GPU SM clock and throttle reasons (issue 9): the schema's bounds, metric-store version 5 on a store made
before it (chdb), the sandbox's power-capped GPUs, and the gpu_utilization detector naming the reason."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.agents.resource.gpu_utilization import GpuUtilization, throttled_shares
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import validate_batch
from optiinfra_assets.metrics import SCHEMAS, Domain, ThrottleReason
from optiinfra_assets.models import Risk
from optiinfra_assets.snapshot import FleetSnapshot
from resources.metric_store import HOURLY_TABLES, ChdbMetricStore, migrations

SETTINGS = DecisionSettings()
RAW, HOURLY = SCHEMAS[Domain.RESOURCE].table, HOURLY_TABLES[Domain.RESOURCE]
HOT, CALM = "globex-kv-qwen32b", "acme-chat-8b"  # 130% and 52% of capacity at a weekday peak


def _recent_weekday_peak() -> datetime:
    """15:00 UTC (the sandbox's peak) of the latest weekday before now: within the tables' TTL."""
    day = datetime.now(UTC).replace(hour=15, minute=0, second=0, microsecond=0) - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


PEAK = _recent_weekday_peak()


def _peak_frame(hours: int = 3) -> pl.DataFrame:
    customers, deployments, instances = sandbox.initial_fleet(7, PEAK - timedelta(days=2))
    chosen = [d for d in deployments if d.id in (HOT, CALM)]
    frames = sandbox.generate(
        customers,
        chosen,
        instances,
        [],
        PEAK - timedelta(hours=hours - 1),
        PEAK + timedelta(hours=1),
        seed=7,
        step_s=10,
    )
    return frames[Domain.RESOURCE]


def test_the_schema_bounds_the_new_measures() -> None:
    frame = (
        _peak_frame(1)
        .head(3)
        .with_columns(
            pl.Series("sm_clock_mhz", [1980.0, 9e9, 1700.0]), pl.Series("throttle_reasons", [0.0, 4.0, 1e6])
        )
    )
    known = {r["instance_id"]: (r["customer_id"], r["deployment_id"]) for r in frame.iter_rows(named=True)}
    good, bad = validate_batch(Domain.RESOURCE, frame, known, {}, now=datetime.now(UTC))
    assert good.height == 1
    assert sorted(bad["reason"].to_list()) == [
        "sm_clock_mhz: out of range 9000000000.0 > 5000.0",
        "throttle_reasons: out of range 1000000.0 > 65535.0",
    ]


def test_the_sandbox_power_caps_a_gpu_running_hot() -> None:
    frame = _peak_frame(1)
    by = frame.group_by("deployment_id").agg(
        pl.col("sm_clock_mhz").mean(),
        pl.col("sm_clock_mhz").max().alias("best"),
        (pl.col("throttle_reasons") == ThrottleReason.SW_POWER_CAP).mean().alias("capped"),
        (pl.col("throttle_reasons") > 0).mean().alias("any"),
    )
    rows = {r["deployment_id"]: r for r in by.iter_rows(named=True)}
    assert rows[HOT]["capped"] > 0.5 and rows[HOT]["sm_clock_mhz"] < 0.95 * rows[HOT]["best"]
    assert rows[HOT]["best"] == 1980.0  # an H100 SXM at full boost when not capped
    assert rows[CALM]["any"] == 0.0 and rows[CALM]["sm_clock_mhz"] == 2520.0  # an L40S at 52%: never capped


def _pre_v5_store(path: Path) -> ChdbMetricStore:
    """A store as versions 1-4 left it: the resource tables without the SM clock or throttle reasons."""
    s = ChdbMetricStore(path)
    db = s.database
    with s.session():
        s.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        s.command(
            f"CREATE TABLE {db}.schema_migrations (version UInt32, applied_at DateTime64(3, 'UTC')) "
            "ENGINE = MergeTree ORDER BY version"
        )
        for version, statements in migrations(db):
            if version <= 4:
                for statement in statements:
                    s.command(statement)
                s.command(f"INSERT INTO {db}.schema_migrations VALUES ({version}, now64(3))")
        s.command(f"DROP VIEW {db}.{HOURLY}_mv")
        new_hourly = ["sm_clock_mhz", *(f"throttle_{g}" for g in ThrottleReason.GROUPS)]
        for column in new_hourly:
            s.command(f"ALTER TABLE {db}.{HOURLY} DROP COLUMN {column}_avg")
        s.command(f"ALTER TABLE {db}.{RAW} DROP COLUMN sm_clock_mhz, DROP COLUMN throttle_reasons")
        old = "gpu_util_pct, gpu_mem_used_gib, gpu_mem_total_gib, power_w"
        s.command(
            f"CREATE MATERIALIZED VIEW {db}.{HOURLY}_mv TO {db}.{HOURLY} AS SELECT customer_id, deployment_id, "
            "toStartOfHour(ts) AS hour, count() AS samples, "
            + ", ".join(f"avgStateIf({m}, isFinite({m})) AS {m}_avg" for m in old.split(", "))
            + ", "
            + ", ".join(
                f"quantilesBFloat16State(0.5, 0.95, 0.99)({m}) AS {m}_q"
                for m in ("gpu_util_pct", "gpu_mem_used_gib", "power_w")
            )
            + f" FROM {db}.{RAW} GROUP BY customer_id, deployment_id, hour"
        )
        at = (PEAK - timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S")
        s.command(f"INSERT INTO {db}.{RAW} VALUES ('{at}', 'globex', '{HOT}', 'i-old', 90, 70, 80, 690)")
    return s


def test_version_5_adds_the_columns_to_an_older_store_and_rolls_them_up(tmp_path: Path) -> None:
    store = _pre_v5_store(tmp_path / "chdb")
    assert store.migrate() == max(v for v, _ in migrations(store.database))
    old = store.query_polars(f"SELECT sm_clock_mhz, throttle_reasons FROM {store.database}.{RAW}").row(0)
    assert all(math.isnan(v) for v in old)  # stored before: "not reported", not a clock of zero
    with store.session():  # a crash half-way runs the version again: harmless
        for statement in dict(migrations(store.database))[5]:
            store.command(statement)
    frame = _peak_frame()
    store.insert_polars(RAW, frame)
    hourly = store.hourly_resource(HOT)
    assert hourly.height == 4  # the pre-v5 hour and the three peak hours
    assert math.isnan(hourly["throttle_power_avg"][0]) and math.isnan(hourly["sm_clock_mhz_avg"][0])
    raw = frame.filter(pl.col("deployment_id") == HOT)
    capped = raw.group_by(pl.col("ts").dt.truncate("1h")).agg(
        (pl.col("throttle_reasons") == ThrottleReason.SW_POWER_CAP).mean().alias("share")
    )
    assert hourly["throttle_power_avg"].tail(3).to_list() == pytest.approx(
        capped.sort("ts")["share"].to_list()
    )
    assert hourly["throttle_thermal_avg"].tail(3).to_list() == [0.0, 0.0, 0.0]
    assert hourly["sm_clock_mhz_avg"][-1] == pytest.approx(raw.tail(360)["sm_clock_mhz"].mean(), rel=0.02)
    # The whole path: the detector on the store's own hourly rollup reports the hot deployment, power-capped.
    customers, deployments, instances = sandbox.initial_fleet(7, PEAK - timedelta(days=2))
    snap = FleetSnapshot(
        customers, deployments, instances, taken_at=PEAK, hourly={"resource": store.hourly_resource()}
    )
    findings = [f for f in GpuUtilization().detect(snap, SETTINGS) if f.metric.startswith("throttle_")]
    assert [(f.deployment_id, f.metric, f.severity) for f in findings] == [(HOT, "throttle_power", Risk.LOW)]
    assert "power cap" in findings[0].summary and "SM clock" in findings[0].summary


def _hourly(**columns: list[float]) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    return pl.DataFrame({"hour": [PEAK + timedelta(hours=h) for h in range(n)], **columns})


def test_throttled_shares_skip_hours_that_did_not_report() -> None:
    rows = _hourly(throttle_power_avg=[0.9, float("nan"), 0.3, 0.5], throttle_thermal_avg=[0.0] * 4)
    assert throttled_shares(rows, 3) == {"power": pytest.approx(0.4), "thermal": 0.0}
    assert throttled_shares(_hourly(gpu_util_pct_avg=[50.0]), 3) == {}  # a store before v5


def test_a_thermal_throttle_is_named_and_worth_a_look() -> None:
    customers, deployments, instances = sandbox.initial_fleet(7, PEAK)
    n = 6
    rows = _hourly(
        gpu_util_pct_avg=[80.0] * n,
        sm_clock_mhz_avg=[1980.0, 1980.0, 1980.0, 1400.0, 1350.0, 1380.0],
        throttle_power_avg=[0.0, 0.0, 0.0, 0.1, 0.1, 0.1],
        throttle_thermal_avg=[0.0, 0.0, 0.0, 0.6, 0.7, 0.8],
        throttle_hw_slowdown_avg=[0.0] * n,
    ).with_columns(pl.lit("acme").alias("customer_id"), pl.lit(CALM).alias("deployment_id"))
    snap = FleetSnapshot(customers, deployments, instances, taken_at=PEAK, hourly={"resource": rows})
    (finding,) = GpuUtilization().detect(snap, SETTINGS)
    assert finding.metric == "throttle_thermal" and finding.severity is Risk.MEDIUM
    assert finding.value == pytest.approx(0.7) and finding.expected == SETTINGS.gpu_throttle_share
    assert "thermal in 70%" in finding.summary and "1377 MHz against 1980 MHz" in finding.summary
    assert "cooling" in finding.explanation and "power cap" not in finding.explanation  # 10%: under the line
    calm = rows.with_columns(pl.lit(0.05).alias("throttle_thermal_avg"))
    snap = FleetSnapshot(customers, deployments, instances, taken_at=PEAK, hourly={"resource": calm})
    assert GpuUtilization().detect(snap, SETTINGS) == []
    assert np.isclose(SETTINGS.gpu_throttle_share, 0.25)
