"""The recommendation lifecycle end to end: real SQLite/PostgreSQL, chdb and Qdrant local mode.

Seed the sandbox fleet, ingest a day of history, compute baselines, propose, decide, execute, remember;
then a quality fault rolls a second change back, and the next proposal for that deployment is riskier.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from workflow_fixtures import GOOD, NOW, Clock, run_rollout

from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.config import Settings
from optiinfra_assets.models import (
    ExecutionStatus,
    Fault,
    FaultKind,
    Lifecycle,
    RecommendationStatus,
    Risk,
)
from optiinfra_assets.workflow import (
    CapabilityReport,
    Services,
    decide,
    open_services,
    run_analysis_pass,
)
from resources.memory_store import QdrantMemoryStore
from resources.state_store import RecommendationError
from resources.targets import SandboxTarget


def spot(svc: Services, now: datetime) -> CapabilityReport:
    """One analysis pass; what the spot-migration capability did in it."""
    report = run_analysis_pass(svc, now)
    assert all(r.error is None for r in report.capabilities.values()), report.capabilities
    return report.capabilities["spot_migration"]


def test_propose_approve_execute_remember_then_learn_from_a_rollback(svc: Services, clock: Clock) -> None:
    state = svc.state

    # ---- propose: a validated, risk-assessed spot migration for the good candidate
    report = spot(svc, clock())
    by_dep = {r.deployment_id: r for r in report.created}
    assert GOOD in by_dep, report.skipped
    good = by_dep[GOOD]
    assert good.status == RecommendationStatus.PENDING
    assert {v.agent for v in good.validations} == {"performance", "resource", "application"}
    assert all(v.passed for v in good.validations)
    assert good.risk_assessment is not None
    assert good.risk_assessment.method == "deterministic (no LLM configured)"
    assert good.risk_assessment.similar_outcomes == []
    assert set(good.features) >= {"interruption_rate", "risk_score"}
    assert "does not allow spot" in report.skipped["umbrella-sum-mixtral"]
    not_eligible = [d for d, why in report.skipped.items() if why.startswith("not eligible")]
    assert report.proposals + len(not_eligible) == len(state.list_deployments())
    # Only a customer with a written policy has changes approved by it (the sandbox's vandelay, issue 10).
    assert {r.customer_id for r in report.created if r.id in report.auto_approved} <= {"vandelay"}
    # Proposing again finds it open.
    again = spot(svc, clock())
    assert again.skipped[GOOD].startswith("already open")

    # ---- decide and execute
    decide(state, good.id, "approve", "alice", "savings are worth it", "cli", now=clock())
    execution = run_rollout(svc, clock, good.id)
    assert execution.status == ExecutionStatus.SUCCEEDED, execution.reason
    assert {i.lifecycle for i in state.list_instances(GOOD)} == {Lifecycle.SPOT}
    assert svc.memory.count("spot_migration") == 1

    # ---- a second candidate rolls back under a quality fault on spot
    pending = [
        r for r in report.created if r.deployment_id != GOOD and r.status == RecommendationStatus.PENDING
    ]
    assert pending, "expected a second approvable spot migration"
    bad = pending[0]
    first_score = bad.risk_score
    state.add_fault(
        Fault(
            deployment_id=bad.deployment_id,
            kind=FaultKind.QUALITY_DEGRADATION,
            params={"drop_pct": 12, "scope": "spot"},
            created_at=clock(),
        )
    )
    decide(state, bad.id, "approve", "alice", "try it", "ui", now=clock())
    rolled = run_rollout(svc, clock, bad.id)
    assert rolled.status == ExecutionStatus.ROLLED_BACK
    assert "quality check failed" in rolled.reason and "A/B degraded" in rolled.reason
    assert "over the 5% threshold" in rolled.reason
    assert {i.lifecycle for i in state.list_instances(bad.deployment_id)} == {Lifecycle.ON_DEMAND}
    assert state.get_recommendation(bad.id).status == RecommendationStatus.ROLLED_BACK

    # ---- proposing again for that deployment: the rollback is recalled and raises the risk
    later = spot(svc, clock())
    (retry,) = [r for r in later.created if r.deployment_id == bad.deployment_id]
    assert retry.risk_assessment is not None
    recalled = {o.recommendation_id: o for o in retry.risk_assessment.similar_outcomes}
    assert bad.id in recalled and recalled[bad.id].rolled_back
    assert recalled[bad.id].similarity > 0.9
    assert retry.risk_score > first_score


def test_written_policy_auto_approves_low_risk(svc: Services, clock: Clock) -> None:
    state = svc.state
    for customer in state.list_customers():
        state.upsert_customer(customer.model_copy(update={"auto_approve_max_risk": Risk.HIGH}))

    report = spot(svc, clock())

    pending = [r for r in report.created if r.status == RecommendationStatus.PENDING]
    assert pending and sorted(report.auto_approved) == sorted(r.id for r in pending)
    rec = state.get_recommendation(pending[0].id)
    assert rec.status == RecommendationStatus.APPROVED
    assert rec.decided_by == "policy:auto-approve-max-risk-high"
    assert (
        rec.decision_comment is not None
        and "auto-approve changes at or below high risk" in rec.decision_comment
    )
    blocked = [r for r in report.created if r.status == RecommendationStatus.BLOCKED]
    assert all(r.id not in report.auto_approved for r in blocked)


def test_decide_names_the_bad_field(svc: Services, clock: Clock) -> None:
    report = spot(svc, clock())
    rec_id = report.created[0].id

    with pytest.raises(ValueError, match=r"decision: expected one of approve, reject, got 'yes'"):
        decide(svc.state, rec_id, "yes", "alice", "", "cli")
    with pytest.raises(ValueError, match=r"by: must name who decides, got '  '"):
        decide(svc.state, rec_id, "approve", "  ", "", "cli")
    with pytest.raises(ValueError, match=r"via: expected one of cli, ui, policy, got 'email'"):
        decide(svc.state, rec_id, "approve", "alice", "", "email")
    with pytest.raises(RecommendationError, match="unknown recommendation"):
        decide(svc.state, "rec-nope", "approve", "alice", "", "cli")


def test_open_services_builds_every_store(tmp_path: Path) -> None:
    svc = open_services(Settings(home=tmp_path, seed=3, rollout_soak_s=3, recommendation_ttl_h=6))
    try:
        assert svc.state.url == f"sqlite:///{tmp_path / 'state.db'}"
        assert isinstance(svc.memory, QdrantMemoryStore)
        assert isinstance(svc.target, SandboxTarget) and svc.target.seed == 3
        assert svc.llm is None and svc.soak_s == 3
        assert svc.recommendation_ttl == timedelta(hours=6)
        assert svc.metrics.count("schema_migrations") >= 1
    finally:
        svc.state.dispose()
    with pytest.raises(ValueError, match="target"):
        open_services(Settings(home=tmp_path, target="aws"))


def test_blocked_recommendations_are_refreshed_not_piled_up(svc: Services, clock: Clock) -> None:
    first = spot(svc, NOW)
    blocked = {r.deployment_id: r.id for r in first.created if r.status is RecommendationStatus.BLOCKED}
    assert blocked, "the sandbox has deployments the other agents block"
    again = spot(svc, NOW + timedelta(minutes=15))
    assert not [r for r in again.created if r.deployment_id in blocked]
    for deployment_id, rec_id in blocked.items():
        assert (
            again.skipped[deployment_id].startswith("still blocked")
            and rec_id in again.skipped[deployment_id]
        )
    stored = svc.state.list_recommendations(status="blocked")
    assert sorted(r.id for r in stored) == sorted(blocked.values())

    # Once the blocking agent is satisfied, the blocked one is withdrawn and a pending one replaces it.
    # acme-chat-70b is blocked by the performance agent alone (losing 1 of 2 replicas breaks the SLO).
    old_id = blocked["acme-chat-70b"]
    assert [v.agent for v in svc.state.get_recommendation(old_id).validations if not v.passed] == [
        "performance"
    ]
    customer = svc.state.get_customer("acme")
    svc.state.upsert_customer(customer.model_copy(update={"slo_p95_latency_ms": 10_000_000.0}))
    # Spot migration alone: with so loose an SLO right-sizing would shrink the deployment for far more.
    third = run_analysis_pass(svc, NOW + timedelta(minutes=30), capabilities=(SpotMigration(),))
    third = third.capabilities["spot_migration"]
    [replacement] = [r for r in third.created if r.deployment_id == "acme-chat-70b"]
    assert replacement.status is RecommendationStatus.PENDING and replacement.id != old_id
    assert svc.state.get_recommendation(old_id).status is RecommendationStatus.EXPIRED
    assert any(e.action == "withdraw" for e in svc.state.list_audit(old_id))
