"""The fleet inventory and the four raw metric assets, with their freshness and well-formedness checks."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from optiinfra_assets.agents.application.llm_judge import JudgeSummary, RequestJudging, judge_of
from optiinfra_assets.collection import collect_metrics
from optiinfra_assets.config import Settings
from optiinfra_assets.ingest import DEFAULT_MAX_CLOCK_SKEW
from optiinfra_assets.metrics import SCHEMAS, Domain, ThrottleReason
from optiinfra_assets.reporting import table
from optiinfra_assets.workflow import ensure_sandbox_fleet, fleet_summary
from resources.dagster_resources import FleetResource, LlmResource, MetricStoreResource, StateStoreResource

GROUP = "metrics"
# How stale the newest row of a domain may be before its freshness check fails (the refresh sensor
# runs every 30 s; cost rows land once a minute; quality is sampled).
MAX_STALENESS = {Domain.COST: 5, Domain.PERFORMANCE: 3, Domain.RESOURCE: 3, Domain.QUALITY: 5, Domain.GPU: 3}
# The per-GPU readings the gpu_metrics materialization shows: the most throttled, then the busiest GPUs.
GPU_TABLE_ROWS = 10
_THROTTLING_BITS = sum(bits for bits, _ in ThrottleReason.GROUPS.values())


@dg.asset(group_name=GROUP, kinds={"sqlite"})
def fleet_inventory(
    context: dg.AssetExecutionContext, state_store: StateStoreResource, fleet: FleetResource
) -> dg.MaterializeResult:
    """Customers, deployments and running instances. Seeds the sandbox fleet on first start."""
    state = state_store.get()
    if fleet.metrics_source == "sandbox" and ensure_sandbox_fleet(state, fleet.seed, datetime.now(UTC)):
        context.log.info("seeded the sandbox fleet (seed %s)", fleet.seed)
    rows = fleet_summary(state)
    return dg.MaterializeResult(
        metadata={
            "customers": len(state.list_customers()),
            "deployments": len(rows),
            "running_instances": sum(r["on_demand"] + r["spot"] for r in rows),
            "spot_instances": sum(r["spot"] for r in rows),
            "fleet": table(rows),
        }
    )


def _spec(domain: Domain) -> dg.AssetSpec:
    schema = SCHEMAS[domain]
    return dg.AssetSpec(
        schema.table,
        group_name=GROUP,
        deps=[fleet_inventory],
        kinds={"clickhouse"},
        description=f"Raw {domain} metrics ({schema.resolution} per {'GPU' if schema.series else 'instance'}), "
        "validated; "
        f"malformed rows go to metric_quarantine. Retention {schema.retention_days} days.",
    )


RAW_METRIC_SPECS = {domain: _spec(domain) for domain in Domain}


def _customer_summary(store, domain: Domain, since: datetime) -> dg.MetadataValue:
    schema = SCHEMAS[domain]
    measures = [m.name for m in schema.measures][:3]
    averages = ", ".join(f"round(avg({m}), 3) AS avg_{m}" for m in measures)
    frame = store.query_polars(
        f"SELECT customer_id, count() AS rows, uniqExact(instance_id) AS instances, {averages} "
        f"FROM {store.database}.{schema.table} WHERE ts >= {{since:DateTime64(3, 'UTC')}} "
        "GROUP BY customer_id ORDER BY customer_id",
        {"since": since},
    )
    return table(frame.to_dicts())


@dg.multi_asset(specs=list(RAW_METRIC_SPECS.values()))
def raw_metrics(
    context: dg.AssetExecutionContext,
    state_store: StateStoreResource,
    metric_store: MetricStoreResource,
    fleet: FleetResource,
    llm: LlmResource,
):
    """Collects from the configured source since the last watermark (a week of backfill at first
    start), validates every row and ingests it. One materialization per domain. With an LLM configured,
    a bounded sample of the stored requests is judged by it too, and its disagreement with the offline
    scorer is on the quality materialization."""
    state, store = state_store.get(), metric_store.get()
    now = datetime.now(UTC).replace(microsecond=0)
    decisions = Settings.from_env().decisions
    judge = judge_of(llm.get(), decisions, state)
    judging = None if judge is None else RequestJudging(judge, decisions.llm_judge_requests_per_run)
    report = collect_metrics(
        state,
        store,
        lambda step_s: fleet.metric_source(state, step_s),
        now,
        backfill_days=fleet.backfill_days,
        backfill_step_s=fleet.backfill_step_s,
        log=context.log.info,
        judging=judging,
    )
    since = report.windows[0].start if report.windows else now
    for domain, spec in RAW_METRIC_SPECS.items():
        reasons = report.reasons(domain)
        with store.session():
            summary = _customer_summary(store, domain, since)
        yield dg.MaterializeResult(
            asset_key=spec.key,
            metadata={
                "rows_received": report.total(domain, "received"),
                "rows_accepted": report.total(domain, "accepted"),
                "rows_quarantined": report.total(domain, "quarantined"),
                # Re-collected after a crash, identical to what was stored: skipped, not malformed.
                "rows_already_stored": report.total(domain, "already_stored"),
                "windows": len(report.windows),
                "backfill": any(w.is_backfill for w in report.windows),
                "source_status": "; ".join(sorted(set(report.statuses))) or "no new window",
                "quarantine_reasons": table([{"reason": r, "rows": n} for r, n in sorted(reasons.items())]),
                "per_customer": summary,
                "window_start": since.isoformat(),
                "window_end": now.isoformat(),
                **(_judge_metadata(report.judged) if domain == Domain.QUALITY else {}),
                **(_gpu_metadata(store, since) if domain == Domain.GPU else {}),
            },
        )


def _gpu_metadata(store, since: datetime) -> dict[str, object]:
    """Counts the UI plots over materializations (GPUs reporting, throttled, under the idle line, their mean
    utilization) and the latest reading of the most throttled and busiest GPUs of the window."""
    table_name = f"{store.database}.{SCHEMAS[Domain.GPU].table}"
    idle_line = Settings.from_env().decisions.idle_gpu_util_pct
    with store.session():
        latest = store.query_polars(
            "SELECT customer_id, deployment_id, instance_id, gpu_index, max(ts) AS latest_ts, "
            "argMax(gpu_util_pct, ts) AS util_pct, argMax(gpu_mem_used_gib, ts) AS mem_used_gib, "
            "argMax(power_w, ts) AS power_w, argMax(sm_clock_mhz, ts) AS sm_clock_mhz, "
            "argMax(throttle_reasons, ts) AS throttle_reasons "
            f"FROM {table_name} WHERE ts >= {{since:DateTime64(3, 'UTC')}} "
            "GROUP BY customer_id, deployment_id, instance_id, gpu_index",
            {"since": since},
        )
    if latest.is_empty():
        return {"gpus": 0, "gpus_throttled": 0, "gpus_idle": 0}
    throttled = latest["throttle_reasons"].fill_nan(0.0).cast(pl.Int64).to_numpy() & _THROTTLING_BITS != 0
    shown = (
        latest.with_columns(
            pl.Series("throttled", throttled), pl.col("latest_ts").dt.to_string("%Y-%m-%d %H:%M:%S")
        )
        .sort(["throttled", "util_pct"], descending=True, nulls_last=True)
        .head(GPU_TABLE_ROWS)
        .with_columns(pl.col(pl.Float64).round(1))
    )
    return {
        "gpus": latest.height,
        "gpus_throttled": int(throttled.sum()),
        "gpus_idle": int((latest["util_pct"].fill_nan(None) < idle_line).sum()),
        "mean_gpu_util_pct": round(float(latest["util_pct"].fill_nan(None).mean() or 0.0), 2),
        "latest_per_gpu": table(shown.to_dicts()),
    }


def _judge_metadata(summary: JudgeSummary | None) -> dict[str, object]:
    """The LLM judge's sample on the quality materialization: how many judged, how many disagree with the
    offline scorer and by how much on average, and the requests furthest apart."""
    if summary is None:
        return {"llm_judge": "off: no LLM model configured (OPTIINFRA_LLM_MODEL)"}
    return {
        "llm_judge": summary.model,
        "llm_judge_judged": summary.judged,
        "llm_judge_cached": summary.cached,
        "llm_judge_disagreeing": summary.disagreeing,
        **{f"llm_judge_mean_abs_diff_{name}": v for name, v in summary.mean_abs_difference.items()},
        "llm_judge_unjudged": table(
            [{"reason": r, "requests": n} for r, n in sorted(summary.unjudged.items())]
        ),
        "llm_judge_most_disagreeing": table(summary.most_disagreeing),
    }


def _freshness_check(domain: Domain) -> dg.AssetChecksDefinition:
    schema = SCHEMAS[domain]

    @dg.asset_check(
        asset=RAW_METRIC_SPECS[domain].key,
        name=f"{schema.table}_fresh",
        description=f"The newest {domain} row is at most {MAX_STALENESS[domain]} min old.",
    )
    def check(metric_store: MetricStoreResource) -> dg.AssetCheckResult:
        store = metric_store.get()
        # Rows dated in the future (stored before ingestion refused them) must not pass this forever.
        newest = store.query_polars(
            "SELECT max(ts) AS newest, count() AS n "
            f"FROM {store.database}.{schema.table} WHERE ts <= {{until:DateTime64(3, 'UTC')}}",
            {"until": datetime.now(UTC) + DEFAULT_MAX_CLOCK_SKEW},
        )
        n = int(newest["n"][0])
        age_min = (datetime.now(UTC) - newest["newest"][0]).total_seconds() / 60 if n else float("inf")
        limit = MAX_STALENESS[domain]
        return dg.AssetCheckResult(
            # A domain no source may have (per-GPU rows from a Prometheus scrape) is not stale when empty.
            passed=age_min <= limit or (n == 0 and schema.optional),
            metadata={
                "newest_row_age_minutes": round(age_min, 2) if n else -1,
                "limit_minutes": limit,
                "rows": n,
            },
            description=f"newest {domain} row is {age_min:.1f} min old (limit {limit} min)",
        )

    return check


def _well_formed_check(domain: Domain) -> dg.AssetChecksDefinition:
    schema = SCHEMAS[domain]
    bad = " OR ".join(
        # NaN is "not reported" (a scraper whose server does not export the measure); inf never is valid.
        f"isInfinite({m.name}) OR {m.name} < {m.lo}"
        + (f" OR {m.name} > {m.hi}" if m.hi != float("inf") else "")
        for m in schema.measures
    )

    @dg.asset_check(
        asset=RAW_METRIC_SPECS[domain].key,
        name=f"{schema.table}_well_formed",
        description=f"No {domain} row of the last hour is infinite or outside its measure's bounds.",
    )
    def check(metric_store: MetricStoreResource) -> dg.AssetCheckResult:
        store = metric_store.get()
        since = datetime.now(UTC) - timedelta(hours=1)
        stored = store.query_polars(
            f"SELECT countIf({bad}) AS bad, count() AS n FROM {store.database}.{schema.table} "
            "WHERE ts >= {since:DateTime64(3, 'UTC')}",
            {"since": since},
        )
        quarantined = store.query_polars(
            f"SELECT count() AS n FROM {store.database}.metric_quarantine "
            "WHERE domain = {domain:String} AND received_at >= {since:DateTime64(3, 'UTC')}",
            {"domain": domain.value, "since": since},
        )
        n_bad, n = int(stored["bad"][0]), int(stored["n"][0])
        n_quarantined = int(quarantined["n"][0])
        ratio = n_quarantined / max(1, n + n_quarantined)
        return dg.AssetCheckResult(
            passed=n_bad == 0 and ratio <= 0.05,
            severity=dg.AssetCheckSeverity.ERROR if n_bad else dg.AssetCheckSeverity.WARN,
            metadata={
                "invalid_stored_rows": n_bad,
                "rows_last_hour": n,
                "quarantined_last_hour": n_quarantined,
                "quarantine_ratio": round(ratio, 4),
            },
            description=f"{n_bad} invalid stored rows; {n_quarantined} quarantined in the last hour",
        )

    return check


METRIC_CHECKS = [make(domain) for domain in Domain for make in (_freshness_check, _well_formed_check)]
