"""Planning collection windows, and collecting from a source into the real stores (chdb + SQLite)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from optiinfra_assets.collection import WATERMARK_KEY, Window, collect_metrics, plan_windows
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.metric_store import ChdbMetricStore
from resources.sources import NvmlSource, SandboxSource
from resources.state_store import StateStore, sqlite_url

NOW = datetime.now(UTC).replace(second=30, microsecond=0)


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
