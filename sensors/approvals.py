"""The approval gate's Dagster side: launch one executor run per approval, and deal with failed runs."""

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from optiinfra_assets.jobs import recommendation_executor_job
from optiinfra_assets.models import Approval, ExecutionStatus, Recommendation
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.reconcile import EXECUTOR_MAX_RUNTIME, roll_back_and_fail
from resources.dagster_resources import FleetResource, StateStoreResource

APPROVALS_PER_TICK = 1000
MAX_RESUMES = 2  # a rollout whose executor died this many times is rolled back and marked failed
# Run monitoring fails an executor run that outlives this; the default run launcher cannot see a
# killed run worker, so this bound is what turns a silent death into a failure (and a resume).
EXECUTOR_TAGS = {"dagster/max_runtime": str(int(EXECUTOR_MAX_RUNTIME.total_seconds()))}
# A run requested this long ago that the instance still does not show is requested again (its run key
# keeps a decision from ever running twice).
REREQUEST_AFTER_S = 300
RUN_KEY_TAG = "dagster/run_key"


def run_key(approval: Approval) -> str:
    return f"execute-{approval.recommendation_id}-approval-{approval.id}"


def recommendation_tags(rec: Recommendation) -> dict[str, str]:
    """Tags that make an executor run findable in the Dagster UI's run filter by deployment, kind and
    customer (``optiinfra/deployment:acme-chat-8b``)."""
    return {
        "optiinfra/deployment": rec.deployment_id,
        "optiinfra/kind": rec.kind,
        "optiinfra/customer": rec.customer_id,
    }


def _requested(cursor: str | None) -> dict[str, float]:
    """The cursor: run key -> when it was requested. (A bare number is the old high-water mark over
    approval ids, which skipped approvals committed out of order: it is dropped, not trusted.)"""
    try:
        value = json.loads(cursor or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _runs_exist(instance: dg.DagsterInstance, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=recommendation_executor_job.name, tags={RUN_KEY_TAG: keys})
    )
    return {r.dagster_run.tags[RUN_KEY_TAG] for r in records if RUN_KEY_TAG in r.dagster_run.tags}


@dg.sensor(
    job=recommendation_executor_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def approval_sensor(context: dg.SensorEvaluationContext, state_store: StateStoreResource) -> dg.SensorResult:
    """Every approved decision with no execution and no executor run becomes a run, whatever order the
    approvals committed in: the store is asked for all of them each tick (not for ids above a mark).

    The run_key is the approval, so a decision launches at most one run even if it is requested twice; the
    cursor remembers what was requested until the instance shows the run, so a tick does not repeat it."""
    state = state_store.get()
    awaiting = state.approvals_awaiting_execution(limit=APPROVALS_PER_TICK)
    by_key = {run_key(a): a for a in awaiting}
    now = time.time()
    requested = {k: t for k, t in _requested(context.cursor).items() if k in by_key}
    launched = _runs_exist(context.instance, list(by_key))
    due = [
        a
        for key, a in by_key.items()
        if key not in launched and now - requested.get(key, -REREQUEST_AFTER_S) >= REREQUEST_AFTER_S
    ]
    requested = {k: t for k, t in requested.items() if k not in launched} | {run_key(a): now for a in due}
    cursor = json.dumps(requested, sort_keys=True)
    if not due:
        return dg.SensorResult(skip_reason="no approved decision without a run", cursor=cursor)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=a.recommendation_id,
                run_key=run_key(a),
                tags={
                    **EXECUTOR_TAGS,
                    **recommendation_tags(state.get_recommendation(a.recommendation_id)),
                    "optiinfra/approved_by": a.by,
                    "optiinfra/approval_id": str(a.id),
                    "optiinfra/via": a.via,
                },
            )
            for a in due
        ],
        # Idempotent: recommendations created by the asset already have their partition.
        dynamic_partitions_requests=[
            recommendation_partitions.build_add_request([a.recommendation_id for a in due])
        ],
        cursor=cursor,
    )


@dg.run_failure_sensor(
    monitored_jobs=[recommendation_executor_job],
    request_job=recommendation_executor_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def execution_failure_sensor(
    context: dg.RunFailureSensorContext, state_store: StateStoreResource, fleet: FleetResource
) -> Iterator[dg.RunRequest]:
    """Record every failed executor run. A run that died mid-rollout (the execution is still
    'running') is resumed from its recorded stage; after MAX_RESUMES the deployment is restored to its
    config before the change and the execution and recommendation are marked failed, saying why. (A run
    that failed before its execution existed is the reconciler's: it marks it failed with this message.)"""
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
    rec = state.get_recommendation(rec_id)
    if resumes < MAX_RESUMES:
        yield dg.RunRequest(
            partition_key=rec_id,
            run_key=f"resume-{rec_id}-{run.run_id}",
            tags={
                **EXECUTOR_TAGS,
                **recommendation_tags(rec),
                "optiinfra/resume": str(resumes + 1),
            },
        )
        return
    reason = f"executor died {resumes + 1} times (last at the {execution.stage}% stage)"
    roll_back_and_fail(
        state, fleet.fleet_target(state), rec, execution, reason, datetime.now(UTC), actor="dagster"
    )
