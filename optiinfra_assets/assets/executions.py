"""Executed changes: one partition per recommendation, applied in stages with automatic rollback."""

import dagster as dg

from optiinfra_assets.agents.rollout import NotApprovedError, execute
from optiinfra_assets.models import ExecutionStatus
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.reporting import md_table
from optiinfra_assets.workflow import rollout_context
from resources.dagster_resources import WorkflowResource


@dg.asset(group_name="executions", partitions_def=recommendation_partitions, kinds={"python"})
def change_executions(context: dg.AssetExecutionContext, workflow: WorkflowResource) -> dg.MaterializeResult:
    """Applies an approved recommendation 10% → 50% → 100%, checking quality and SLO between stages;
    rolls back by itself when a check fails. Re-checks the approval first and refuses otherwise."""
    rec_id = context.partition_key
    services = workflow.services()
    try:
        execution = execute(rollout_context(services, rec_id, log=context.log.info), rec_id, context.run_id)
    except NotApprovedError as exc:
        raise dg.Failure(description=str(exc)) from exc
    stages = [
        {
            "stage": f"{s.stage_pct}%",
            "replicas_moved": s.target_count,
            "applied_at": s.applied_at.strftime("%H:%M:%S"),
            "check": {True: "passed", False: "FAILED", None: "pending"}[s.check_passed],
            "quality": s.observation.get("quality_mean", ""),
            "p95_ms": s.observation.get("latency_p95_ms", ""),
            "reason": s.reason,
        }
        for s in execution.stages
    ]
    if execution.status is ExecutionStatus.FAILED:
        raise dg.Failure(description=f"execution of {rec_id} failed: {execution.reason}")
    return dg.MaterializeResult(
        metadata={
            "status": execution.status.value,
            "stage": execution.stage,
            "rolled_back": execution.status is ExecutionStatus.ROLLED_BACK,
            "reason": execution.reason or "all stages passed",
            "stages": dg.MetadataValue.md(md_table(stages)),
        }
    )
