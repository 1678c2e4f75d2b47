"""Executed changes: one partition per recommendation, applied in stages with automatic rollback."""

import dagster as dg

from optiinfra_assets.agents.rollout import NotApprovedError, execute
from optiinfra_assets.models import ExecutionStatus
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.reporting import table
from optiinfra_assets.workflow import rollout_context
from resources.dagster_resources import WorkflowResource

CHECK_NOT_ROLLED_BACK = "not_rolled_back"


@dg.asset(
    group_name="executions",
    partitions_def=recommendation_partitions,
    kinds={"python"},
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NOT_ROLLED_BACK,
            asset="change_executions",
            description="The change went through every stage; fails (warns) when it was rolled back.",
        )
    ],
)
def change_executions(context: dg.AssetExecutionContext, workflow: WorkflowResource):
    """Applies an approved recommendation stage by stage, running its capability's checks between stages;
    rolls back by itself when a check fails. Re-checks the approval first and refuses otherwise."""
    rec_id = context.partition_key
    services = workflow.services()
    rec = services.state.get_recommendation(rec_id)
    try:
        execution = execute(rollout_context(services, rec_id, log=context.log.info), rec_id, context.run_id)
    except NotApprovedError as exc:
        raise dg.Failure(description=str(exc)) from exc
    stages = [
        {
            "stage": f"{s.stage_pct}%",
            "on_new_config": s.target_count,
            "applied_at": s.applied_at.strftime("%H:%M:%S"),
            "check": {True: "passed", False: "FAILED", None: "pending"}[s.check_passed],
            **{f"{c.name}": c.value for c in s.checks},
            **{f"{c.name}_baseline": c.baseline for c in s.checks},
            **{f"{c.name}_threshold": c.threshold for c in s.checks},
            "reason": s.reason,
        }
        for s in execution.stages
    ]
    if execution.status is ExecutionStatus.FAILED:
        raise dg.Failure(description=f"execution of {rec_id} failed: {execution.reason}")
    rolled_back = execution.status is ExecutionStatus.ROLLED_BACK
    yield dg.MaterializeResult(
        metadata={
            "status": execution.status.value,
            "kind": rec.kind,
            "deployment": rec.deployment_id,
            "stage": execution.stage,
            "rolled_back": rolled_back,
            "reason": execution.reason or "all stages passed",
            "stages": table(stages),
        },
        tags={"optiinfra/deployment": rec.deployment_id, "optiinfra/kind": rec.kind},
    )
    yield dg.AssetCheckResult(
        check_name=CHECK_NOT_ROLLED_BACK,
        passed=not rolled_back,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"rolled back at {execution.stage}%: {execution.reason}" if rolled_back else "completed",
    )
