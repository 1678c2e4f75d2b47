"""Planning collection windows, and collecting from a source into the real stores (chdb, and SQLite or
PostgreSQL for the state)."""

from __future__ import annotations

import itertools
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_sources import GPUS, ExpositionServer, fake_pynvml, small_fleet

from optiinfra_assets.collection import (
    WATERMARK_KEY,
    CollectionReport,
    Window,
    collect_metrics,
    plan_windows,
)
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.metric_store import ChdbMetricStore
from resources.sources import NvmlSource, SandboxSource, open_metric_source
from resources.state_store import StateStore, sqlite_url

# Half a minute into the previous minute: always in the past (a collection never reads the future).
NOW = (datetime.now(UTC) - timedelta(minutes=1)).replace(second=30, microsecond=0)


def test_first_start_backfills_in_day_chunks() -> None:
    windows = plan_windows(None, NOW, backfill_days=2, backfill_step_s=60)
    assert [w.step_s for w in windows] == [60, 60, 60]
    assert windows[0].start == (NOW - timedelta(days=2)).replace(second=0)
    assert all(a.end == b.start for a, b in itertools.pairwise(windows))
    assert windows[-1].end == NOW and all(w.is_backfill for w in windows)


def test_short_gap_is_one_live_window_and_long_gap_is_caught_up() -> None:
    assert plan_windows(NOW - timedelta(seconds=40), NOW, backfill_days=7, backfill_step_s=10) == [
        Window(NOW - timedelta(seconds=40), NOW, 1)
    ]
    caught_up = plan_windows(NOW - timedelta(hours=3), NOW, backfill_days=7, backfill_step_s=10)
    assert (
        len(caught_up) == 1 and caught_up[0].step_s == 10 and caught_up[0].start == NOW - timedelta(hours=3)
    )
    assert plan_windows(NOW, NOW, backfill_days=7, backfill_step_s=10) == []


def _stores(tmp_path: Path) -> tuple[StateStore, ChdbMetricStore]:
    state = StateStore(sqlite_url(tmp_path / "state.db"))
    state.migrate()
    ensure_sandbox_fleet(state, seed=5, now=NOW - timedelta(days=30))
    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    return state, store


def test_backfill_then_live_collection_lands_every_row(tmp_path: Path) -> None:
    state, store = _stores(tmp_path)
    logged: list[str] = []

    def source(step_s: int) -> SandboxSource:
        return SandboxSource(seed=5, step_s=step_s)

    first = collect_metrics(
        state, store, source, NOW, backfill_days=1, backfill_step_s=300, log=logged.append
    )
    assert len(first.windows) == 2 and len(logged) == 2 and "backfill 1/2" in logged[0]
    assert state.get_watermark(WATERMARK_KEY) == NOW
    for domain in Domain:
        accepted = first.total(domain, "accepted")
        assert accepted > 0 and first.total(domain, "quarantined") == 0
        assert store.count(SCHEMAS[domain].table) == accepted

    live = collect_metrics(
        state, store, source, NOW + timedelta(seconds=20), backfill_days=1, backfill_step_s=300
    )
    assert [w.step_s for w in live.windows] == [1]
    running = len(state.list_instances())
    assert live.total(Domain.PERFORMANCE, "accepted") == 20 * running
    assert live.total(Domain.PERFORMANCE, "quarantined") == 0


def test_a_source_that_reads_the_present_gets_one_window(tmp_path: Path) -> None:
    state, store = _stores(tmp_path)
    report = collect_metrics(
        state,
        store,
        lambda _: NvmlSource("i-local"),
        NOW,
        backfill_days=7,
        backfill_step_s=10,
    )
    assert len(report.windows) == 1 and not report.windows[0].is_backfill
    assert report.statuses[0].startswith("NVML unavailable")  # no GPU on this machine: said, not raised
    assert state.get_watermark(WATERMARK_KEY) == NOW


# ------------------------------------------------------------------------- sources that read the present


def _seed(state: StateStore, fleet: FleetSnapshot) -> None:
    for customer in fleet.customers:
        state.upsert_customer(customer)
    for deployment in fleet.deployments:
        state.upsert_deployment(deployment)
    state.add_instances(fleet.instances)


def _stored(store: ChdbMetricStore, domain: Domain) -> dict[str, dict[str, Any]]:
    frame = store.query_polars(f"SELECT * FROM optiinfra.{SCHEMAS[domain].table} ORDER BY instance_id")
    return {row["instance_id"]: row for row in frame.iter_rows(named=True)}


def test_scraped_rows_land_from_the_second_collection_with_unmanaged_instances_observed(
    state: StateStore, tmp_path: Path
) -> None:
    fleet = small_fleet()
    _seed(state, fleet)
    known = fleet.instances[0].id
    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    with ExpositionServer() as server:
        targets = f"{known}={server.url}/v1dp,i-own={server.url}/tgi,i-idle={server.url}/idle"

        def collect(now: datetime) -> CollectionReport:
            return collect_metrics(
                state,
                store,
                lambda step_s: open_metric_source(
                    "prometheus", state=state, seed=1, step_s=step_s, prometheus_targets=targets
                ),
                now,
                backfill_days=7,
                backfill_step_s=10,
            )

        first = collect(NOW)
        assert first.total(Domain.PERFORMANCE, "received") == 0
        assert "rates start with the next collection" in first.statuses[0]
        second = collect(NOW + timedelta(seconds=10))
    assert second.statuses == ["ok"]
    assert second.total(Domain.PERFORMANCE, "accepted") == 3
    assert second.total(Domain.PERFORMANCE, "quarantined") == 0
    observed = state.list_observed_instances()
    assert [(o["instance_id"], o["source"]) for o in observed] == [
        ("i-idle", "prometheus"),
        ("i-own", "prometheus"),
    ]

    rows = _stored(store, Domain.PERFORMANCE)
    assert rows[known]["deployment_id"] == fleet.instances[0].deployment_id
    assert rows[known]["kv_cache_usage"] == pytest.approx(0.6)
    assert (rows["i-own"]["customer_id"], rows["i-own"]["deployment_id"]) == ("unmanaged", "unmanaged:i-own")
    # Not reported is stored as NaN (the columns are non-nullable Float64), never as an invented 0.
    assert math.isnan(rows["i-own"]["kv_cache_usage"]) and rows["i-own"]["itl_ms"] == pytest.approx(10.9)
    assert math.isnan(rows["i-idle"]["ttft_ms"]) and math.isnan(rows["i-idle"]["latency_p99_ms"])
    assert rows["i-idle"]["requests_per_s"] == 0.0


def test_nvml_rows_land_per_instance_with_unsupported_fields_not_reported(
    state: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = small_fleet()
    _seed(state, fleet)
    known = fleet.instances[0].id
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(GPUS))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    report = collect_metrics(
        state,
        store,
        lambda _: NvmlSource(f"2={known},i-gpu-host"),
        NOW,
        backfill_days=7,
        backfill_step_s=10,
    )
    assert report.total(Domain.RESOURCE, "accepted") == 2
    assert report.total(Domain.RESOURCE, "quarantined") == 0
    rows = _stored(store, Domain.RESOURCE)
    assert rows[known]["power_w"] == pytest.approx(300.0)
    assert rows["i-gpu-host"]["deployment_id"] == "unmanaged:i-gpu-host"
    assert math.isnan(rows["i-gpu-host"]["power_w"])
    assert rows["i-gpu-host"]["gpu_util_pct"] == pytest.approx(50.0)
    assert [o["instance_id"] for o in state.list_observed_instances()] == ["i-gpu-host"]
