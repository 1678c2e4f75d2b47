"""The reconciler's Dagster side: a job that reconciles now, a schedule that runs it every few minutes,
and what Dagster knows of each recommendation's executor runs (the logic is optiinfra_assets/reconcile.py)."""

from collections.abc import Iterable
from datetime import UTC, datetime

import dagster as dg

from optiinfra_assets.agents.rollout import execute
from optiinfra_assets.jobs import recommendation_executor_job
from optiinfra_assets.reconcile import RunFacts, reconcile
from optiinfra_assets.reporting import table
from optiinfra_assets.workflow import rollout_context
from resources.dagster_resources import WorkflowResource
from sensors.refresh import IN_FLIGHT, job_in_flight

PARTITION_TAG = "dagster/partition"
_ENDED_BADLY = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def executor_run_facts(instance: dg.DagsterInstance, rec_ids: Iterable[str]) -> dict[str, RunFacts]:
    """rec id -> what the instance knows of its executor runs (ids with no run are left out)."""
    ids = sorted(set(rec_ids))
    if not ids:
        return {}
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=recommendation_executor_job.name, tags={PARTITION_TAG: ids})
    )
    in_flight: set[str] = set()
    failed: dict[str, int] = {}
    ended: dict[str, datetime] = {}
    for record in records:
        run = record.dagster_run
        rec_id = run.tags.get(PARTITION_TAG)
        if rec_id is None:
            continue
        if run.status in IN_FLIGHT:
            in_flight.add(rec_id)
            continue
        failed[rec_id] = failed.get(rec_id, 0) + (run.status in _ENDED_BADLY)
        end = datetime.fromtimestamp(record.end_time, UTC) if record.end_time else record.update_timestamp
        end = end if end.tzinfo else end.replace(tzinfo=UTC)
        ended[rec_id] = max(ended.get(rec_id, end), end)
    return {
        rec_id: RunFacts(
            in_flight=rec_id in in_flight, failed=failed.get(rec_id, 0), last_ended_at=ended.get(rec_id)
        )
        for rec_id in in_flight | failed.keys() | ended.keys()
    }


@dg.op
def reconcile_changes(context: dg.OpExecutionContext, workflow: WorkflowResource) -> None:
    """Drive every change stuck between states to a final one, and heal capacity lost outside a rollout."""
    services = workflow.services()

    def ensure_outcome(rec_id: str) -> None:  # a finished execution: execute() only records its outcome
        execute(rollout_context(services, rec_id), rec_id, context.run_id)

    report = reconcile(
        services.state,
        services.target,
        datetime.now(UTC),
        lambda rec_ids: executor_run_facts(context.instance, rec_ids),
        ensure_outcome=ensure_outcome,
    )
    for finding in report.findings:
        context.log.info(
            "%s (%s): %s -> %s %s%s",
            finding.subject,
            finding.deployment_id,
            finding.found,
            finding.action.value,
            finding.did,
            f" FAILED: {finding.error}" if finding.error else "",
        )
    context.add_output_metadata(
        {
            "acted": len(report.acted),
            "errors": len(report.errors),
            "findings": table([f.model_dump(mode="json") for f in report.findings]),
        }
    )
    if report.errors:
        raise dg.Failure(
            description="; ".join(f"{f.subject}: {f.error}" for f in report.errors),
            metadata={"errors": len(report.errors)},
        )


@dg.job(
    description="Find every change whose state disagrees with the fleet or the executor's runs and drive it "
    "to a final state (roll back, mark failed, finalize); re-launch capacity lost outside a rollout."
)
def reconcile_job() -> None:
    reconcile_changes()


@dg.schedule(
    job=reconcile_job,
    cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def reconcile_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Reconcile every 5 minutes, unless the previous reconciliation is still running."""
    if job_in_flight(context.instance, reconcile_job.name):
        return dg.SkipReason("the previous reconciliation is still running")
    return dg.RunRequest()
