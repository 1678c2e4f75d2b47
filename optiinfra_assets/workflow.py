"""The recommendation lifecycle as plain functions: propose (analyze, validate, assess, store), decide (a
person or a written policy), execute (staged rollout) and remember. Dagster assets, sensors and the CLI
call these; nothing here imports Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from optiinfra_assets import sandbox
from optiinfra_assets.agents import application, performance, resource
from optiinfra_assets.agents.baselines import overall_baseline
from optiinfra_assets.agents.coordination import resolve_conflicts, validation_status
from optiinfra_assets.agents.cost import (
    KIND as SPOT_KIND,
)
from optiinfra_assets.agents.cost import (
    SpotAnalysis,
    analyze_spot_migration,
    spot_migration_recommendation,
    spot_scenario_features,
)
from optiinfra_assets.agents.risk import assess_risk
from optiinfra_assets.agents.rollout import RolloutContext
from optiinfra_assets.config import Settings
from optiinfra_assets.models import (
    Approval,
    Customer,
    Decision,
    Deployment,
    Lifecycle,
    Recommendation,
    RecommendationStatus,
    Risk,
)
from resources.llm import LlmClient, configured_llm
from resources.memory_store import MemoryStore, open_memory_store
from resources.metric_store import MetricStore, open_metric_store
from resources.state_store import StateStore, state_store_url
from resources.targets import Target, open_target

DECISION_CHANNELS = ("cli", "ui", "policy")
_RISK_ORDER = (Risk.LOW, Risk.MEDIUM, Risk.HIGH)


@dataclass
class Services:
    state: StateStore
    metrics: MetricStore
    memory: MemoryStore
    target: Target
    llm: LlmClient | None
    recommendation_ttl: timedelta = timedelta(hours=24)
    soak_s: float = 10.0


def open_services(settings: Settings) -> Services:
    """Every store from the settings, migrated, plus the target and the (optional) LLM."""
    state = StateStore(state_store_url(settings.database_url, settings.home))
    state.migrate()
    metrics = open_metric_store(settings.clickhouse_url, settings.home)
    metrics.migrate()
    return Services(
        state=state,
        metrics=metrics,
        memory=open_memory_store(settings.qdrant_url, settings.home),
        target=open_target(settings.target, state, settings.seed),
        llm=configured_llm(settings.llm_model, settings.llm_timeout_s),
        recommendation_ttl=timedelta(hours=settings.recommendation_ttl_h),
        soak_s=settings.rollout_soak_s,
    )


def fleet_summary(state: StateStore) -> list[dict[str, Any]]:
    """One row per deployment: what it serves, where, and how many replicas run on each lifecycle."""
    running = state.list_instances()
    faults = state.list_faults()
    return [
        {
            "deployment": d.id,
            "customer": d.customer_id,
            "model": d.model,
            "instance_type": d.instance_type,
            "replicas": d.replicas,
            "on_demand": sum(
                1 for i in running if i.deployment_id == d.id and i.lifecycle is Lifecycle.ON_DEMAND
            ),
            "spot": sum(1 for i in running if i.deployment_id == d.id and i.lifecycle is Lifecycle.SPOT),
            "faults": ", ".join(f.kind.value for f in faults if f.deployment_id == d.id),
        }
        for d in state.list_deployments()
    ]


def ensure_sandbox_fleet(state: StateStore, seed: int, now: datetime) -> bool:
    """Seed the sandbox customers, deployments and instances once; True if this call seeded them."""
    if state.list_deployments():
        return False
    customers, deployments, instances = sandbox.initial_fleet(seed, now)
    for customer in customers:
        state.upsert_customer(customer)
    for deployment in deployments:
        state.upsert_deployment(deployment)
    try:
        state.add_instances(instances)
    except sa.exc.IntegrityError:  # another process seeded the same instances meanwhile
        return False
    state.audit(
        "system", "seed_sandbox_fleet", "fleet", "sandbox", {"seed": seed, "instances": len(instances)}
    )
    return True


# ---- proposing -------------------------------------------------------------------------------------


class SpotMigrationReport(BaseModel):
    created: list[Recommendation] = Field(default_factory=list)
    auto_approved: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # deployment -> reason
    analyses: list[dict[str, Any]] = Field(default_factory=list)
    expired: list[str] = Field(default_factory=list)


def peak_requests_per_s(metrics: MetricStore, deployment_id: str, replicas: int) -> float:
    """The deployment's peak load: the baseline's p95 of requests/s times its replicas.

    The baseline aggregates per-instance samples (one row per instance and timestamp), so its p95 is the
    busy end of what one replica serves; the deployment serves that on each replica.
    """
    stat = overall_baseline(metrics, deployment_id, "requests_per_s")
    return 0.0 if stat is None else stat.p95 * replicas


def _validate(svc: Services, customer: Customer, deployment: Deployment, analysis: SpotAnalysis) -> list:
    """The other agents' verdicts on moving this deployment to spot."""
    peak = peak_requests_per_s(svc.metrics, deployment.id, analysis.replicas)
    quality = overall_baseline(svc.metrics, deployment.id, "quality_score")
    return [
        performance.validate_spot_migration(customer, deployment, analysis, peak),
        resource.validate_spot_migration(deployment, analysis),
        application.validate_quality_baseline(quality),
    ]


def _spot_candidate(
    svc: Services, customer: Customer, deployment: Deployment, now: datetime
) -> tuple[SpotAnalysis, Recommendation | None]:
    """The analysis and, when eligible, the validated and risk-assessed recommendation (not stored)."""
    instances = svc.state.list_instances(deployment.id)
    latency = overall_baseline(svc.metrics, deployment.id, "latency_p95_ms")
    analysis = analyze_spot_migration(customer, deployment, instances, latency)
    rec = spot_migration_recommendation(analysis, now, svc.recommendation_ttl)
    if rec is None:
        return analysis, None
    rec.validations = _validate(svc, customer, deployment, analysis)
    rec.status = validation_status(rec.validations)
    features = spot_scenario_features(analysis)
    rec.evidence["features"] = features
    similar = svc.memory.similar(SPOT_KIND, features)
    assessment = assess_risk(rec, similar, svc.llm)
    rec.risk_assessment, rec.risk, rec.risk_score = assessment, assessment.level, assessment.score
    return analysis, rec


def _policy_allows(customer: Customer | None, rec: Recommendation) -> bool:
    if customer is None or customer.auto_approve_max_risk is None:
        return False
    if rec.status != RecommendationStatus.PENDING:
        return False
    return _RISK_ORDER.index(rec.risk) <= _RISK_ORDER.index(customer.auto_approve_max_risk)


def _auto_approve(state: StateStore, customer: Customer, rec: Recommendation, now: datetime) -> Approval:
    level = customer.auto_approve_max_risk
    assert level is not None
    comment = (
        f"written policy of customer {customer.id}: 'auto-approve changes at or below {level.value} risk' "
        f"(auto_approve_max_risk={level.value}); this one is {rec.risk.value} risk ({rec.risk_score:.2f})"
    )
    return state.decide(
        rec.id,
        Decision.APPROVE,
        f"policy:auto-approve-max-risk-{level.value}",
        comment,
        via="policy",
        now=now,
    )


def propose_spot_migrations(svc: Services, now: datetime) -> SpotMigrationReport:
    """Analyze every deployment for spot, validate, assess risk, settle conflicts, store, auto-approve."""
    state = svc.state
    report = SpotMigrationReport(expired=state.expire_recommendations(now))
    customers = {c.id: c for c in state.list_customers()}
    candidates: list[Recommendation] = []
    for deployment in state.list_deployments():
        customer = customers.get(deployment.customer_id)
        if customer is None:
            report.skipped[deployment.id] = f"unknown customer '{deployment.customer_id}'"
            continue
        existing = state.open_recommendation(SPOT_KIND, deployment.id)
        if existing is not None and existing.status is not RecommendationStatus.BLOCKED:
            report.skipped[deployment.id] = f"already open: {existing.id} ({existing.status.value})"
            continue
        analysis, rec = _spot_candidate(svc, customer, deployment, now)
        report.analyses.append(analysis.model_dump(mode="json"))
        if existing is not None and rec is not None and rec.status is RecommendationStatus.BLOCKED:
            _refresh_blocked(state, existing, rec, report)
            continue
        if existing is not None:  # it was blocked; now approvable or no longer eligible: close it
            _withdraw_blocked(state, existing, rec)
        if rec is None:
            report.skipped[deployment.id] = "not eligible: " + "; ".join(analysis.reasons)
        else:
            candidates.append(rec)
    kept, losers = resolve_conflicts(candidates, customers)
    for rec, reason in losers:
        report.skipped[rec.deployment_id] = reason
    for rec in kept:
        _store(state, customers.get(rec.customer_id), rec, now, report)
    return report


def _refresh_blocked(
    state: StateStore, existing: Recommendation, rec: Recommendation, report: SpotMigrationReport
) -> None:
    """Still blocked: update the open blocked recommendation in place (same id) with today's figures."""
    state.update_recommendation(rec.model_copy(update={"id": existing.id, "created_at": existing.created_at}))
    failed = ", ".join(v.agent for v in rec.validations if not v.passed)
    report.skipped[rec.deployment_id] = f"still blocked by {failed}: {existing.id} re-validated"


def _withdraw_blocked(state: StateStore, existing: Recommendation, rec: Recommendation | None) -> None:
    """Close a blocked recommendation whose deployment is now approvable (a new one replaces it) or no
    longer eligible."""
    state.set_recommendation_status(
        existing.id, RecommendationStatus.EXPIRED, expected=[RecommendationStatus.BLOCKED]
    )
    why = f"superseded by {rec.id}" if rec is not None else "no longer eligible"
    state.audit("agent:" + existing.kind, "withdraw", "recommendation", existing.id, {"reason": why})


def _store(
    state: StateStore,
    customer: Customer | None,
    rec: Recommendation,
    now: datetime,
    report: SpotMigrationReport,
) -> None:
    if not state.add_recommendation(rec):  # another run opened one for this deployment meanwhile
        report.skipped[rec.deployment_id] = "already open"
        return
    report.created.append(rec)
    if customer is not None and _policy_allows(customer, rec):
        _auto_approve(state, customer, rec, now)
        report.auto_approved.append(rec.id)


# ---- deciding and executing ------------------------------------------------------------------------


def decide(
    state: StateStore,
    rec_id: str,
    decision: str,
    by: str,
    comment: str,
    via: str,
    *,
    now: datetime | None = None,
) -> Approval:
    """Approve or reject a pending recommendation (CLI, UI or policy). Bad inputs raise a ValueError
    naming the field and the value; the store's RecommendationError says why a decision is refused."""
    values = [d.value for d in Decision]
    if decision not in values:
        raise ValueError(f"decision: expected one of {', '.join(values)}, got {decision!r}")
    if not by or not by.strip():
        raise ValueError(f"by: must name who decides, got {by!r}")
    if via not in DECISION_CHANNELS:
        raise ValueError(f"via: expected one of {', '.join(DECISION_CHANNELS)}, got {via!r}")
    return state.decide(rec_id, Decision(decision), by.strip(), comment, via=via, now=now)


def rollout_context(svc: Services, rec_id: str, **overrides: Any) -> RolloutContext:
    """The executor's context for a recommendation, with its deployment's quality and latency baselines."""
    rec = svc.state.get_recommendation(rec_id)
    settings: dict[str, Any] = {
        "state": svc.state,
        "target": svc.target,
        "quality_baseline": overall_baseline(svc.metrics, rec.deployment_id, "quality_score"),
        "latency_baseline": overall_baseline(svc.metrics, rec.deployment_id, "latency_p95_ms"),
        "memory": svc.memory,
        "soak_s": svc.soak_s,
    }
    return RolloutContext(**(settings | overrides))
