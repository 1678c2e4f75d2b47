"""The recommendation lifecycle as plain functions: one analysis pass (snapshot, every capability, the
other agents' validation, risk, coordination, storage), decisions (a person or a written policy),
execution (staged rollout) and memory. Dagster assets, sensors and the CLI call these; nothing here
imports Dagster, and nothing here names a capability's kind: it iterates the lists it is given.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field, ValidationError

from optiinfra_assets import sandbox
from optiinfra_assets.agents import CAPABILITIES, DETECTORS, VALIDATORS, find_capability
from optiinfra_assets.agents.application.degradation import Change
from optiinfra_assets.agents.baselines import load_overall_baselines
from optiinfra_assets.agents.capability import (
    Capability,
    Detector,
    Finding,
    Proposal,
    Skip,
    ValidationRequest,
    risk_level,
)
from optiinfra_assets.agents.coordination import Settled, Verdict, resolve_conflicts, validation_status
from optiinfra_assets.agents.risk import assess_risk
from optiinfra_assets.agents.rollout import RolloutContext
from optiinfra_assets.config import DecisionSettings, Settings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import (
    Approval,
    Customer,
    Decision,
    DeploymentConfig,
    Lifecycle,
    Recommendation,
    RecommendationStatus,
    Risk,
)
from optiinfra_assets.request_samples import load_worst
from optiinfra_assets.serving import ConfigError, validate_config
from optiinfra_assets.snapshot import USAGE, FleetSnapshot
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
    decisions: DecisionSettings = field(default_factory=DecisionSettings)


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
        decisions=settings.decisions,
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
    for fault in sandbox.initial_faults(now):  # degraded answers, from now on (issue 10)
        state.add_fault(fault)
    state.audit(
        "system", "seed_sandbox_fleet", "fleet", "sandbox", {"seed": seed, "instances": len(instances)}
    )
    return True


# ---- reading the fleet once ------------------------------------------------------------------------

# How far back the detectors look (hourly rollups); a week covers every hour of the week once.
LOOKBACK = timedelta(days=7)
HOURLY_DOMAINS = (Domain.PERFORMANCE, Domain.RESOURCE, Domain.QUALITY)
# Hourly spend goes further back: the budget forecast needs the month so far and the cost anomalies more
# than one week of each hour of the week (one row per deployment, lifecycle and hour: cheap to read).
COST_LOOKBACK = timedelta(days=35)
# Instance-hours per type and lifecycle (snapshot.USAGE) go back as far as the raw cost rows are kept.
USAGE_LOOKBACK = timedelta(days=90)


def load_snapshot(state: StateStore, metrics: MetricStore, now: datetime) -> FleetSnapshot:
    """The fleet and its figures, read once with set-based queries (one per metric domain, whatever the
    number of deployments) inside one engine session."""
    with metrics.session():
        baselines = load_overall_baselines(metrics)
        hourly = {str(d): metrics.hourly(d, since=now - LOOKBACK) for d in HOURLY_DOMAINS}
        hourly[str(Domain.COST)] = metrics.hourly_cost(since=now - COST_LOOKBACK)
        hourly[str(Domain.GPU)] = metrics.hourly_gpus(since=now - LOOKBACK)  # per GPU and hour
        hourly[USAGE] = metrics.hourly_usage(since=now - USAGE_LOOKBACK)
        worst_requests = load_worst(metrics, since=now - timedelta(hours=1))
    return FleetSnapshot(
        customers=state.list_customers(),
        deployments=state.list_deployments(),
        instances=state.list_instances(),
        faults=state.list_faults(),
        taken_at=now,
        baselines=baselines,
        hourly=hourly,
        worst_requests=worst_requests,
        changes=recent_changes(state, now - LOOKBACK),
    )


def recent_changes(state: StateStore, since: datetime) -> list[Change]:
    """The changes that finished applying since ``since``, for the application agent to blame a drop on."""
    return [
        Change(
            recommendation_id=rec.id,
            kind=rec.kind,
            deployment_id=rec.deployment_id,
            finished_at=execution.finished_at,
            before=execution.before or rec.current,
            after=rec.desired,
        )
        for execution, rec in state.finished_changes(since)
        if execution.finished_at is not None
    ]


# ---- one analysis pass -----------------------------------------------------------------------------


class CapabilityReport(BaseModel):
    """What one capability did in a pass (shown on its asset)."""

    kind: str
    agent: str
    proposals: int = 0
    created: list[Recommendation] = Field(default_factory=list)
    auto_approved: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)  # deployment -> reason
    error: str | None = None  # the capability raised or returned invalid output: isolated, recorded
    seconds: float = 0.0  # wall time of its analysis (validation, risk and storage come after, shared)


class DetectorReport(BaseModel):
    name: str
    agent: str
    findings: list[Finding] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class AnalysisReport(BaseModel):
    capabilities: dict[str, CapabilityReport] = Field(default_factory=dict)
    detectors: dict[str, DetectorReport] = Field(default_factory=dict)
    expired: list[str] = Field(default_factory=list)
    deployments: int = 0


def run_analysis_pass(
    svc: Services,
    now: datetime,
    capabilities: Sequence[Capability] = CAPABILITIES,
    detectors: Sequence[Detector] = DETECTORS,
) -> AnalysisReport:
    """Read the fleet once, run every capability and detector on it, validate, assess, coordinate, store.

    A capability or detector that raises, or returns something that is not a valid proposal, is isolated:
    its error is recorded in its report and the others still run.
    """
    report = AnalysisReport(expired=svc.state.expire_recommendations(now))
    snapshot = load_snapshot(svc.state, svc.metrics, now)
    report.deployments = len(snapshot.deployments)
    for det in detectors:
        report.detectors[det.name] = _run_detector(det, snapshot, svc.decisions)
    # Capabilities may act on what the detectors found (an idle GPU, a cost spike).
    snapshot.findings = [f for rep in report.detectors.values() for f in rep.findings]
    open_recs = svc.state.list_open_recommendations()
    open_by_key = {(r.kind, r.deployment_id): r for r in open_recs}
    candidates: list[tuple[Capability, Recommendation, Recommendation | None]] = []
    with svc.memory.session():
        for cap in capabilities:
            cap_report = report.capabilities[cap.kind] = CapabilityReport(kind=cap.kind, agent=cap.agent)
            started = time.perf_counter()
            try:
                items = _analyze(cap, snapshot, svc.decisions)
            except Exception as exc:  # isolation: one capability's bug must not stop the others
                cap_report.error = f"{type(exc).__name__}: {exc}"
                continue
            finally:
                cap_report.seconds = time.perf_counter() - started
            for item in items:
                if isinstance(item, Skip):
                    cap_report.skipped[item.deployment_id] = item.reason
                    continue
                cap_report.proposals += 1
                existing = open_by_key.get((cap.kind, item.deployment_id))
                if existing is not None and existing.status is not RecommendationStatus.BLOCKED:
                    cap_report.skipped[item.deployment_id] = (
                        f"already open: {existing.id} ({existing.status.value})"
                    )
                    continue
                rec = _recommendation(svc, cap, item, snapshot, now)
                candidates.append((cap, rec, existing))
        _coordinate_and_store(svc, capabilities, snapshot, candidates, open_recs, report, now)
    return report


def _analyze(cap: Capability, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Proposal | Skip]:
    """The capability's output, checked: proposals of its kind with its evidence type, or skips."""
    items = list(cap.analyze(snapshot, settings))
    known = {d.id: d for d in snapshot.deployments}
    checked: list[Proposal | Skip] = []
    for item in items:
        if isinstance(item, Skip):
            checked.append(item)
            continue
        if not isinstance(item, Proposal):
            raise TypeError(f"returned a {type(item).__name__}, not a Proposal or Skip")
        if item.kind != cap.kind or not isinstance(item.evidence, cap.evidence_model):
            raise TypeError(
                f"returned a proposal of kind {item.kind!r} with {type(item.evidence).__name__} evidence; "
                f"expected {cap.kind!r} with {cap.evidence_model.__name__}"
            )
        if item.deployment_id not in known:
            raise ValueError(f"proposed a change to unknown deployment {item.deployment_id!r}")
        # Re-validate: a capability may have built its models with model_construct or mutated them.
        Proposal.model_validate(item.model_dump())
        try:  # a config the model or hardware cannot run is never proposed, whoever computed it
            validate_config(known[item.deployment_id].model, item.desired)
        except ConfigError as exc:
            checked.append(Skip(deployment_id=item.deployment_id, reason=f"proposed config rejected: {exc}"))
            continue
        checked.append(item)
    return checked


def _run_detector(det: Detector, snapshot: FleetSnapshot, settings: DecisionSettings) -> DetectorReport:
    report = DetectorReport(name=det.name, agent=det.agent)
    started = time.perf_counter()
    try:
        report.findings = [Finding.model_validate(f) for f in det.detect(snapshot, settings)]
    except (Exception, ValidationError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    report.seconds = time.perf_counter() - started
    return report


def validate_change(
    cap: Capability, proposal: Proposal, snapshot: FleetSnapshot, settings: DecisionSettings
) -> list:
    """The verdicts of the agents the capability asks, each judging the proposed config."""
    deployment = next(d for d in snapshot.deployments if d.id == proposal.deployment_id)
    request = ValidationRequest(
        customer=snapshot.customer_by_id[proposal.customer_id],
        deployment=deployment,
        current=proposal.current,
        proposed=proposal.desired,
        evidence=proposal.evidence,
        baselines=snapshot.baselines.get(proposal.deployment_id, {}),
        settings=settings,
    )
    return [VALIDATORS[agent](request) for agent in cap.validators]


def _recommendation(
    svc: Services, cap: Capability, proposal: Proposal, snapshot: FleetSnapshot, now: datetime
) -> Recommendation:
    """Validated and risk-assessed, not yet stored."""
    settings = svc.decisions
    validations = validate_change(cap, proposal, snapshot, settings)
    features = cap.features(proposal)
    rec = Recommendation(
        id=f"rec-{uuid.uuid4().hex[:12]}",
        kind=cap.kind,
        customer_id=proposal.customer_id,
        deployment_id=proposal.deployment_id,
        status=validation_status(validations),
        created_at=now,
        expires_at=now + svc.recommendation_ttl,
        current=proposal.current,
        desired=proposal.desired,
        stages=[] if cap.advice_only else list(cap.stages or settings.rollout_stages),
        estimate=proposal.estimate,
        risk=risk_level(proposal.risk_score, settings),
        risk_score=proposal.risk_score,
        summary=proposal.summary,
        evidence=proposal.evidence,
        features=features,
        validations=validations,
    )
    if rec.status is RecommendationStatus.BLOCKED:
        rec.status_reason = "blocked by " + "; ".join(
            f"{v.agent}: {v.detail}" for v in validations if not v.passed
        )
    similar = svc.memory.similar(cap.kind, features)
    assessment = assess_risk(rec, similar, svc.llm, settings=settings)
    rec.risk_assessment, rec.risk, rec.risk_score = assessment, assessment.level, assessment.score
    return rec


def reevaluator(svc: Services, capabilities: Sequence[Capability], snapshot: FleetSnapshot, now: datetime):
    """Re-run a losing recommendation's capability on its deployment as if the winner's config applied."""

    def reevaluate(loser: Recommendation, base: DeploymentConfig) -> Recommendation | None:
        # A pass over some capabilities (autoscaling's fast path) may outrank an open one of another kind.
        cap = next((c for c in capabilities if c.kind == loser.kind), None) or find_capability(loser.kind)
        moved = snapshot.with_config(loser.deployment_id, base).only(loser.deployment_id)
        for item in _analyze(cap, moved, svc.decisions):
            if isinstance(item, Proposal) and item.deployment_id == loser.deployment_id:
                return _recommendation(svc, cap, item, moved, now)
        return None

    return reevaluate


def _coordinate_and_store(
    svc: Services,
    capabilities: Sequence[Capability],
    snapshot: FleetSnapshot,
    candidates: list[tuple[Capability, Recommendation, Recommendation | None]],
    open_recs: list[Recommendation],
    report: AnalysisReport,
    now: datetime,
) -> None:
    state = svc.state
    customers = snapshot.customer_by_id
    # A blocked candidate takes no part in conflicts: it refreshes its blocked copy or waits as blocked.
    live = [(cap, rec, old) for cap, rec, old in candidates if rec.status is not RecommendationStatus.BLOCKED]
    verdicts, open_losers = resolve_conflicts(
        [rec for _, rec, _ in live],
        open_recs,
        customers,
        capabilities,
        reevaluator(svc, capabilities, snapshot, now),
    )
    settled = {id(rec): v for (_, rec, _), v in zip(live, verdicts, strict=True)}
    for cap, rec, existing in candidates:
        cap_report = report.capabilities[cap.kind]
        verdict = settled.get(id(rec))
        if rec.status is RecommendationStatus.BLOCKED:
            if existing is not None:
                _refresh_blocked(state, existing, rec, cap_report)
            else:
                _store(state, customers.get(rec.customer_id), rec, now, cap_report)
            continue
        if existing is not None:  # it was blocked; now approvable (or conflicting): the new one replaces it
            _withdraw(state, existing, f"superseded by {rec.id}")
        if verdict is None or verdict.verdict is Verdict.KEEP:
            policy = cap.policy_approval(rec.current, rec.desired)
            _store(state, customers.get(rec.customer_id), rec, now, cap_report, policy)
        elif verdict.verdict is Verdict.ESCALATED:
            escalated = verdict.rec.model_copy(
                update={"status": RecommendationStatus.ESCALATED, "status_reason": verdict.reason}
            )
            _store(state, None, escalated, now, cap_report)
        else:
            cap_report.skipped[rec.deployment_id] = verdict.reason
    for loser in open_losers:
        _settle_open(state, loser)


def _settle_open(state: StateStore, loser: Settled) -> None:
    """An open recommendation outranked by a new one: escalated, or withdrawn with the reason."""
    waiting = [RecommendationStatus.PENDING, RecommendationStatus.ESCALATED]
    if loser.verdict is Verdict.ESCALATED:
        # Stored as re-evaluated: on the winner's config, so approving it later builds on the winner.
        current = state.get_recommendation(loser.rec.id)
        if current.status in waiting:
            state.update_recommendation(
                loser.rec.model_copy(
                    update={"status": RecommendationStatus.ESCALATED, "status_reason": loser.reason}
                )
            )
            state.audit("coordination", "escalate", "recommendation", loser.rec.id, {"reason": loser.reason})
    else:
        _withdraw(state, loser.rec, loser.reason, expected=waiting)


def _refresh_blocked(
    state: StateStore, existing: Recommendation, rec: Recommendation, report: CapabilityReport
) -> None:
    """Still blocked: update the open blocked recommendation in place (same id) with today's figures."""
    state.update_recommendation(rec.model_copy(update={"id": existing.id, "created_at": existing.created_at}))
    failed = ", ".join(v.agent for v in rec.validations if not v.passed)
    report.skipped[rec.deployment_id] = f"still blocked by {failed}: {existing.id} re-validated"


def _withdraw(
    state: StateStore,
    existing: Recommendation,
    why: str,
    expected: Sequence[RecommendationStatus] = (RecommendationStatus.BLOCKED,),
) -> None:
    """Close an open recommendation that no longer stands, saying why."""
    state.set_recommendation_status(existing.id, RecommendationStatus.EXPIRED, expected=expected, reason=why)
    state.audit("agent:" + existing.kind, "withdraw", "recommendation", existing.id, {"reason": why})


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


def _store(
    state: StateStore,
    customer: Customer | None,
    rec: Recommendation,
    now: datetime,
    report: CapabilityReport,
    capability_policy: str | None = None,
) -> None:
    if not state.add_recommendation(rec):  # another run opened one for this deployment meanwhile
        report.skipped[rec.deployment_id] = "already open"
        return
    report.created.append(rec)
    if customer is not None and _policy_allows(customer, rec):
        _auto_approve(state, customer, rec, now)
        report.auto_approved.append(rec.id)
    elif capability_policy is not None and rec.status is RecommendationStatus.PENDING:
        # The capability's written policy (e.g. autoscaling within the approved min/max replicas).
        state.decide(rec.id, Decision.APPROVE, f"policy:{rec.kind}", capability_policy, via="policy", now=now)
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


def rollout_context(
    svc: Services, rec_id: str, capabilities: Sequence[Capability] = CAPABILITIES, **overrides: Any
) -> RolloutContext:
    """The executor's context for a recommendation, with its deployment's baselines."""
    rec = svc.state.get_recommendation(rec_id)
    with svc.metrics.session():
        baselines = load_overall_baselines(svc.metrics).get(rec.deployment_id, {})
    settings: dict[str, Any] = {
        "state": svc.state,
        "target": svc.target,
        "memory": svc.memory,
        "baselines": baselines,
        "capabilities": tuple(capabilities),
        "settings": svc.decisions,
        "soak_s": svc.soak_s,
    }
    return RolloutContext(**(settings | overrides))
