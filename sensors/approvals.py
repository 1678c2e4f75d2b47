"""The approval gate's Dagster side: launch one executor run per approval, and deal with failed runs."""

from collections.abc import Iterator

import dagster as dg

from optiinfra_assets.jobs import recommendation_executor_job
from optiinfra_assets.models import Decision, ExecutionStatus
from optiinfra_assets.partitions import recommendation_partitions
from resources.dagster_resources import StateStoreResource

APPROVALS_PER_TICK = 1000
MAX_RESUMES = 2  # a rollout whose executor died this many times is left for a person, with a record
# Run monitoring fails an executor run that outlives this; the default run launcher cannot see a
# killed run worker, so this bound is what turns a silent death into a failure (and a resume).
EXECUTOR_TAGS = {"dagster/max_runtime": str(30 * 60)}


@dg.sensor(
    job=recommendation_executor_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def approval_sensor(context: dg.SensorEvaluationContext, state_store: StateStoreResource) -> dg.SensorResult:
    """Approvals newer than the cursor (an approval id) become executor runs. The run_key is the
    approval, so a decision launches at most one run even if a tick is evaluated twice."""
    state = state_store.get()
    after = int(context.cursor or 0)
    approvals = state.approvals_since(after, limit=APPROVALS_PER_TICK)
    if not approvals:
        return dg.SensorResult(skip_reason="no new decisions", cursor=str(after))
    approved = [a for a in approvals if a.decision is Decision.APPROVE]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=a.recommendation_id,
                run_key=f"execute-{a.recommendation_id}-approval-{a.id}",
                tags={
                    **EXECUTOR_TAGS,
                    "optiinfra/approved_by": a.by,
                    "optiinfra/approval_id": str(a.id),
                    "optiinfra/via": a.via,
                },
            )
            for a in approved
        ],
        # Idempotent: recommendations created by the asset already have their partition.
        dynamic_partitions_requests=[
            recommendation_partitions.build_add_request([a.recommendation_id for a in approved])
        ]
        if approved
        else [],
        cursor=str(approvals[-1].id),
    )


@dg.run_failure_sensor(
    monitored_jobs=[recommendation_executor_job],
    request_job=recommendation_executor_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def execution_failure_sensor(
    context: dg.RunFailureSensorContext, state_store: StateStoreResource
) -> Iterator[dg.RunRequest]:
    """Record every failed executor run. A run that died mid-rollout (the execution is still
    'running') is resumed from its recorded stage; after MAX_RESUMES it is marked failed for a person."""
    state = state_store.get()
    run = context.dagster_run
    rec_id = run.tags.get("dagster/partition")
    if rec_id is None:
        return
    message = context.failure_event.message or ""
    state.audit(
        "dagster", "executor_run_failed", "recommendation", rec_id, {"run_id": run.run_id, "message": message}
    )
    execution = state.get_execution(rec_id)
    if execution is None or execution.status is not ExecutionStatus.RUNNING:
        return
    resumes = int(run.tags.get("optiinfra/resume", "0"))
    if resumes < MAX_RESUMES:
        yield dg.RunRequest(
            partition_key=rec_id,
            run_key=f"resume-{rec_id}-{run.run_id}",
            tags={**EXECUTOR_TAGS, "optiinfra/resume": str(resumes + 1)},
        )
        return
    execution.status = ExecutionStatus.FAILED
    execution.reason = f"executor died {resumes + 1} times; fleet left at stage {execution.stage}% as recorded; needs a person"
    state.save_execution(execution)
    state.audit("dagster", "execution_abandoned", "recommendation", rec_id, {"stage": execution.stage})
