"""Bad data that poisoned the metric path (issue 12): future timestamps, values past physical bounds,
re-collection after a crash counted as malformed, and NaN ("not reported") poisoning hourly averages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from optiinfra_assets.collection import WATERMARK_KEY, CollectionReport, collect_metrics
from optiinfra_assets.ingest import ingest, validate_batch
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.metric_store import ChdbMetricStore
from resources.sources import SandboxSource
from resources.state_store import StateStore, sqlite_url

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW.replace(minute=0, second=0) - timedelta(hours=2)
FLEET = {"i-abc": ("c-1", "d-1"), "i-def": ("c-1", "d-2")}


def rows(domain: Domain, n: int, start: datetime = T0, **columns: list[object]) -> pl.DataFrame:
    schema = SCHEMAS[domain]
    data: dict[str, list[object]] = {
        "ts": [start + timedelta(seconds=i) for i in range(n)],
        "customer_id": ["c-1"] * n,
        "deployment_id": ["d-1"] * n,
        "instance_id": ["i-abc"] * n,
        **{name: [f"{name}-{i}" for i in range(n)] for name in schema.labels},
        **{m.name: [0.5] * n for m in schema.measures},
    }
    if domain == Domain.RESOURCE:
        data["gpu_mem_total_gib"] = [80.0] * n
    data.update(columns)
    return pl.DataFrame(data, strict=False)


@pytest.fixture
def store(tmp_path: Path) -> ChdbMetricStore:
    s = ChdbMetricStore(tmp_path / "chdb")
    s.migrate()
    return s


def reasons(domain: Domain, frame: pl.DataFrame) -> list[str]:
    good, bad = validate_batch(domain, frame, FLEET, {}, now=NOW)
    assert good.height + bad.height == frame.height
    return bad["reason"].to_list()


# ------------------------------------------------------------------------------ future timestamps


def test_a_row_dated_2099_is_rejected_and_does_not_become_the_watermark(store: ChdbMetricStore) -> None:
    future = datetime(2099, 1, 1, tzinfo=UTC)
    batch = rows(Domain.PERFORMANCE, 3, ts=[T0, future, T0 + timedelta(seconds=2)])
    report = ingest(store, Domain.PERFORMANCE, batch, FLEET, now=NOW)
    assert (report.accepted, report.quarantined) == (2, 1)
    assert report.reasons == {"ts: in the future": 1}
    assert store.watermarks(Domain.PERFORMANCE)["i-abc"] == T0 + timedelta(seconds=2)
    # Later rows are still accepted: nothing was poisoned.
    later = ingest(
        store, Domain.PERFORMANCE, rows(Domain.PERFORMANCE, 5, start=T0 + timedelta(minutes=1)), FLEET
    )
    assert (later.accepted, later.quarantined) == (5, 0)


def test_clock_skew_allows_a_little_and_no_more() -> None:
    skew = timedelta(minutes=5)
    frame = rows(
        Domain.RESOURCE, 2, ts=[NOW + skew - timedelta(seconds=1), NOW + skew + timedelta(seconds=1)]
    )
    got = reasons(Domain.RESOURCE, frame)
    assert len(got) == 1 and got[0].startswith("ts: in the future (")


def test_a_future_row_stored_before_the_rule_no_longer_holds_the_watermark(store: ChdbMetricStore) -> None:
    poisoned = rows(Domain.PERFORMANCE, 1, ts=[datetime(2099, 1, 1, tzinfo=UTC)])
    store.insert_polars("performance_metrics", poisoned.cast(SCHEMAS[Domain.PERFORMANCE].polars_schema))
    report = ingest(store, Domain.PERFORMANCE, rows(Domain.PERFORMANCE, 4), FLEET, now=NOW)
    assert (report.accepted, report.quarantined) == (4, 0), report.reasons


def test_the_collection_watermark_never_moves_past_now(state: StateStore) -> None:
    state.set_watermark(WATERMARK_KEY, datetime(2099, 1, 1, tzinfo=UTC))
    stored = state.get_watermark(WATERMARK_KEY)
    assert stored is not None and stored <= datetime.now(UTC)


# ------------------------------------------------------------------------------- physical bounds


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("ttft_ms", 1e300, "ttft_ms: out of range 1e+300 > 3600000.0"),
        ("latency_p99_ms", 4e6, "latency_p99_ms: out of range 4000000.0 > 3600000.0"),
        ("tokens_per_s", 1e12, "tokens_per_s: out of range 1000000000000.0 > 100000000.0"),
    ],
)
def test_performance_measures_have_physical_bounds(column: str, value: float, reason: str) -> None:
    frame = rows(Domain.PERFORMANCE, 2, **{column: [1.0, value]})
    assert reasons(Domain.PERFORMANCE, frame) == [reason]


def test_memory_used_above_memory_total_is_rejected() -> None:
    frame = rows(Domain.RESOURCE, 3, gpu_mem_used_gib=[79.0, 80.0, 81.5])
    assert reasons(Domain.RESOURCE, frame) == ["gpu_mem_used_gib: 81.5 above gpu_mem_total_gib 80.0"]


def test_power_and_price_have_physical_bounds() -> None:
    assert reasons(Domain.RESOURCE, rows(Domain.RESOURCE, 1, power_w=[5e5])) == [
        "power_w: out of range 500000.0 > 20000.0"
    ]
    cost = rows(Domain.COST, 1, price_usd_per_hour=[1e9], instance_type=["p5"], lifecycle=["spot"])
    assert reasons(Domain.COST, cost) == ["price_usd_per_hour: out of range 1000000000.0 > 1000.0"]


# -------------------------------------------------------------------------- re-collection


def test_recollecting_a_window_after_a_crash_is_idempotent(store: ChdbMetricStore) -> None:
    window = rows(Domain.RESOURCE, 120)
    first = ingest(store, Domain.RESOURCE, window.head(70), FLEET)  # the crash: half of it landed
    assert first.accepted == 70
    again = ingest(store, Domain.RESOURCE, window, FLEET)  # the collection watermark did not move
    assert (again.accepted, again.quarantined, again.already_stored) == (50, 0, 70)
    assert store.count("resource_metrics") == 120
    assert store.count("metric_quarantine") == 0


def test_recollected_quality_rows_are_matched_by_request(store: ChdbMetricStore) -> None:
    batch = rows(Domain.QUALITY, 4)
    ingest(store, Domain.QUALITY, batch.head(2), FLEET)
    again = ingest(store, Domain.QUALITY, batch, FLEET)
    assert (again.accepted, again.quarantined, again.already_stored) == (2, 0, 2)


def test_a_recollected_row_that_differs_is_still_a_duplicate(store: ChdbMetricStore) -> None:
    window = rows(Domain.RESOURCE, 10)
    ingest(store, Domain.RESOURCE, window, FLEET)
    changed = window.with_columns(
        pl.when(pl.int_range(pl.len()) == 9).then(9.0).otherwise(pl.col("power_w")).alias("power_w")
    )
    again = ingest(store, Domain.RESOURCE, changed, FLEET)
    assert (again.accepted, again.quarantined, again.already_stored) == (0, 1, 9)
    assert again.reasons == {"ts: duplicate": 1}


def test_recollected_rows_with_unreported_measures_match(store: ChdbMetricStore) -> None:
    window = rows(Domain.PERFORMANCE, 6, ttft_ms=[None, 1.0, None, 2.0, 3.0, None])
    first = ingest(store, Domain.PERFORMANCE, window, FLEET, unreported_ok=True)
    assert first.accepted == 6
    again = ingest(store, Domain.PERFORMANCE, window, FLEET, unreported_ok=True)
    assert (again.accepted, again.quarantined, again.already_stored) == (0, 0, 6)


# ---------------------------------------------------------------------------- hourly rollups


def test_hourly_average_skips_unreported_nan(store: ChdbMetricStore) -> None:
    window = rows(Domain.PERFORMANCE, 4, ttft_ms=[100.0, None, 300.0, None])
    assert ingest(store, Domain.PERFORMANCE, window, FLEET, unreported_ok=True).accepted == 4
    hourly = store.hourly(Domain.PERFORMANCE, "d-1")
    assert hourly["samples"].to_list() == [4]
    assert hourly["ttft_ms_avg"].to_list() == [pytest.approx(200.0)]


# --------------------------------------------------------------------- a crash mid-collection


class _KilledMidCollection(ChdbMetricStore):
    """The real store, with the process killed after ``inserts`` domain inserts (before the collection
    watermark moves): the fault the issue reproduced by restarting a worker."""

    def __init__(self, path: Path, inserts: int) -> None:
        super().__init__(path)
        self.inserts_left = inserts

    def insert_polars(self, table: str, frame: pl.DataFrame) -> None:
        if self.inserts_left == 0:
            raise KeyboardInterrupt("worker killed")
        self.inserts_left -= 1
        super().insert_polars(table, frame)


def test_a_collection_restarted_after_a_crash_quarantines_nothing(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(second=30, microsecond=0)

    def collect(state: StateStore, store: ChdbMetricStore) -> CollectionReport:
        return collect_metrics(
            state,
            store,
            lambda step_s: SandboxSource(seed=5, step_s=step_s),
            now,
            backfill_days=1,
            backfill_step_s=300,
        )

    def fresh(folder: Path) -> StateStore:
        state = StateStore(sqlite_url(folder / "state.db"))
        state.migrate()
        ensure_sandbox_fleet(state, seed=5, now=now - timedelta(days=30))
        return state

    clean_state, clean_store = fresh(tmp_path / "clean"), ChdbMetricStore(tmp_path / "clean" / "chdb")
    clean_store.migrate()
    collect(clean_state, clean_store)
    expected = {d: clean_store.count(SCHEMAS[d].table) for d in Domain}

    state = fresh(tmp_path / "crash")
    killed = _KilledMidCollection(tmp_path / "crash" / "chdb", inserts=2)
    killed.migrate()
    with pytest.raises(KeyboardInterrupt):
        collect(state, killed)
    assert state.get_watermark(WATERMARK_KEY) is None  # nothing marked collected: all of it is re-collected
    store = ChdbMetricStore(tmp_path / "crash" / "chdb")
    again = collect(state, store)
    assert {d: again.total(d, "quarantined") for d in Domain} == dict.fromkeys(Domain, 0)
    assert sum(again.total(d, "already_stored") for d in Domain) > 0
    assert {d: store.count(SCHEMAS[d].table) for d in Domain} == expected
    assert store.count("metric_quarantine") == 0


def test_the_freshness_check_ignores_rows_dated_in_the_future(tmp_path: Path) -> None:
    from optiinfra_assets.assets.metrics import METRIC_CHECKS
    from resources.dagster_resources import MetricStoreResource

    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    schema = SCHEMAS[Domain.PERFORMANCE]
    stale = rows(Domain.PERFORMANCE, 1, start=NOW - timedelta(days=2))
    poisoned = rows(Domain.PERFORMANCE, 1, start=datetime(2099, 1, 1, tzinfo=UTC))
    store.insert_polars(schema.table, pl.concat([stale, poisoned]).cast(schema.polars_schema))
    store.close()
    (check,) = [c for c in METRIC_CHECKS if f"{schema.table}_fresh" in {k.name for k in c.check_keys}]
    result = check(metric_store=MetricStoreResource(home=str(tmp_path)))
    assert not result.passed  # the newest real row is two days old
    assert result.metadata["newest_row_age_minutes"].value > 2 * 24 * 60 - 1
