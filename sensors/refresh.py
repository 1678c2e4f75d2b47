"""Collecting metrics every 30 s, faster than a cron can say. The analysis refreshes itself through the
automation conditions declared on its assets, evaluated by ``automation_sensor``."""

import time

import dagster as dg

from optiinfra_assets.jobs import metrics_refresh_job

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


# Baselines, recommendations, findings and the agent registry declare when they refresh; this evaluates it.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the automation conditions on the analysis assets (every 15 minutes, and at "
    "once when their inputs first exist).",
)
