"""Rollback on degradation outside rollouts: a sustained drop after our change is rolled back by policy;
a drop with nothing of ours to blame is an alert with the evidence; a dip is nothing."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
from workflow_fixtures import GOOD, NOW, run_rollout

from optiinfra_assets import sandbox
from optiinfra_assets.agents.application.degradation import (
    Change,
    QualityDegradation,
    QualityRollback,
    QualityRollbackEvidence,
)
from optiinfra_assets.agents.capability import Proposal, Skip
from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import ExecutionStatus, Fault, FaultKind, Lifecycle, Risk
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import decide, run_analysis_pass

HOURS = 48


def _snapshot(quality: np.ndarray, changes: list[Change]) -> FleetSnapshot:
    customers, deployments, instances = sandbox.initial_fleet(1, NOW - timedelta(days=30))
    hours = [NOW - timedelta(hours=len(quality) - k) for k in range(len(quality))]
    hourly = pl.DataFrame(
        {"customer_id": "acme", "deployment_id": GOOD, "hour": hours, "quality_score_avg": quality}
    )
    return FleetSnapshot(
        customers=customers,
        deployments=deployments,
        instances=instances,
        hourly={"quality": hourly},
        changes=changes,
    )


def _steady() -> np.ndarray:
    return 0.88 + 0.005 * np.random.default_rng(1).standard_normal(HOURS)


def _change(snapshot: FleetSnapshot, hours_before_drop: float, *, still_running: bool = True) -> Change:
    current = next(d for d in snapshot.deployments if d.id == GOOD).config
    before = current.model_copy(update={"on_demand_replicas": current.on_demand_replicas + 1})
    return Change(
        recommendation_id="rec-earlier",
        kind="right_sizing",
        deployment_id=GOOD,
        finished_at=NOW - timedelta(hours=2 + hours_before_drop),
        before=before,
        after=current if still_running else before,
    )


def test_a_sustained_drop_after_our_change_is_rolled_back_by_policy() -> None:
    quality = _steady()
    quality[-2:] = 0.80  # two hours 9% below baseline
    snapshot = _snapshot(quality, [])
    change = _change(snapshot, hours_before_drop=3)
    snapshot.changes = [change]
    (finding,) = QualityDegradation().detect(snapshot, DecisionSettings())
    assert finding.severity == Risk.HIGH and finding.deployment_id == GOOD
    assert "rec-earlier" in finding.summary and "rolled back by policy" in finding.summary
    assert "baseline of 0.88" in finding.explanation
    (proposal,) = QualityRollback().analyze(snapshot, DecisionSettings())
    assert isinstance(proposal, Proposal) and proposal.desired == change.before
    assert isinstance(proposal.evidence, QualityRollbackEvidence)
    assert proposal.evidence.rolled_back_recommendation_id == "rec-earlier"
    assert proposal.evidence.drop_pct > 5
    assert QualityRollback().policy_approval(proposal.current, proposal.desired)


def test_a_drop_with_nothing_of_ours_to_blame_is_an_alert() -> None:
    quality = _steady()
    quality[-2:] = 0.80
    snapshot = _snapshot(quality, [])
    # A change too long before the drop, and one whose config no longer runs, are not blamed.
    snapshot.changes = [_change(snapshot, hours_before_drop=30), _change(snapshot, 1, still_running=False)]
    (finding,) = QualityDegradation().detect(snapshot, DecisionSettings())
    assert "no change by OptiInfra to blame: alert" in finding.summary
    assert "0.800" in finding.explanation  # the hours are the evidence
    (skip,) = QualityRollback().analyze(snapshot, DecisionSettings())
    assert isinstance(skip, Skip) and "no change of ours" in skip.reason


def test_a_dip_or_a_small_drop_is_no_degradation() -> None:
    dip = _steady()
    dip[-1] = 0.70  # one hour: not sustained
    small = _steady()
    small[-2:] = 0.86  # sustained, but 2% is within the gate
    for quality in (dip, small):
        snapshot = _snapshot(quality, [])
        snapshot.changes = [_change(snapshot, 1)]
        assert QualityDegradation().detect(snapshot, DecisionSettings()) == []
    # The gate is the settings': at 1% the small drop counts.
    snapshot = _snapshot(small, [])
    assert QualityDegradation().detect(snapshot, DecisionSettings(max_quality_drop_pct=1)) != []


def test_end_to_end_a_change_then_a_sustained_drop_is_undone_without_a_click(svc, clock) -> None:
    state = svc.state
    report = run_analysis_pass(svc, clock(), capabilities=(SpotMigration(),), detectors=())
    (rec,) = [r for r in report.capabilities["spot_migration"].created if r.deployment_id == GOOD]
    decide(state, rec.id, "approve", "alice", "go", "cli", now=clock())
    assert run_rollout(svc, clock, rec.id).status == ExecutionStatus.SUCCEEDED
    assert {i.lifecycle for i in state.list_instances(GOOD)} == {Lifecycle.SPOT}
    # The new config's answers go bad an hour after the rollout (not during it): 20% lower quality.
    fault = Fault(
        deployment_id=GOOD,
        kind=FaultKind.QUALITY_DEGRADATION,
        params={"drop_pct": 20, "scope": "all", "mode": "hallucination"},
        created_at=NOW + timedelta(hours=1),
    )
    later = NOW + timedelta(hours=3)
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(include_ended=True),
        [fault],
        clock(),
        later,
        seed=11,
        step_s=600,
        quality_sample_s=60,
    )
    # The test's clock runs ahead of the real one: ingestion judges "in the future" by it.
    ingested = ingest(svc.metrics, Domain.QUALITY, frames[Domain.QUALITY], state.instance_index(), now=later)
    assert ingested.quarantined == 0, ingested.reasons
    clock.now = later
    report = run_analysis_pass(
        svc, later, capabilities=(QualityRollback(),), detectors=(QualityDegradation(),)
    )
    (finding,) = [f for f in report.detectors["quality_degradation"].findings if f.deployment_id == GOOD]
    assert rec.id in finding.summary
    (rollback,) = report.capabilities["quality_rollback"].created
    assert rollback.id in report.capabilities["quality_rollback"].auto_approved  # by the written policy
    assert rollback.desired == rec.current
    assert run_rollout(svc, clock, rollback.id).status == ExecutionStatus.SUCCEEDED
    assert {i.lifecycle for i in state.list_instances(GOOD)} == {Lifecycle.ON_DEMAND}
    approval = state.get_approval(rollback.id)
    assert approval is not None and approval.via == "policy"


def test_a_change_made_after_the_drop_began_is_not_blamed() -> None:
    """An autoscaler reacting to bad answers changes the deployment after they began: not the cause."""
    quality = _steady()
    quality[-4:] = 0.80  # the drop began 4 hours ago; the window is the last 2
    snapshot = _snapshot(quality, [])
    after_start = _change(snapshot, hours_before_drop=-1)  # finished 1 hour before the window: in the drop
    snapshot.changes = [after_start]
    (finding,) = QualityDegradation().detect(snapshot, DecisionSettings())
    assert "no change by OptiInfra to blame" in finding.summary
    before_start = _change(snapshot, hours_before_drop=3)  # 5 hours before the window's start: before it
    snapshot.changes = [after_start, before_start]
    (finding,) = QualityDegradation().detect(snapshot, DecisionSettings())
    assert "rolled back by policy" in finding.summary
