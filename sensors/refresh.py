"""Keeping the graph fresh without a click: metrics every 30 s, the first analysis as soon as metrics
exist, then analysis on a schedule."""

import time

import dagster as dg

from optiinfra_assets.assets.metrics import RAW_METRIC_SPECS
from optiinfra_assets.assets.recommendations import spot_migration_recommendations
from optiinfra_assets.jobs import analysis_refresh_job, metrics_refresh_job
from optiinfra_assets.metrics import Domain

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def job_in_flight(instance: dg.DagsterInstance, job_name: str) -> bool:
    """A run of the job is queued or running: requesting another would only pile up behind it."""
    runs = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT), limit=1)
    return bool(runs)


@dg.sensor(
    job=metrics_refresh_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING
)
def metrics_refresh_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Collect new metrics every 30 s (the first run backfills a week of sandbox history)."""
    if job_in_flight(context.instance, metrics_refresh_job.name):
        return dg.SkipReason("the previous metrics refresh is still running")
    return dg.RunRequest(run_key=f"metrics-{int(time.time() // 30)}")


@dg.sensor(
    job=analysis_refresh_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING
)
def analysis_refresh_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Run the first analysis as soon as metrics exist; after that analysis_refresh_schedule owns it."""
    instance = context.instance
    if instance.get_latest_materialization_event(RAW_METRIC_SPECS[Domain.PERFORMANCE].key) is None:
        return dg.SkipReason("waiting for the first metrics")
    if instance.get_latest_materialization_event(spot_migration_recommendations.key) is not None:
        return dg.SkipReason("bootstrapped; analysis_refresh_schedule keeps the analysis fresh")
    if job_in_flight(instance, analysis_refresh_job.name):
        return dg.SkipReason("the first analysis is running")
    # A new key every 5 minutes: a failed bootstrap is retried, a running one is not doubled.
    return dg.RunRequest(run_key=f"analysis-bootstrap-{int(time.time() // 300)}")


analysis_refresh_schedule = dg.ScheduleDefinition(
    name="analysis_refresh_schedule",
    job=analysis_refresh_job,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Baselines, agent health and recommendations every 15 minutes.",
)
