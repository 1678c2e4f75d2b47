"""Autoscaling's fast path: the autoscaling capability alone, every two minutes, so that scaling reacts
within minutes while the full analysis refreshes every 15. Its in-bounds changes are approved by the
capability's written policy and launched by the approval sensor like any other approved change."""

from datetime import UTC, datetime

import dagster as dg

from optiinfra_assets.agents import find_capability
from optiinfra_assets.agents.resource.autoscaling import KIND
from optiinfra_assets.assets.baselines import BASELINE_ASSETS
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.reporting import table
from optiinfra_assets.workflow import run_analysis_pass
from resources.dagster_resources import WorkflowResource

FAST_PATH_AUTOMATION = (
    (
        dg.AutomationCondition.on_cron("*/2 * * * *")
        | (dg.AutomationCondition.missing() & ~dg.AutomationCondition.any_deps_missing())
    )
    & ~dg.AutomationCondition.in_progress()
).with_label("every 2 minutes, or at once when missing")


@dg.asset(
    group_name="resource",
    deps=[asset.key for asset in BASELINE_ASSETS.values()],
    automation_condition=FAST_PATH_AUTOMATION,
    kinds={"python"},
    description="Autoscaling alone on a fresh snapshot every 2 minutes (in-bounds scaling approved by policy).",
)
def autoscaling_fast_path(
    context: dg.AssetExecutionContext, workflow: WorkflowResource
) -> dg.MaterializeResult:
    services = workflow.services()
    report = run_analysis_pass(
        services, datetime.now(UTC), capabilities=(find_capability(KIND),), detectors=()
    )
    mine = report.capabilities[KIND]
    created = [r.id for r in mine.created]
    if created:
        context.instance.add_dynamic_partitions(recommendation_partitions.name, created)
    return dg.MaterializeResult(
        metadata={
            "proposals": mine.proposals,
            "created": len(created),
            "auto_approved": len(mine.auto_approved),
            "error": mine.error or "",
            "decisions": table(
                [
                    {"deployment": r.deployment_id, "summary": r.summary, "status": r.status.value}
                    for r in mine.created
                ]
                + [
                    {"deployment": d, "summary": why, "status": "skipped"}
                    for d, why in sorted(mine.skipped.items())
                ]
            ),
        }
    )
