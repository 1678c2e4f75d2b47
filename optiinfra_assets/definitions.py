"""The Dagster definitions: assembles assets, checks, jobs, sensors and resources. Nothing else.

The analysis assets are built from the capability and detector lists (``optiinfra_assets.agents``), each
in its agent's group; jobs select by group; freshness is one policy per group, applied here.
"""

from datetime import timedelta

import dagster as dg

from optiinfra_assets.agents import AGENTS
from optiinfra_assets.assets.analysis import agent_analysis
from optiinfra_assets.assets.autoscaling import autoscaling_fast_path
from optiinfra_assets.assets.baselines import BASELINE_ASSETS
from optiinfra_assets.assets.budget import budget_forecasts_asset
from optiinfra_assets.assets.cost_quality import cost_per_quality
from optiinfra_assets.assets.executions import change_executions
from optiinfra_assets.assets.metrics import METRIC_CHECKS, fleet_inventory, raw_metrics
from optiinfra_assets.assets.registry import agent_registry
from optiinfra_assets.config import apply_env_defaults, restrict_new_files
from optiinfra_assets.jobs import (
    analysis_refresh_job,
    metrics_refresh_job,
    recommendation_executor_job,
)
from resources.dagster_resources import (
    FleetResource,
    LlmResource,
    MemoryStoreResource,
    MetricStoreResource,
    StateStoreResource,
    WorkflowResource,
    from_env,
)
from sensors.approvals import approval_sensor, execution_failure_sensor
from sensors.notifications import notifications_sensor
from sensors.reconcile import reconcile_job, reconcile_schedule
from sensors.refresh import automation_sensor, metrics_refresh_sensor

# Unset OPTIINFRA_* variables get their defaults (optiinfra_assets/config.py), so every EnvVar resolves
# however the process was started.
apply_env_defaults()
restrict_new_files()  # state files this process creates are owner-only (0600 / 0700)

STATE_STORE = from_env(StateStoreResource)
METRIC_STORE = from_env(MetricStoreResource)
FLEET = from_env(FleetResource)
LLM = from_env(LlmResource)


def resources() -> dict[str, dg.ConfigurableResource]:
    """The one resource mapping, for the definitions and the tests alike."""
    return {
        "state_store": STATE_STORE,
        "metric_store": METRIC_STORE,
        "fleet": FLEET,
        "llm": LLM,  # the raw metrics' LLM judge of sampled requests
        # The workflow's assets take one resource holding the engines above plus memory and the LLM.
        "workflow": from_env(
            WorkflowResource,
            state_store=STATE_STORE,
            metric_store=METRIC_STORE,
            memory_store=from_env(MemoryStoreResource),
            llm=LLM,
            fleet=FLEET,
        ),
    }


# Freshness: metrics are collected every 30 s; the analysis refreshes every 15 minutes.
FRESHNESS = {
    "metrics": dg.FreshnessPolicy.time_window(
        fail_window=timedelta(minutes=10), warn_window=timedelta(minutes=3)
    ),
    "analysis": dg.FreshnessPolicy.time_window(
        fail_window=timedelta(hours=1), warn_window=timedelta(minutes=30)
    ),
}

defs = (
    dg.Definitions(
        assets=[
            fleet_inventory,
            raw_metrics,
            *BASELINE_ASSETS.values(),
            agent_registry,
            agent_analysis,
            autoscaling_fast_path,
            change_executions,
            budget_forecasts_asset,
            cost_per_quality,
        ],
        asset_checks=METRIC_CHECKS,
        jobs=[
            metrics_refresh_job,
            analysis_refresh_job,
            recommendation_executor_job,
            reconcile_job,
        ],
        schedules=[reconcile_schedule],
        sensors=[
            metrics_refresh_sensor,
            automation_sensor,
            approval_sensor,
            execution_failure_sensor,
            notifications_sensor,
        ],
        # Steps share one process: a step per process would re-import the stack (~5 s each on 2 cores)
        # for work that takes well under a second, and the embedded engines serialize access anyway.
        executor=dg.in_process_executor,
        resources=resources(),
    )
    .map_resolved_asset_specs(
        func=lambda spec: dg.apply_freshness_policy(spec, FRESHNESS["metrics"]),
        selection=dg.AssetSelection.groups("metrics"),
    )
    .map_resolved_asset_specs(
        func=lambda spec: dg.apply_freshness_policy(spec, FRESHNESS["analysis"]),
        selection=dg.AssetSelection.groups("baselines", *AGENTS),
    )
)
