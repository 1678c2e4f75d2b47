"""`optiinfra collect --once`: one metrics collection from the configured source, as the raw-metrics asset
runs it but without Dagster, to point OptiInfra at a real server and see what it stores and why it
quarantines what it does not. The previous scrape lives in the state store, so a second call rates
against the first."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from optiinfra_assets.collection import CollectionReport, collect_metrics
from optiinfra_assets.config import Settings
from optiinfra_assets.metrics import Domain
from resources.metric_store import QUARANTINE_TABLE, MetricStore, open_metric_store
from resources.sources import MetricSource, configured_metric_source
from resources.state_store import StateStore, state_store_url

EXAMPLES = 5  # quarantine reasons quoted per domain, in full (the counts are by kind)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    collect = subparsers.add_parser(
        "collect", help="collect metrics once from OPTIINFRA_METRICS_SOURCE; say what was stored"
    )
    collect.add_argument(
        "--once",
        action="store_true",
        required=True,
        help="one collection, then exit (metrics_refresh_sensor collects continuously)",
    )
    collect.add_argument("--json", action="store_true")
    collect.set_defaults(func=cmd_collect)


def _quarantine_examples(store: MetricStore, report: CollectionReport, domain: Domain) -> list[str]:
    batches = [r.batch_id for r in report.reports.get(domain, []) if r.quarantined]
    if not batches:
        return []
    frame = store.query_polars(
        f"SELECT reason FROM {store.database}.{QUARANTINE_TABLE} "
        "WHERE batch_id IN {batches:Array(String)} LIMIT {n:UInt32}",
        {"batches": batches, "n": EXAMPLES},
    )
    return frame["reason"].to_list()


def collection_json(
    source: str, report: CollectionReport, store: MetricStore, state: StateStore
) -> dict[str, Any]:
    return {
        "source": source,
        "statuses": report.statuses,
        "windows": [
            {"start": w.start.isoformat(), "end": w.end.isoformat(), "step_s": w.step_s}
            for w in report.windows
        ],
        "stored": {d.value: report.total(d, "accepted") for d in Domain},
        "quarantined": {
            d.value: {
                "rows": report.total(d, "quarantined"),
                "reasons": report.reasons(d),
                "examples": _quarantine_examples(store, report, d),
            }
            for d in Domain
        },
        "observed_instances": [
            {**o, "first_seen": o["first_seen"].isoformat(), "last_seen": o["last_seen"].isoformat()}
            for o in state.list_observed_instances()
        ],
    }


def _print_text(summary: dict[str, Any]) -> None:
    print(f"source       {summary['source']}: {'; '.join(summary['statuses']) or 'no new window'}")
    print("stored       " + ", ".join(f"{d} {n}" for d, n in summary["stored"].items()))
    for domain, quarantined in summary["quarantined"].items():
        for reason in quarantined["examples"]:
            print(f"quarantined  {domain}: {reason}")
        if quarantined["rows"] > len(quarantined["examples"]):
            print(f"quarantined  {domain}: {quarantined['rows']} rows in all, {quarantined['reasons']}")
    for observed in summary["observed_instances"]:
        print(
            f"unmanaged    {observed['instance_id']} ({observed['source']}, last seen {observed['last_seen']})"
        )


def cmd_collect(args: argparse.Namespace, settings: Settings) -> int:
    state = StateStore(state_store_url(settings.database_url, settings.home))
    store = open_metric_store(settings.clickhouse_url, settings.home)

    def source_for_step(step_s: int) -> MetricSource:
        return configured_metric_source(settings, state, step_s)

    source_for_step(1)  # a bad setting is refused before any store is opened
    state.migrate()
    store.migrate()
    now = datetime.now(UTC).replace(microsecond=0)
    if settings.metrics_source == "sandbox":
        from optiinfra_assets.workflow import ensure_sandbox_fleet  # the sandbox only: the rest stays light

        ensure_sandbox_fleet(state, settings.seed, now)  # as fleet_inventory does before collecting
    report = collect_metrics(
        state,
        store,
        source_for_step,
        now,
        backfill_days=settings.backfill_days,
        backfill_step_s=settings.backfill_step_s,
        log=lambda line: print(line, file=sys.stderr),
    )
    with store.session():
        summary = collection_json(settings.metrics_source, report, store, state)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_text(summary)
    return 0
