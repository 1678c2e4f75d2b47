"""The ``budget_forecasts`` asset: each customer's month-end spend with its 80% and 95% intervals and its
budget, as numeric metadata the Dagster UI plots over materializations, and a check that warns when the
upper bound crosses a budget (the computation: agents/cost/budget_forecast.py; the same forecasts raise
the ``budget_alerts`` findings of the analysis pass)."""

from datetime import UTC, datetime

import dagster as dg

from optiinfra_assets.agents.cost.budget_forecast import BudgetForecast, budget_forecasts
from optiinfra_assets.assets.automation import ANALYSIS_AUTOMATION
from optiinfra_assets.assets.metrics import RAW_METRIC_SPECS
from optiinfra_assets.config import Settings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.reporting import table
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import COST_LOOKBACK
from resources.dagster_resources import MetricStoreResource, StateStoreResource

WITHIN_BUDGET_CHECK = "month_end_within_budget"


def budget_metadata(forecasts: list[BudgetForecast], skipped: dict[str, str]) -> dict[str, object]:
    metadata: dict[str, object] = {"customers": len(forecasts)}
    for f in forecasts:
        for name in (
            "spent_usd",
            "month_end_usd",
            "lower_80_usd",
            "upper_80_usd",
            "lower_95_usd",
            "upper_95_usd",
        ):
            metadata[f"{f.customer_id}/{name}"] = getattr(f, name)
        if f.budget_usd is not None:
            metadata[f"{f.customer_id}/budget_usd"] = f.budget_usd
    metadata["forecasts"] = table([f.model_dump(mode="json") for f in forecasts])
    metadata["skipped"] = table([{"customer": c, "reason": why} for c, why in sorted(skipped.items())])
    return metadata


@dg.asset(
    name="budget_forecasts",
    group_name="cost",
    deps=[RAW_METRIC_SPECS[Domain.COST].key],
    kinds={"clickhouse", "python"},
    automation_condition=ANALYSIS_AUTOMATION,
    check_specs=[
        dg.AssetCheckSpec(
            WITHIN_BUDGET_CHECK,
            asset="budget_forecasts",
            description="No customer's month-end upper bound (DecisionSettings.budget_interval_pct) crosses "
            "its monthly budget.",
        )
    ],
    description="Month-end spend per customer from the shared forecaster, with 80% and 95% intervals, "
    "against the customer's monthly budget (numeric metadata, plotted over time).",
)
def budget_forecasts_asset(state_store: StateStoreResource, metric_store: MetricStoreResource):
    pct = Settings.from_env().decisions.budget_interval_pct
    store, state, now = metric_store.get(), state_store.get(), datetime.now(UTC)
    with store.session():  # only the spend: one query, not the analysis pass's whole snapshot
        cost = store.hourly_cost(since=now - COST_LOOKBACK)
    snapshot = FleetSnapshot(
        customers=state.list_customers(),
        deployments=state.list_deployments(),
        instances=[],
        taken_at=now,
        hourly={str(Domain.COST): cost},
    )
    forecasts, skipped = budget_forecasts(snapshot)
    yield dg.MaterializeResult(metadata=budget_metadata(forecasts, skipped))
    over = [f for f in forecasts if f.crosses_budget(pct)]
    yield dg.AssetCheckResult(
        check_name=WITHIN_BUDGET_CHECK,
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(
            f"{f.customer_id}: {pct}% upper bound ${f.upper(pct):,.0f} over the budget ${f.budget_usd:,.0f}"
            for f in over
        )
        or f"{len(forecasts)} customers within budget",
        metadata={"over_budget": len(over)},
    )
