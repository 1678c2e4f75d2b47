"""Robust baselines in ClickHouse SQL, checked against numpy on known data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets.agents.baselines import (
    ALL_HOURS,
    BASELINE_METRICS,
    BaselineStat,
    compute_baselines,
    is_anomalous,
    load_baselines,
    overall_baseline,
)
from optiinfra_assets.metrics import SCHEMAS, Domain
from resources.metric_store import ChdbMetricStore

_TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
MONDAY = _TODAY - timedelta(days=_TODAY.weekday())  # recent: older rows would fall to the TTL
NOW = MONDAY + timedelta(days=7)


@pytest.fixture
def store(tmp_path: Path) -> ChdbMetricStore:
    s = ChdbMetricStore(tmp_path / "chdb")
    s.migrate()
    return s


def _resource_rows(rng: np.random.Generator, hours: list[int], per_hour: int) -> pl.DataFrame:
    """Two instances of d-1 sampled in the given hours of this week (hour 0 = Monday 00:00)."""
    ts, inst = [], []
    for h in hours:
        for i in range(per_hour):
            ts.append(MONDAY + timedelta(hours=h, seconds=i))
            inst.append("i-1" if i % 2 else "i-2")
    n = len(ts)
    return pl.DataFrame(
        {
            "ts": ts,
            "customer_id": ["c-1"] * n,
            "deployment_id": ["d-1"] * n,
            "instance_id": inst,
            "gpu_util_pct": rng.uniform(0, 100, n),
            "gpu_mem_used_gib": rng.lognormal(3, 0.4, n),
            "gpu_mem_total_gib": np.full(n, 80.0),
            "power_w": rng.normal(300, 20, n),
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))


def _expect(x: np.ndarray) -> dict[str, float]:
    med = float(np.median(x))
    return {
        "median": med,
        "mad": float(np.median(np.abs(x - med))),
        "p05": float(np.quantile(x, 0.05)),
        "p95": float(np.quantile(x, 0.95)),
        "n": len(x),
    }


def test_baselines_match_numpy_per_hour_of_week_and_overall(store: ChdbMetricStore) -> None:
    rng = np.random.default_rng(5)
    frame = _resource_rows(rng, hours=[0, 13, 167], per_hour=301)
    store.insert_polars(SCHEMAS[Domain.RESOURCE].table, frame)
    rows = compute_baselines(store, Domain.RESOURCE, now=NOW)
    assert set(rows["metric"]) == set(BASELINE_METRICS[Domain.RESOURCE])
    assert sorted(set(rows["hour_of_week"])) == [0, 13, 167, ALL_HOURS]

    hours = frame.select(
        ((pl.col("ts").dt.weekday().cast(pl.Int32) - 1) * 24 + pl.col("ts").dt.hour()).alias("h"), pl.all()
    )
    for metric in BASELINE_METRICS[Domain.RESOURCE]:
        for h in (0, 13, 167):
            x = hours.filter(pl.col("h") == h)[metric].to_numpy()
            got = rows.filter((pl.col("metric") == metric) & (pl.col("hour_of_week") == h)).row(0, named=True)
            assert {k: got[k] for k in ("median", "mad", "p05", "p95", "n")} == pytest.approx(_expect(x))
        whole = overall_baseline(store, "d-1", metric)
        assert whole is not None
        assert whole.__dict__ == pytest.approx(_expect(frame[metric].to_numpy()))

    loaded = load_baselines(store, Domain.RESOURCE, "d-1")
    assert loaded.height == 3 * 3 and loaded["hour_of_week"].max() < ALL_HOURS
    assert load_baselines(store, deployment_id="other").is_empty()


def test_window_excludes_older_and_future_rows(store: ChdbMetricStore) -> None:
    rng = np.random.default_rng(6)
    store.insert_polars("resource_metrics", _resource_rows(rng, hours=[10], per_hour=50))
    rows = compute_baselines(store, Domain.RESOURCE, now=MONDAY + timedelta(hours=10, seconds=20))
    assert rows.filter(pl.col("hour_of_week") == 10)["n"].unique().to_list() == [20]
    assert compute_baselines(store, Domain.RESOURCE, now=MONDAY).is_empty()


def test_recomputation_replaces_the_latest_per_key(store: ChdbMetricStore) -> None:
    rng = np.random.default_rng(7)
    store.insert_polars("resource_metrics", _resource_rows(rng, hours=[2], per_hour=40))
    compute_baselines(store, Domain.RESOURCE, now=NOW - timedelta(days=1))
    store.insert_polars(
        "resource_metrics",
        _resource_rows(rng, hours=[2], per_hour=40).with_columns(pl.col("ts") + pl.duration(minutes=30)),
    )
    compute_baselines(store, Domain.RESOURCE, now=NOW)
    loaded = load_baselines(store, Domain.RESOURCE)
    assert loaded.height == 3
    assert loaded["n"].unique().to_list() == [80]
    assert loaded["computed_at"].unique().to_list() == [NOW]


def test_cost_baseline_is_usd_per_deployment_hour(store: ChdbMetricStore) -> None:
    minutes = [MONDAY + timedelta(hours=h, minutes=m) for h in (1, 2, 3) for m in range(60)]
    n = len(minutes)
    frame = pl.DataFrame(
        {
            "ts": minutes,
            "customer_id": ["c-1"] * n,
            "deployment_id": ["d-1"] * n,
            "instance_id": ["i-1"] * n,
            "instance_type": ["g5.xlarge"] * n,
            "lifecycle": ["spot" if i % 2 else "on_demand" for i in range(n)],
            "price_usd_per_hour": [1.2] * n,
            "cost_usd": [0.01 * (1 + i // 60) for i in range(n)],  # 0.6, 1.2, 1.8 USD per hour
        }
    ).with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
    store.insert_polars("cost_metrics", frame)
    compute_baselines(store, Domain.COST, now=NOW)
    whole = overall_baseline(store, "d-1", "cost_usd_per_hour")
    assert whole is not None and whole.n == 3
    assert whole.median == pytest.approx(1.2) and whole.mad == pytest.approx(0.6)
    per_hour = load_baselines(store, Domain.COST)
    assert per_hour["hour_of_week"].to_list() == [1, 2, 3]
    assert per_hour["median"].to_list() == pytest.approx([0.6, 1.2, 1.8])


def test_overall_baseline_absent_before_any_computation(store: ChdbMetricStore) -> None:
    assert overall_baseline(store, "d-1", "ttft_ms") is None


def test_is_anomalous_uses_the_robust_z_score() -> None:
    stat = BaselineStat(median=100.0, mad=10.0, p05=80.0, p95=120.0, n=1000)
    assert not is_anomalous(150.0, stat)  # z = 3.37
    assert is_anomalous(152.0, stat)  # z = 3.51
    assert is_anomalous(40.0, stat)
    assert is_anomalous(float("nan"), stat)
    assert not is_anomalous(130.0, stat, z=2.5)  # z = 2.02
    flat = BaselineStat(median=5.0, mad=0.0, p05=5.0, p95=5.0, n=10)
    assert not is_anomalous(5.0, flat) and is_anomalous(5.1, flat)
    spread = BaselineStat(median=5.0, mad=0.0, p05=4.0, p95=6.0, n=10)
    assert not is_anomalous(6.5, spread) and is_anomalous(9.0, spread)
