"""Planning and running one metrics collection: which time windows to fetch, at which step, and
ingesting what the source returned. Plain Python; the raw-metrics asset is a thin layer over it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl

from optiinfra_assets.agents.application.llm_judge import JudgeSummary, RequestJudging
from optiinfra_assets.ingest import IngestReport, ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.request_samples import ingest_requests
from optiinfra_assets.snapshot import FleetSnapshot
from resources.metric_store import MetricStore
from resources.sources import UNMANAGED_CUSTOMER, MetricSource, SourceBatch, unmanaged_owner
from resources.state_store import StateStore

WATERMARK_KEY = "metrics:collected_until"
LIVE_STEP_S = 1
# A gap longer than this is caught up at the backfill step rather than second by second.
MAX_LIVE_WINDOW = timedelta(minutes=15)
BACKFILL_CHUNK = timedelta(days=1)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    step_s: int

    @property
    def is_backfill(self) -> bool:
        return self.step_s != LIVE_STEP_S


def plan_windows(
    collected_until: datetime | None, now: datetime, *, backfill_days: int, backfill_step_s: int
) -> list[Window]:
    """Windows covering (collected_until, now]: a first start backfills ``backfill_days`` of history in
    day-sized chunks at ``backfill_step_s``; a long gap is caught up the same way; otherwise one live
    window at 1 s. Windows align to whole minutes during catch-up so cost rows stay on the minute."""
    if collected_until is not None and collected_until >= now:
        return []
    if collected_until is not None and now - collected_until <= MAX_LIVE_WINDOW:
        return [Window(collected_until, now, LIVE_STEP_S)]
    start = collected_until or (now - timedelta(days=backfill_days)).replace(second=0, microsecond=0)
    windows: list[Window] = []
    while start < now:
        end = min(start + BACKFILL_CHUNK, now)
        windows.append(Window(start, end, backfill_step_s))
        start = end
    return windows


@dataclass
class CollectionReport:
    windows: list[Window] = field(default_factory=list)
    reports: dict[Domain, list[IngestReport]] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    judged: JudgeSummary | None = None  # the LLM judge's sample of the stored requests, when configured

    def total(self, domain: Domain, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.reports.get(domain, []))

    def reasons(self, domain: Domain) -> dict[str, int]:
        merged: dict[str, int] = {}
        for report in self.reports.get(domain, []):
            for reason, n in report.reasons.items():
                merged[reason] = merged.get(reason, 0) + n
        return merged


def collect_metrics(
    state: StateStore,
    store: MetricStore,
    source_for_step: Callable[[int], MetricSource],
    now: datetime,
    *,
    backfill_days: int,
    backfill_step_s: int,
    log: Callable[[str], None] = lambda _: None,
    judging: RequestJudging | None = None,
) -> CollectionReport:
    """Fetch every planned window from the source, ingest it, and advance the watermark after each
    window (so an interrupted backfill resumes where it stopped). With ``judging``, the LLM judge then
    judges its sample of the requests stored (after the windows: no store session waits on it)."""
    report = CollectionReport()
    collected_until = state.get_watermark(WATERMARK_KEY)
    if source_for_step(LIVE_STEP_S).replays_history:
        windows = plan_windows(
            collected_until, now, backfill_days=backfill_days, backfill_step_s=backfill_step_s
        )
    else:  # a scraper reads the present: one window, whatever the gap
        windows = [Window(collected_until or now - timedelta(seconds=LIVE_STEP_S), now, LIVE_STEP_S)]
    report.windows = windows
    # One read of the fleet per collection: the windows of a run describe the same fleet.
    snapshot = FleetSnapshot(
        customers=state.list_customers(),
        deployments=state.list_deployments(),
        instances=state.list_instances(include_ended=True),
        faults=state.list_faults(),
    )
    owners = snapshot.owners()
    for n, window in enumerate(windows, start=1):
        source = source_for_step(window.step_s)
        batch = source.collect(snapshot, window.start, window.end)
        report.statuses.append(batch.status)
        known = {**owners, **_observe_unmanaged(state, source.name, batch, owners, window.end)}
        with store.session():
            for domain, frame in batch.frames.items():
                report.reports.setdefault(domain, []).append(
                    ingest(store, domain, frame, known, unreported_ok=source.may_omit_measures)
                )
            if batch.requests is not None:
                report.reports.setdefault(Domain.QUALITY, []).append(
                    ingest_requests(store, batch.requests, known, judging=judging)
                )
        state.set_watermark(WATERMARK_KEY, window.end)
        if window.is_backfill:
            log(
                f"backfill {n}/{len(windows)}: {window.start:%Y-%m-%d %H:%M} → {window.end:%Y-%m-%d %H:%M} UTC"
            )
    if judging is not None:
        report.judged = judging.run()
    return report


def _observe_unmanaged(
    state: StateStore,
    source_name: str,
    batch: SourceBatch,
    owners: dict[str, tuple[str, str]],
    at: datetime,
) -> dict[str, tuple[str, str]]:
    """The instances of the batch the fleet does not manage, which the source reported under the
    unmanaged convention (resources.sources.owner_of): recorded as observed, and returned as known so
    that their rows are stored. Any other unknown instance is still quarantined."""
    keys = ["instance_id", "customer_id", "deployment_id"]
    claimed: set[str] = set()
    for frame in batch.frames.values():
        if not set(keys) <= set(frame.columns):
            continue  # ingestion quarantines the batch, naming what is missing
        # Filter first: a sandbox backfill batch holds millions of rows, none of them unmanaged.
        unmanaged = frame.filter(pl.col("customer_id") == UNMANAGED_CUSTOMER).select(keys).unique()
        claimed |= {
            instance_id
            for instance_id, customer_id, deployment_id in unmanaged.iter_rows()
            if instance_id not in owners and (customer_id, deployment_id) == unmanaged_owner(instance_id)
        }
    for instance_id in sorted(claimed):
        state.record_observed_instance(instance_id, source_name, at)
    return {instance_id: unmanaged_owner(instance_id) for instance_id in claimed}
