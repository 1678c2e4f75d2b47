"""Recommendations: the cost agent's spot migrations, validated by the other agents, risk-assessed
against decision memory, stored as pending (or auto-approved by a written policy)."""

from datetime import UTC, datetime

import dagster as dg

from optiinfra_assets.assets.baselines import BASELINE_ASSETS
from optiinfra_assets.models import Recommendation, RecommendationStatus
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.reporting import md_table
from optiinfra_assets.workflow import propose_spot_migrations
from resources.dagster_resources import WorkflowResource


def recommendation_row(rec: Recommendation) -> dict[str, object]:
    assessment = rec.risk_assessment
    return {
        "id": rec.id,
        "customer": rec.customer_id,
        "deployment": rec.deployment_id,
        "status": rec.status.value,
        "savings_usd_month": rec.estimated_monthly_savings_usd,
        "interruption": rec.evidence.get("interruption_band", ""),
        "risk": f"{rec.risk.value} ({rec.risk_score:.2f})",
        "validation": ", ".join(f"{v.agent} {'ok' if v.passed else 'FAILED'}" for v in rec.validations),
        "similar_past": len(assessment.similar_outcomes) if assessment else 0,
        "risk_method": assessment.method if assessment else "",
        "risk_note": assessment.note if assessment else "",
    }


@dg.asset(
    group_name="recommendations",
    deps=[BASELINE_ASSETS[d].key for d in BASELINE_ASSETS],
    kinds={"python"},
)
def spot_migration_recommendations(
    context: dg.AssetExecutionContext, workflow: WorkflowResource
) -> dg.MaterializeResult:
    """Spot-migration recommendations for every on-demand deployment worth moving."""
    services = workflow.services()
    report = propose_spot_migrations(services, datetime.now(UTC))
    created_ids = [rec.id for rec in report.created]
    if created_ids:
        # One dynamic partition per recommendation: its executor run is that partition.
        context.instance.add_dynamic_partitions(recommendation_partitions.name, created_ids)
    pending = services.state.list_recommendations(status=RecommendationStatus.PENDING, kind="spot_migration")
    return dg.MaterializeResult(
        metadata={
            "created": len(report.created),
            "auto_approved": len(report.auto_approved),
            "pending": len(pending),
            "pending_savings_usd_month": round(sum(r.estimated_monthly_savings_usd for r in pending), 2),
            "new_recommendations": dg.MetadataValue.md(
                md_table([recommendation_row(r) for r in report.created])
            ),
            "pending_recommendations": dg.MetadataValue.md(
                md_table([recommendation_row(r) for r in pending])
            ),
            "skipped": dg.MetadataValue.md(
                md_table([{"deployment": d, "reason": why} for d, why in sorted(report.skipped.items())])
            ),
        }
    )
