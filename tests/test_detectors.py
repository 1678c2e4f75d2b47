"""Detectors on a snapshot: the latency-anomaly monitor through the shared anomaly detector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from factories import deployment

from optiinfra_assets.agents.performance.latency_anomalies import LatencyAnomalies
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Risk
from optiinfra_assets.snapshot import FleetSnapshot

START = datetime(2026, 6, 1, tzinfo=UTC)
CUSTOMER = Customer(id="cust-a", name="A", slo_p95_latency_ms=20_000.0, min_monthly_savings_usd=0.0)


def snapshot(
    last_p95: float, last_load: float | None = None, last_kv: float = 0.4, hours: int = 168
) -> FleetSnapshot:
    dep = deployment()
    hour = np.arange(hours)
    p95 = 8_000.0 + 1_000.0 * np.sin(2 * np.pi * hour / 24) + 50.0 * np.cos(hour * 1.7)
    load = 5.0 + np.sin(2 * np.pi * hour / 24)
    last_load = load[-1] if last_load is None else last_load
    kv = np.full(hours, 0.4)
    if last_p95 is not None:  # None: the last hour follows the pattern
        p95[-1] = last_p95
    load[-1], kv[-1] = last_load, last_kv
    frame = pl.DataFrame(
        {
            "customer_id": dep.customer_id,
            "deployment_id": dep.id,
            "hour": [START + timedelta(hours=int(h)) for h in hour],
            "latency_p95_ms_p50": p95,
            "requests_per_s_avg": load,
            "kv_cache_usage_avg": kv,
        }
    )
    return FleetSnapshot(customers=[CUSTOMER], deployments=[dep], instances=[], hourly={"performance": frame})


def test_a_normal_hour_is_no_finding() -> None:
    assert LatencyAnomalies().detect(snapshot(None), DecisionSettings()) == []


def test_an_unexplained_jump_is_a_regression_and_over_the_slo_is_high() -> None:
    (finding,) = LatencyAnomalies().detect(snapshot(30_000.0), DecisionSettings())
    assert finding.deployment_id == "dep-1" and finding.metric == "latency_p95_ms"
    assert finding.severity is Risk.HIGH  # 30 s is over the 20 s SLO
    assert finding.value == 30_000.0 and finding.expected is not None and finding.expected < 10_000
    assert "regression" in finding.explanation


def test_a_jump_with_more_load_or_a_full_kv_cache_says_so() -> None:
    (load,) = LatencyAnomalies().detect(snapshot(16_000.0, last_load=12.0), DecisionSettings())
    assert load.severity is Risk.MEDIUM and load.explanation.startswith("load:")
    (kv,) = LatencyAnomalies().detect(snapshot(16_000.0, last_kv=0.97), DecisionSettings())
    assert kv.explanation.startswith("KV-cache pressure")


def test_no_hourly_data_is_no_finding() -> None:
    empty = FleetSnapshot(customers=[CUSTOMER], deployments=[deployment()], instances=[])
    assert LatencyAnomalies().detect(empty, DecisionSettings()) == []
