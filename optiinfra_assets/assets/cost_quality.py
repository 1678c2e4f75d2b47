"""The ``cost_per_quality`` asset: dollars per 1,000 good responses per deployment and model, as numeric
metadata the Dagster UI plots over materializations (the computation: agents/cost/cost_per_quality.py)."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl

from optiinfra_assets.agents.cost.cost_per_quality import cost_per_quality as compute
from optiinfra_assets.agents.cost.cost_per_quality import per_model, read_inputs
from optiinfra_assets.assets.automation import ANALYSIS_AUTOMATION
from optiinfra_assets.assets.metrics import RAW_METRIC_SPECS
from optiinfra_assets.config import Settings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.reporting import table
from resources.dagster_resources import MetricStoreResource, StateStoreResource


def _rounded(frame: pl.DataFrame) -> list[dict[str, object]]:
    return frame.with_columns(pl.selectors.float().round(4)).to_dicts()


def cost_quality_metadata(per_deployment: pl.DataFrame, window: tuple[datetime, datetime]) -> dict:
    """Numbers per deployment and model (plotted over time), the fleet's figure and both tables."""
    models = per_model(per_deployment)
    metadata: dict[str, object] = {
        "window_start": window[0].isoformat(),
        "window_end": window[1].isoformat(),
        "deployments": per_deployment.height,
        "cost_usd": round(float(per_deployment["cost_usd"].sum()), 2),
        "gpu_hours": round(float(per_deployment["gpu_hours"].sum()), 2),
    }
    good = float(per_deployment["good_responses"].sum())
    if good > 0:
        metadata["fleet_usd_per_1k_good"] = round(float(per_deployment["cost_usd"].sum()) / good * 1000, 4)
    for row in per_deployment.iter_rows(named=True):
        if row["usd_per_1k_good"] is not None:
            metadata[f"usd_per_1k_good/{row['deployment_id']}"] = round(row["usd_per_1k_good"], 4)
    for row in models.iter_rows(named=True):
        if row["usd_per_1k_good"] is not None:
            metadata[f"usd_per_1k_good/model/{row['model']}"] = round(row["usd_per_1k_good"], 4)
    metadata["per_deployment"] = table(_rounded(per_deployment))
    metadata["per_model"] = table(_rounded(models))
    return metadata


@dg.asset(
    name="cost_per_quality",
    group_name="cost",
    deps=[RAW_METRIC_SPECS[d].key for d in (Domain.COST, Domain.PERFORMANCE, Domain.QUALITY)],
    kinds={"clickhouse", "python"},
    automation_condition=ANALYSIS_AUTOMATION,
    description="GPU-hours and dollars joined to the quality scores: $ per 1,000 good responses per "
    "deployment and model over the last complete hours (numeric metadata, plotted over time).",
)
def cost_per_quality(
    state_store: StateStoreResource, metric_store: MetricStoreResource
) -> dg.MaterializeResult:
    decisions = Settings.from_env().decisions
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(hours=decisions.cost_per_quality_window_h)
    store = metric_store.get()
    with store.session():
        inputs = read_inputs(store, start, end, decisions.good_response_min_quality)
    state = state_store.get()
    per_deployment = compute(inputs, state.list_deployments(), state.slice_gpus())
    return dg.MaterializeResult(metadata=cost_quality_metadata(per_deployment, (start, end)))
