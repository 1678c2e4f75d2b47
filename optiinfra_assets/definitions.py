"""The Dagster definitions: assembles assets, checks, jobs, sensors, schedules and resources. Nothing else."""

import dagster as dg

from optiinfra_assets.assets.baselines import BASELINE_ASSETS
from optiinfra_assets.assets.executions import change_executions
from optiinfra_assets.assets.metrics import METRIC_CHECKS, fleet_inventory, raw_metrics
from optiinfra_assets.assets.recommendations import spot_migration_recommendations
from optiinfra_assets.assets.registry import agent_registry
from optiinfra_assets.config import apply_env_defaults
from optiinfra_assets.jobs import (
    analysis_refresh_job,
    approve_recommendation_job,
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
)
from sensors.approvals import approval_sensor, execution_failure_sensor
from sensors.refresh import analysis_refresh_schedule, analysis_refresh_sensor, metrics_refresh_sensor

# Unset OPTIINFRA_* variables get their documented defaults (optiinfra_assets/config.py), so every
# EnvVar below resolves however the process was started.
apply_env_defaults()

HOME = dg.EnvVar("OPTIINFRA_HOME")
STATE_STORE = StateStoreResource(home=HOME, database_url=dg.EnvVar("OPTIINFRA_DATABASE_URL"))
METRIC_STORE = MetricStoreResource(home=HOME, clickhouse_url=dg.EnvVar("OPTIINFRA_CLICKHOUSE_URL"))
FLEET = FleetResource(
    source=dg.EnvVar("OPTIINFRA_METRICS_SOURCE"),
    target=dg.EnvVar("OPTIINFRA_TARGET"),
    seed=dg.EnvVar.int("OPTIINFRA_SEED"),
    prometheus_targets=dg.EnvVar("OPTIINFRA_PROMETHEUS_TARGETS"),
    nvml_instance_id=dg.EnvVar("OPTIINFRA_NVML_INSTANCE_ID"),
    backfill_days=dg.EnvVar.int("OPTIINFRA_BACKFILL_DAYS"),
    backfill_step_s=dg.EnvVar.int("OPTIINFRA_BACKFILL_STEP_S"),
    rollout_soak_s=dg.EnvVar.int("OPTIINFRA_ROLLOUT_SOAK_S"),
    recommendation_ttl_h=dg.EnvVar.int("OPTIINFRA_RECOMMENDATION_TTL_H"),
)

defs = dg.Definitions(
    assets=[
        fleet_inventory,
        raw_metrics,
        *BASELINE_ASSETS.values(),
        agent_registry,
        spot_migration_recommendations,
        change_executions,
    ],
    asset_checks=METRIC_CHECKS,
    jobs=[metrics_refresh_job, analysis_refresh_job, recommendation_executor_job, approve_recommendation_job],
    sensors=[metrics_refresh_sensor, analysis_refresh_sensor, approval_sensor, execution_failure_sensor],
    schedules=[analysis_refresh_schedule],
    # Steps share one process: a step per process would re-import the stack (~5 s each on 2 cores)
    # for work that takes well under a second, and the embedded engines serialize access anyway.
    executor=dg.in_process_executor,
    resources={
        "state_store": STATE_STORE,
        "metric_store": METRIC_STORE,
        "fleet": FLEET,
        # The workflow's assets take one resource holding the engines above plus memory and the LLM.
        "workflow": WorkflowResource(
            state_store=STATE_STORE,
            metric_store=METRIC_STORE,
            memory_store=MemoryStoreResource(home=HOME, qdrant_url=dg.EnvVar("OPTIINFRA_QDRANT_URL")),
            llm=LlmResource(
                model=dg.EnvVar("OPTIINFRA_LLM_MODEL"), timeout_s=dg.EnvVar.int("OPTIINFRA_LLM_TIMEOUT_S")
            ),
            fleet=FLEET,
        ),
    },
)
