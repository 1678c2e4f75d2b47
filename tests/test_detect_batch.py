"""The shared detector on many series at once (``detect_many``) is the detector one series at a time: the
same scores, decisions, ratios and views bit for bit, and the same findings from the two detectors that
batch their fleet's hourly series (latency_anomalies, resource_anomalies), on generated fleets with
injected anomalies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import numpy as np
import polars as pl
import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.agents import findings
from optiinfra_assets.agents.anomaly import DetectionResult, detect, detect_many
from optiinfra_assets.agents.capability import Finding
from optiinfra_assets.agents.performance import latency_anomalies
from optiinfra_assets.agents.performance.latency_anomalies import LatencyAnomalies
from optiinfra_assets.agents.resource import resource_anomalies
from optiinfra_assets.agents.resource.resource_anomalies import ResourceAnomalies
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.snapshot import FleetSnapshot

NOW = datetime(2026, 6, 8, tzinfo=UTC)
SEEDS = (1, 2, 3, 4)


def _same(a: DetectionResult, b: DetectionResult) -> bool:
    return (
        np.array_equal(a.score, b.score)
        and np.array_equal(a.is_anomaly, b.is_anomaly)
        and np.array_equal(a.ratio, b.ratio)
        and a.view.tolist() == b.view.tolist()
    )


def _mixed_series(seed: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Series of several lengths and steps (so several batches), with spikes, gaps, flat stretches and
    non-finite values, some without timestamps."""
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, np.ndarray | None]] = []
    for k in range(240):
        n = int(rng.choice([0, 2, 60, 167, 168, 500]))
        t = np.arange(n)
        x = 100 + 20 * np.sin(2 * np.pi * t / 24) + rng.normal(0, float(rng.choice([0.1, 2.0])), n)
        if n and k % 5 == 1:
            x[rng.integers(0, n, 3)] += rng.normal(0, 300, 3)
        if n and k % 5 == 2:
            x[rng.integers(0, n, max(1, n // 8))] = np.nan  # gaps differ from row to row
        if k % 5 == 3:
            x = np.where(t < n // 2, 7.0, 8.0)
        if n and k % 5 == 4:
            x[: n // 3] = np.nan
            x[-1] = np.inf
        step = np.timedelta64(int(rng.choice([3600, 300])), "s")
        out.append((x, None if k % 7 == 0 else np.datetime64("2026-01-01T00:00") + t * step))
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("batch_rows", [1, 7, 1024])
def test_detect_many_is_detect_one_series_at_a_time(seed: int, batch_rows: int) -> None:
    series = _mixed_series(seed)
    many = detect_many(series, batch_rows=batch_rows)
    alone = [detect(values, stamps) for values, stamps in series]
    assert len(many) == len(series)
    assert [i for i, (a, b) in enumerate(zip(many, alone, strict=True)) if not _same(a, b)] == []
    assert sum(int(r.is_anomaly.sum()) for r in alone) > 0  # the set has alerts to get wrong


def test_detect_many_rejects_an_empty_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_rows must be at least 1, got 0"):
        detect_many([(np.ones(3), None)], batch_rows=0)


def _metric(
    rng: np.random.Generator, day: np.ndarray, level: float, swing: float, noise: float
) -> np.ndarray:
    """A daily cycle with noise; sometimes an earlier incident, an anomalous newest hour or a drift."""
    x = level * (1 + swing * day) + rng.normal(0, noise * level, len(day))
    if rng.random() < 0.3:  # an earlier incident
        x[rng.integers(0, len(day))] *= rng.choice([0.3, 2.5])
    if rng.random() < 0.35:  # the newest hour is off
        x[-1] *= rng.choice([0.4, 1.6, 3.0])
    elif rng.random() < 0.1:  # a drift into the newest hours
        x[-12:] *= np.linspace(1.0, 1.8, 12)
    return x


def _fleet(seed: int) -> FleetSnapshot:
    """A synthetic fleet's hourly performance and resource rollups over a week: a daily cycle with noise,
    earlier incidents, and injected anomalies in the newest hour (spikes, dips, a drift) on a third of the
    series; a few deployments with a shorter history or with hours that lack the p99 column."""
    rng = np.random.default_rng(seed)
    customers, deployments, instances = sandbox.synthetic_fleet(120, seed, NOW - timedelta(days=7))
    perf: list[pl.DataFrame] = []
    res: list[pl.DataFrame] = []
    for j, dep in enumerate(deployments):
        hours = 168 if j % 9 else int(rng.integers(30, 168))
        t = np.arange(hours)
        day = np.sin(2 * np.pi * t / 24)

        metric = partial(_metric, rng, day)
        stamps = [NOW - timedelta(hours=hours - h) for h in range(hours)]
        p99 = metric(900.0, 0.3, 0.03)
        perf.append(
            pl.DataFrame(
                {
                    "customer_id": dep.customer_id,
                    "deployment_id": dep.id,
                    "hour": stamps,
                    "latency_p95_ms_p50": metric(600.0, 0.3, 0.03),
                    "latency_p99_ms_avg": np.where(t < 20, np.nan, p99) if j % 11 == 0 else p99,
                    "latency_p95_ms_p99": metric(800.0, 0.3, 0.05),
                    "ttft_ms_p50": metric(120.0, 0.2, 0.05),
                    "itl_ms_p50": metric(25.0, 0.1, 0.02),
                    "tokens_per_s_avg": metric(3_000.0, 0.4, 0.03),
                    "requests_per_s_avg": metric(5.0, 0.5, 0.05),
                    "kv_cache_usage_avg": np.clip(metric(0.5, 0.3, 0.05), 0, 1),
                    "preemptions_per_s_avg": np.abs(metric(0.01, 0.0, 0.5)),
                }
            )
        )
        res.append(
            pl.DataFrame(
                {
                    "customer_id": dep.customer_id,
                    "deployment_id": dep.id,
                    "hour": stamps,
                    "gpu_util_pct_avg": np.clip(metric(60.0, 0.4, 0.04), 0, 100),
                    "gpu_mem_used_gib_avg": metric(70.0, 0.0, 0.01),
                    "gpu_mem_total_gib_avg": np.full(hours, 80.0),
                    "power_w_avg": metric(450.0, 0.3, 0.03),
                }
            )
        )
    return FleetSnapshot(
        customers=customers,
        deployments=deployments,
        instances=instances,
        hourly={"performance": pl.concat(perf), "resource": pl.concat(res)},
        taken_at=NOW,
    )


def _one_at_a_time(series: list[tuple[np.ndarray, np.ndarray]]) -> list[findings.NewestHour | None]:
    return [findings.newest_hour_anomaly(values, hours) for values, hours in series]


@pytest.mark.parametrize("seed", SEEDS)
def test_batched_detectors_find_what_one_series_at_a_time_finds(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot, settings = _fleet(seed), DecisionSettings()
    detectors = ((LatencyAnomalies(), latency_anomalies), (ResourceAnomalies(), resource_anomalies))
    batched: list[list[Finding]] = [d.detect(snapshot, settings) for d, _ in detectors]
    for _, module in detectors:
        monkeypatch.setattr(module, "newest_hour_anomalies", _one_at_a_time)
    alone: list[list[Finding]] = [d.detect(snapshot, settings) for d, _ in detectors]
    assert batched == alone
    assert all(len(found) >= 5 for found in batched)  # the injected anomalies are found
