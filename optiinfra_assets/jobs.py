"""Jobs: metric refresh, analysis refresh, the partitioned executor, and the UI's decision job."""

import dagster as dg

from optiinfra_assets.agents import AGENTS
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.workflow import decide
from resources.dagster_resources import StateStoreResource
from resources.state_store import RecommendationError

metrics_refresh_job = dg.define_asset_job(
    "metrics_refresh_job",
    selection=dg.AssetSelection.groups("metrics"),
    description="Collect new metrics from the fleet (a week of backfill at first start) and ingest them.",
)

analysis_refresh_job = dg.define_asset_job(
    "analysis_refresh_job",
    selection=dg.AssetSelection.groups("baselines", "agents", *AGENTS),
    description="Recompute baselines, agent health, every capability's recommendations and every "
    "detector's findings now (automation does this every 15 minutes on its own).",
)

recommendation_executor_job = dg.define_asset_job(
    "recommendation_executor_job",
    selection=dg.AssetSelection.groups("executions"),
    partitions_def=recommendation_partitions,
    description="Apply one approved recommendation (partition = its id) in stages with automatic rollback.",
)


class DecisionConfig(dg.Config):
    recommendation_id: str
    decision: str = "approve"  # approve | reject
    approver: str
    comment: str = ""


@dg.op
def record_decision(
    context: dg.OpExecutionContext, config: DecisionConfig, state_store: StateStoreResource
) -> None:
    """Approve or reject a pending recommendation from the UI (the same gate as `optiinfra approve`)."""
    try:
        approval = decide(
            state_store.get(),
            config.recommendation_id,
            config.decision,
            config.approver,
            config.comment,
            via="ui",
        )
    except (RecommendationError, ValueError) as exc:
        raise dg.Failure(description=str(exc)) from exc
    context.log.info(
        "%s %s by %s (approval #%s): %s",
        approval.recommendation_id,
        approval.decision.value,
        approval.by,
        approval.id,
        approval.comment or "-",
    )


@dg.job(
    description="Record a person's decision on a recommendation. Config: recommendation_id, decision, approver."
)
def approve_recommendation_job() -> None:
    record_decision()
