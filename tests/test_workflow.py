"""The recommendation lifecycle end to end: real SQLite/PostgreSQL, chdb and Qdrant local mode.

Seed the sandbox fleet, ingest a day of history, compute baselines, propose, decide, execute, remember;
then a quality fault rolls a second change back, and the next proposal for that deployment is riskier.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.agents.baselines import compute_baselines
from optiinfra_assets.agents.rollout import execute
from optiinfra_assets.config import Settings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import (
    ExecutionStatus,
    Fault,
    FaultKind,
    Lifecycle,
    RecommendationStatus,
    Risk,
)
from optiinfra_assets.workflow import (
    Services,
    decide,
    ensure_sandbox_fleet,
    open_services,
    propose_spot_migrations,
    rollout_context,
)
from resources.memory_store import QdrantMemoryStore, open_memory_store
from resources.metric_store import open_metric_store
from resources.state_store import RecommendationError, StateStore
from resources.targets import SandboxTarget

SEED = 11
# Near real time: the raw metric tables drop rows past their TTL (30 days), judged by the real clock.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HISTORY = timedelta(days=1)
GOOD = "acme-chat-8b"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _history(state: StateStore, svc: Services) -> None:
    """A day of sandbox metrics at one sample a minute, ingested and turned into baselines."""
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(include_ended=True),
        [],
        NOW - HISTORY,
        NOW,
        seed=SEED,
        step_s=60,
        quality_sample_s=60,
    )
    known = state.instance_index()
    with svc.metrics.session():
        for domain, frame in frames.items():
            report = ingest(svc.metrics, domain, frame, known)
            assert report.quarantined == 0, report.reasons
        for domain in Domain:
            compute_baselines(svc.metrics, domain, NOW)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(state: StateStore, tmp_path: Path, clock: Clock) -> Services:
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    services = Services(
        state=state,
        metrics=metrics,
        memory=open_memory_store("", tmp_path),
        target=SandboxTarget(state, SEED, clock=clock),
        llm=None,
        soak_s=30.0,
    )
    assert ensure_sandbox_fleet(state, SEED, NOW - HISTORY)
    assert not ensure_sandbox_fleet(state, SEED, NOW)  # once only
    _history(state, services)
    return services


def _run(svc: Services, clock: Clock, rec_id: str):
    ctx = rollout_context(svc, rec_id, clock=clock, sleep=clock.advance, observe_s=60)
    return execute(ctx, rec_id, run_id=None)


def test_propose_approve_execute_remember_then_learn_from_a_rollback(svc: Services, clock: Clock) -> None:
    state = svc.state

    # ---- propose: a validated, risk-assessed spot migration for the good candidate
    report = propose_spot_migrations(svc, clock())
    by_dep = {r.deployment_id: r for r in report.created}
    assert GOOD in by_dep, report.skipped
    good = by_dep[GOOD]
    assert good.status == RecommendationStatus.PENDING
    assert {v.agent for v in good.validations} == {"performance", "resource", "application"}
    assert all(v.passed for v in good.validations)
    assert good.risk_assessment is not None
    assert good.risk_assessment.method == "deterministic (no LLM configured)"
    assert good.risk_assessment.similar_outcomes == []
    assert set(good.evidence["features"]) >= {"interruption_rate", "risk_score"}
    assert "does not allow spot" in report.skipped["umbrella-sum-mixtral"]
    assert len(report.analyses) == len(state.list_deployments())
    assert report.auto_approved == []
    # Proposing again finds it open.
    again = propose_spot_migrations(svc, clock())
    assert again.skipped[GOOD].startswith("already open")

    # ---- decide and execute
    decide(state, good.id, "approve", "alice", "savings are worth it", "cli", now=clock())
    execution = _run(svc, clock, good.id)
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
    rolled = _run(svc, clock, bad.id)
    assert rolled.status == ExecutionStatus.ROLLED_BACK
    assert "quality check failed" in rolled.reason and "vs baseline" in rolled.reason
    assert "over the 5% threshold" in rolled.reason
    assert {i.lifecycle for i in state.list_instances(bad.deployment_id)} == {Lifecycle.ON_DEMAND}
    assert state.get_recommendation(bad.id).status == RecommendationStatus.ROLLED_BACK

    # ---- proposing again for that deployment: the rollback is recalled and raises the risk
    later = propose_spot_migrations(svc, clock())
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

    report = propose_spot_migrations(svc, clock())

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
    report = propose_spot_migrations(svc, clock())
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
    svc = open_services(Settings(home=tmp_path, seed=3, rollout_soak_s=2.5, recommendation_ttl_h=6))
    try:
        assert svc.state.url == f"sqlite:///{tmp_path / 'state.db'}"
        assert isinstance(svc.memory, QdrantMemoryStore)
        assert isinstance(svc.target, SandboxTarget) and svc.target.seed == 3
        assert svc.llm is None and svc.soak_s == 2.5
        assert svc.recommendation_ttl == timedelta(hours=6)
        assert svc.metrics.count("schema_migrations") >= 1
    finally:
        svc.state.dispose()
    with pytest.raises(ValueError, match="unknown target 'aws'"):
        open_services(Settings(home=tmp_path, target="aws"))


def test_blocked_recommendations_are_refreshed_not_piled_up(svc: Services, clock: Clock) -> None:
    first = propose_spot_migrations(svc, NOW)
    blocked = {r.deployment_id: r.id for r in first.created if r.status is RecommendationStatus.BLOCKED}
    assert blocked, "the sandbox has deployments the other agents block"
    again = propose_spot_migrations(svc, NOW + timedelta(minutes=15))
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
    third = propose_spot_migrations(svc, NOW + timedelta(minutes=30))
    [replacement] = [r for r in third.created if r.deployment_id == "acme-chat-70b"]
    assert replacement.status is RecommendationStatus.PENDING and replacement.id != old_id
    assert svc.state.get_recommendation(old_id).status is RecommendationStatus.EXPIRED
    assert any(e.action == "withdraw" for e in svc.state.list_audit(old_id))
