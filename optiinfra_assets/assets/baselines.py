"""Per-domain baselines: robust statistics per customer, deployment and hour of week."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from optiinfra_assets.agents.baselines import ALL_HOURS, BASELINE_METRICS, compute_baselines
from optiinfra_assets.assets.automation import ANALYSIS_AUTOMATION
from optiinfra_assets.assets.metrics import RAW_METRIC_SPECS
from optiinfra_assets.metrics import Domain
from optiinfra_assets.reporting import table
from resources.dagster_resources import MetricStoreResource

LOOKBACK_DAYS = 7


def _summary(rows: pl.DataFrame) -> dg.MetadataValue:
    """Per deployment and metric: the median over hours of week of the hourly medians, and coverage."""
    rows = rows.filter(pl.col("hour_of_week") < ALL_HOURS)  # leave out the whole-week rows
    if rows.is_empty():
        return dg.MetadataValue.md("_no data yet_")
    summary = (
        rows.group_by("deployment_id", "metric")
        .agg(
            pl.col("median").median().round(3).alias("median"),
            pl.col("mad").median().round(3).alias("mad"),
            pl.col("hour_of_week").n_unique().alias("hours_covered"),
            pl.col("n").sum().alias("samples"),
        )
        .sort("deployment_id", "metric")
    )
    return table(summary.to_dicts())


def _baseline_asset(domain: Domain) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{domain}_baselines",
        group_name="baselines",
        deps=[RAW_METRIC_SPECS[domain].key],
        kinds={"clickhouse"},
        automation_condition=ANALYSIS_AUTOMATION,
        description=f"Median, MAD, p05 and p95 of {', '.join(BASELINE_METRICS[domain])} per customer, "
        f"deployment and hour of week (UTC) over the last {LOOKBACK_DAYS} days.",
    )
    def baselines(metric_store: MetricStoreResource) -> dg.MaterializeResult:
        store = metric_store.get()
        with store.session():
            rows = compute_baselines(store, domain, datetime.now(UTC), lookback_days=LOOKBACK_DAYS)
        return dg.MaterializeResult(
            metadata={
                "baseline_rows": rows.height,
                "deployments": rows["deployment_id"].n_unique() if rows.height else 0,
                "hours_of_week_covered": rows.filter(pl.col("hour_of_week") < ALL_HOURS)[
                    "hour_of_week"
                ].n_unique(),
                "summary": _summary(rows),
            }
        )

    return baselines


BASELINE_ASSETS = {domain: _baseline_asset(domain) for domain in BASELINE_METRICS}  # no per-GPU baselines
