"""Robust baselines in ClickHouse SQL, checked against numpy on known data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets import snapshot
from optiinfra_assets.agents import baselines
from optiinfra_assets.agents.baselines import (
    ALL_HOURS,
    BASELINE_METRICS,
    BaselineStat,
    compute_baselines,
    is_anomalous,
    load_baselines,
    load_overall_baselines,
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


def _resource_rows(
    rng: np.random.Generator, hours: list[int], per_hour: int, deployment: str = "d-1"
) -> pl.DataFrame:
    """Two instances of a deployment sampled in the given hours of this week (hour 0 = Monday 00:00)."""
    ts, inst = [], []
    for h in hours:
        for i in range(per_hour):
            ts.append(MONDAY + timedelta(hours=h, seconds=i))
            inst.append(f"{deployment}/i-1" if i % 2 else f"{deployment}/i-2")
    n = len(ts)
    return pl.DataFrame(
        {
            "ts": ts,
            "customer_id": ["c-1"] * n,
            "deployment_id": [deployment] * n,
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


def _stat(rows: pl.DataFrame, metric: str, hour: int, deployment: str = "d-1") -> dict[str, float]:
    got = rows.filter(
        (pl.col("deployment_id") == deployment)
        & (pl.col("metric") == metric)
        & (pl.col("hour_of_week") == hour)
    ).row(0, named=True)
    return {k: got[k] for k in ("median", "mad", "p05", "p95", "n")}


@pytest.mark.parametrize("per_hour", [1, 2, 3, 4, 60, 61])
def test_even_odd_and_tiny_groups_match_numpy(store: ChdbMetricStore, per_hour: int) -> None:
    """The MAD is read off the sorted values (the nearest run to the median), not sorted deviations: check
    it, and the interpolated quantiles, where numpy averages two middle values and where ties abound."""
    rng = np.random.default_rng(per_hour)
    frame = _resource_rows(rng, hours=[5, 6], per_hour=per_hour).with_columns(
        pl.col("gpu_util_pct").round(0)  # ties
    )
    store.insert_polars("resource_metrics", frame)
    rows = compute_baselines(store, Domain.RESOURCE, now=NOW)
    for metric in BASELINE_METRICS[Domain.RESOURCE]:
        x = frame.filter(pl.col("ts").dt.hour() == 5)[metric].to_numpy()
        assert _stat(rows, metric, 5) == pytest.approx(_expect(x))
        assert _stat(rows, metric, ALL_HOURS) == pytest.approx(_expect(frame[metric].to_numpy()))


def test_a_big_week_is_sampled_evenly_and_counts_every_sample(
    store: ChdbMetricStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(baselines, "WEEK_SAMPLE", 100)  # 12 hours x 300 samples: one in 36 for the week
    rng = np.random.default_rng(8)
    frame = _resource_rows(rng, hours=list(range(12)), per_hour=300)
    store.insert_polars("resource_metrics", frame)
    rows = compute_baselines(store, Domain.RESOURCE, now=NOW)
    x = frame["power_w"].to_numpy()
    week = _stat(rows, "power_w", ALL_HOURS)
    assert week["n"] == x.size  # the full count, not the sample's
    expected = _expect(x)
    # Evenly spaced order statistics of each hour: far closer than a random sample of 100 would be.
    assert week["median"] == pytest.approx(expected["median"], rel=0.005)
    assert week["mad"] == pytest.approx(expected["mad"], rel=0.05)
    assert week["p95"] == pytest.approx(expected["p95"], rel=0.01)
    assert _stat(rows, "power_w", 3) == pytest.approx(
        _expect(frame.filter(pl.col("ts").dt.hour() == 3)["power_w"].to_numpy())
    )


def test_shards_of_deployments_give_the_same_baselines(
    store: ChdbMetricStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(9)
    for deployment in ("d-1", "d-2", "d-3"):
        store.insert_polars(
            "resource_metrics", _resource_rows(rng, [1, 2], per_hour=40, deployment=deployment)
        )
    whole = compute_baselines(store, Domain.RESOURCE, now=NOW)
    monkeypatch.setattr(baselines, "SHARD_ROWS", 1)  # one deployment per query
    sharded = compute_baselines(store, Domain.RESOURCE, now=NOW)
    assert whole.height == sharded.height == 3 * 3 * 3
    assert whole.drop("computed_at").equals(sharded.drop("computed_at"))


def test_overall_baselines_of_the_whole_fleet_in_one_query(
    store: ChdbMetricStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(10)
    for deployment in ("d-1", "d-2"):
        store.insert_polars(
            "resource_metrics", _resource_rows(rng, [1, 2], per_hour=30, deployment=deployment)
        )
    compute_baselines(store, Domain.RESOURCE, now=NOW)
    queries: list[str] = []
    query_arrow = store.query_arrow
    monkeypatch.setattr(
        store, "query_arrow", lambda sql, params=None: queries.append(sql) or query_arrow(sql, params)
    )
    loaded = load_overall_baselines(store)
    assert len(queries) == 1
    assert set(loaded) == {"d-1", "d-2"} and set(loaded["d-2"]) == set(BASELINE_METRICS[Domain.RESOURCE])
    monkeypatch.undo()
    assert loaded["d-2"]["power_w"] == overall_baseline(store, "d-2", "power_w")
    assert BaselineStat is snapshot.BaselineStat  # one type, whoever imports it
