"""One analysis pass as one multi-asset: a recommendations asset per capability and a findings asset per
detector, each in its agent's group, built from the lists in ``optiinfra_assets.agents``.

The pass must be one step because coordination settles conflicts across capabilities. Each capability's
asset carries an ``analysis_ok`` check: a capability that raised or returned invalid output fails its own
check and the others still materialize. A detector's asset fails its check on a high-severity finding.
"""

from datetime import UTC, datetime

import dagster as dg

from optiinfra_assets.agents import CAPABILITIES, DETECTORS
from optiinfra_assets.agents.capability import ANALYSIS_CHECK, FINDINGS_CHECK, Capability, Detector
from optiinfra_assets.assets.automation import ANALYSIS_AUTOMATION
from optiinfra_assets.assets.baselines import BASELINE_ASSETS
from optiinfra_assets.models import Recommendation, RecommendationStatus, Risk
from optiinfra_assets.notifications import record_findings
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.reporting import table
from optiinfra_assets.workflow import AnalysisReport, CapabilityReport, DetectorReport, run_analysis_pass
from resources.dagster_resources import WorkflowResource


def recommendations_key(cap: Capability) -> dg.AssetKey:
    return dg.AssetKey(cap.asset_name)


def findings_key(det: Detector) -> dg.AssetKey:
    return dg.AssetKey(det.asset_name)


def _baseline_deps() -> list[dg.AssetKey]:
    return [asset.key for asset in BASELINE_ASSETS.values()]


def _specs() -> list[dg.AssetSpec]:
    caps = [
        dg.AssetSpec(
            recommendations_key(cap),
            group_name=cap.agent,
            deps=_baseline_deps(),
            description=f"{cap.description} (the {cap.agent} agent's `{cap.kind}` capability)",
            kinds={"python"},
            automation_condition=ANALYSIS_AUTOMATION,
            metadata={"capability": cap.kind, "objective": cap.objective.value},
        )
        for cap in CAPABILITIES
    ]
    dets = [
        dg.AssetSpec(
            findings_key(det),
            group_name=det.agent,
            deps=_baseline_deps(),
            description=det.description,
            kinds={"python"},
            automation_condition=ANALYSIS_AUTOMATION,
            metadata={"detector": det.name},
        )
        for det in DETECTORS
    ]
    return caps + dets


def _check_specs() -> list[dg.AssetCheckSpec]:
    caps = [
        dg.AssetCheckSpec(
            ANALYSIS_CHECK,
            asset=recommendations_key(cap),
            description=f"`{cap.kind}` ran and returned valid proposals (a failure here is isolated).",
        )
        for cap in CAPABILITIES
    ]
    dets = [
        dg.AssetCheckSpec(
            FINDINGS_CHECK,
            asset=findings_key(det),
            description=f"`{det.name}` ran and found nothing of high severity.",
        )
        for det in DETECTORS
    ]
    return caps + dets


def recommendation_row(rec: Recommendation) -> dict[str, object]:
    assessment = rec.risk_assessment
    return {
        "id": rec.id,
        "customer": rec.customer_id,
        "deployment": rec.deployment_id,
        "status": rec.status.value,
        "savings_usd_month": rec.estimate.monthly_savings_usd,
        "changes": ", ".join(f"{k}: {a} → {b}" for k, (a, b) in rec.current.changes(rec.desired).items()),
        "risk": f"{rec.risk.value} ({rec.risk_score:.2f})",
        "validation": ", ".join(f"{v.agent} {'ok' if v.passed else 'FAILED'}" for v in rec.validations),
        "why_not_approvable": rec.status_reason,
        "similar_past": len(assessment.similar_outcomes) if assessment else 0,
        "risk_method": assessment.method if assessment else "",
    }


def _capability_result(
    cap: Capability, report: CapabilityReport, open_recs: list[Recommendation]
) -> tuple[dg.MaterializeResult, dg.AssetCheckResult]:
    key = recommendations_key(cap)
    pending = [r for r in open_recs if r.status is RecommendationStatus.PENDING]
    metadata = {
        "proposals": report.proposals,
        "created": len(report.created),
        "auto_approved": len(report.auto_approved),
        "open": len(open_recs),
        "pending": len(pending),
        "pending_savings_usd_month": round(sum(r.estimate.monthly_savings_usd for r in pending), 2),
        "analysis_seconds": round(report.seconds, 3),
        "new_recommendations": table([recommendation_row(r) for r in report.created]),
        "open_recommendations": table([recommendation_row(r) for r in open_recs]),
        "skipped": table([{"deployment": d, "reason": why} for d, why in sorted(report.skipped.items())]),
    }
    if report.error:
        metadata["error"] = dg.MetadataValue.text(report.error)
    check = dg.AssetCheckResult(
        asset_key=key,
        check_name=ANALYSIS_CHECK,
        passed=report.error is None,
        description=report.error or f"{report.proposals} proposals, {len(report.created)} stored",
    )
    return dg.MaterializeResult(asset_key=key, metadata=metadata), check


def _detector_result(
    det: Detector, report: DetectorReport
) -> tuple[dg.MaterializeResult, dg.AssetCheckResult]:
    key = findings_key(det)
    high = [f for f in report.findings if f.severity is Risk.HIGH]
    rows = [
        f.model_dump(
            mode="json",  # the severity as its text: Dagster serializes no foreign enum
            include={"deployment_id", "severity", "metric", "value", "expected", "since", "explanation"},
        )
        for f in report.findings
    ]
    metadata = {
        "findings": len(report.findings),
        "high_severity": len(high),
        "analysis_seconds": round(report.seconds, 3),
        "table": table(rows),
    }
    if report.error:
        metadata["error"] = dg.MetadataValue.text(report.error)
    passed = report.error is None and not high
    description = report.error or (
        "; ".join(f.summary for f in high) if high else f"{len(report.findings)} findings, none high"
    )
    check = dg.AssetCheckResult(
        asset_key=key,
        check_name=FINDINGS_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR if report.error else dg.AssetCheckSeverity.WARN,
        description=description,
    )
    return dg.MaterializeResult(asset_key=key, metadata=metadata), check


@dg.multi_asset(specs=_specs(), check_specs=_check_specs(), name="agent_analysis")
def agent_analysis(context: dg.AssetExecutionContext, workflow: WorkflowResource):
    """Every capability and detector on one fleet snapshot; validated, risk-assessed, coordinated, stored."""
    services = workflow.services()
    now = datetime.now(UTC)
    report: AnalysisReport = run_analysis_pass(services, now)
    # High and medium findings go to the audit log once each: the live feed shows them and the
    # notifications sensor (and the portal) deliver them to the customers' channels.
    recorded = record_findings(
        services.state, [f for rep in report.detectors.values() for f in rep.findings], now
    )
    if recorded:
        context.log.info(f"{len(recorded)} new findings recorded for notification")
    created = [r.id for rep in report.capabilities.values() for r in rep.created]
    if created:
        # One dynamic partition per recommendation: its executor run is that partition.
        context.instance.add_dynamic_partitions(recommendation_partitions.name, created)
    open_recs = services.state.list_open_recommendations()
    for cap in CAPABILITIES:
        mine = [r for r in open_recs if r.kind == cap.kind]
        yield from _capability_result(cap, report.capabilities[cap.kind], mine)
    for det in DETECTORS:
        yield from _detector_result(det, report.detectors[det.name])
