"""The capability seam: a capability written entirely in this module goes end to end (analyze, validate,
approve, staged rollout on the sandbox, outcome in memory) without editing a project file; a broken one
is isolated; two capabilities on one deployment are coordinated across kinds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import ClassVar, Literal

import pytest
from pydantic import ValidationError
from workflow_fixtures import GOOD, NOW, Clock, run_rollout

from optiinfra_assets.agents import application
from optiinfra_assets.agents.capability import Capability, Estimate, Evidence, Objective, Proposal, Skip
from optiinfra_assets.agents.cost.spot_migration import SpotMigration, SpotMigrationEvidence
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import (
    DeploymentConfig,
    EngineConfig,
    ExecutionStatus,
    RecommendationStatus,
)
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import Services, decide, run_analysis_pass


class BatchEvidence(Evidence):
    kind: Literal["test_batch_limit"] = "test_batch_limit"
    max_num_seqs_from: int
    max_num_seqs_to: int


class BatchLimit(Capability):
    """Doubles max_num_seqs on one deployment: a performance change defined only in this test."""

    kind: ClassVar[str] = "test_batch_limit"
    agent: ClassVar[str] = "performance"
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = "test: raise the batch limit"
    evidence_model = BatchEvidence
    validators = ("resource", "application")
    stage_checks = (application.quality_gate,)

    def __init__(self, deployment_id: str = GOOD, field: str = "max_num_seqs") -> None:
        self.deployment_id, self.field = deployment_id, field

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterator[Proposal | Skip]:
        for dep in snapshot.deployments:
            if dep.id != self.deployment_id:
                yield Skip(deployment_id=dep.id, reason="not the test's deployment")
                continue
            current = dep.config
            engine = current.engine
            if self.field == "max_num_seqs":
                new_engine = engine.model_copy(update={"max_num_seqs": engine.max_num_seqs * 2})
                desired = current.model_copy(update={"engine": new_engine})
            else:  # a change of replica counts, to collide with spot migration
                desired = current.model_copy(update={"on_demand_replicas": current.on_demand_replicas + 1})
            if desired == current:
                continue
            yield Proposal(
                kind=self.kind,
                customer_id=dep.customer_id,
                deployment_id=dep.id,
                current=current,
                desired=desired,
                evidence=BatchEvidence(
                    max_num_seqs_from=engine.max_num_seqs, max_num_seqs_to=desired.engine.max_num_seqs
                ),
                estimate=Estimate(throughput_change_pct=20.0),
                risk_score=0.2,
                summary=f"raise {self.field} of {dep.id}",
            )


class Broken(Capability):
    kind: ClassVar[str] = "test_broken"
    agent: ClassVar[str] = "cost"
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = "test: raises"
    evidence_model = BatchEvidence

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterator[Proposal | Skip]:
        time.sleep(0.05)  # its time is reported even when it fails
        raise RuntimeError("boom")


class WrongEvidence(BatchLimit):
    kind: ClassVar[str] = "test_wrong_evidence"
    evidence_model = SpotMigrationEvidence  # declares one evidence type, returns another


def test_a_capability_defined_in_a_test_goes_end_to_end(svc: Services, clock: Clock) -> None:
    cap = BatchLimit()
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    mine = report.capabilities[cap.kind]
    assert mine.error is None
    (rec,) = mine.created
    assert rec.status is RecommendationStatus.PENDING, rec.status_reason
    assert [v.agent for v in rec.validations] == ["resource", "application"]
    # Stored and read back: typed evidence, both configs, the capability's stages.
    stored = svc.state.get_recommendation(rec.id)
    assert isinstance(stored.evidence, BatchEvidence) and stored.evidence.max_num_seqs_to == 2 * (
        stored.evidence.max_num_seqs_from
    )
    assert set(stored.current.changes(stored.desired)) == {"engine.max_num_seqs"}

    decide(svc.state, rec.id, "approve", "alice", "", "cli", now=clock())
    execution = run_rollout(svc, clock, rec.id, capabilities=(cap,))
    assert execution.status is ExecutionStatus.SUCCEEDED, execution.reason
    assert [s.stage_pct for s in execution.stages] == [10, 50, 100]
    # 10% of 4 replicas is one canary on the new engine; then all of them.
    assert [s.target_count for s in execution.stages] == [1, 2, 4]
    assert all(c.name == "quality" and c.baseline is not None for s in execution.stages for c in s.checks)
    running = svc.state.list_instances(GOOD)
    assert {i.engine.max_num_seqs for i in running} == {rec.desired.engine.max_num_seqs}
    assert svc.state.get_deployment(GOOD).config == rec.desired
    assert svc.memory.count(cap.kind) == 1


def test_a_failing_or_invalid_capability_is_isolated(svc: Services, clock: Clock) -> None:
    report = run_analysis_pass(
        svc, clock(), capabilities=(Broken(), WrongEvidence(), SpotMigration()), detectors=()
    )
    assert report.capabilities["test_broken"].error == "RuntimeError: boom"
    assert report.capabilities["test_broken"].seconds >= 0.05
    assert "BatchEvidence evidence; expected 'test_wrong_evidence' with SpotMigrationEvidence" in (
        report.capabilities["test_wrong_evidence"].error or ""
    )
    spot = report.capabilities["spot_migration"]
    assert spot.error is None and spot.created


def test_cross_kind_conflicts_are_settled_by_priority_then_reevaluation(svc: Services, clock: Clock) -> None:
    # A performance change to the engine and a cost change to the lifecycle mix touch different fields:
    # performance wins, spot migration is re-evaluated on its config and deferred.
    report = run_analysis_pass(svc, clock(), capabilities=(BatchLimit(), SpotMigration()), detectors=())
    assert [r.deployment_id for r in report.capabilities["test_batch_limit"].created] == [GOOD]
    why = report.capabilities["spot_migration"].skipped[GOOD]
    assert "performance outranks cost" in why and "proposed again once" in why

    # A performance change to the replica count collides with spot migration's own fields: escalated.
    report = run_analysis_pass(
        svc,
        clock(),
        capabilities=(BatchLimit("acme-chat-70b", field="replicas"), SpotMigration()),
        detectors=(),
    )
    spot = [r for r in report.capabilities["spot_migration"].created if r.deployment_id == "acme-chat-70b"]
    if spot:  # spot migration of acme-chat-70b is blocked by performance in the sandbox: then no conflict
        assert spot[0].status in (RecommendationStatus.ESCALATED, RecommendationStatus.BLOCKED)
        if spot[0].status is RecommendationStatus.ESCALATED:
            assert "the customer decides" in spot[0].status_reason
            with pytest.raises(Exception, match="a person must"):
                svc.state.decide(spot[0].id, "approve", "policy:x", "", via="policy")


def test_evidence_is_typed_by_kind_on_the_way_back(svc: Services) -> None:
    report = run_analysis_pass(svc, NOW, capabilities=(SpotMigration(),), detectors=())
    for rec in report.capabilities["spot_migration"].created:
        back = svc.state.get_recommendation(rec.id)
        assert isinstance(back.evidence, SpotMigrationEvidence)
        assert back.evidence == rec.evidence


def test_deployment_config_names_the_bad_field() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        DeploymentConfig(instance_type="g6e.xlarge", on_demand_replicas=2, min_replicas=5, max_replicas=3)
    with pytest.raises(ValidationError, match="gpu_memory_utilization"):
        EngineConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValidationError, match="quantization"):
        EngineConfig(quantization="int3")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="replicas"):
        DeploymentConfig(instance_type="g6e.xlarge", on_demand_replicas=0)


def test_the_seam_runs_on_a_fresh_clock(svc: Services) -> None:
    # The analysis is a pure function of the snapshot: the same fleet at the same time proposes the same.
    a = run_analysis_pass(svc, NOW, capabilities=(BatchLimit(),), detectors=())
    assert a.capabilities["test_batch_limit"].created
    b = run_analysis_pass(svc, NOW, capabilities=(BatchLimit(),), detectors=())
    assert b.capabilities["test_batch_limit"].skipped[GOOD].startswith("already open")
    assert isinstance(NOW, datetime)


class BadTensorParallel(BatchLimit):
    """Proposes a config vLLM cannot run: TP 3 on an 8B model with 32 attention heads on a 1-GPU type."""

    kind: ClassVar[str] = "test_bad_tp"

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterator[Proposal | Skip]:
        for item in super().analyze(snapshot, settings):
            if isinstance(item, Proposal):
                engine = item.desired.engine.model_copy(update={"tensor_parallel_size": 3})
                item = item.model_copy(
                    update={"kind": self.kind, "desired": item.desired.model_copy(update={"engine": engine})}
                )
            yield item


def test_a_config_the_hardware_cannot_run_is_never_proposed(svc: Services, clock: Clock) -> None:
    report = run_analysis_pass(svc, clock(), capabilities=(BadTensorParallel(),), detectors=())
    mine = report.capabilities["test_bad_tp"]
    assert mine.error is None and mine.created == []
    assert mine.skipped[GOOD].startswith("proposed config rejected: engine.tensor_parallel_size=3")
    # And the target refuses it too, before launching anything.
    before = {i.id for i in svc.state.list_instances(GOOD)}
    config = svc.state.get_deployment(GOOD).config
    bad = config.model_copy(update={"engine": config.engine.model_copy(update={"tensor_parallel_size": 3})})
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        svc.target.apply(GOOD, bad, 0.1)
    assert {i.id for i in svc.state.list_instances(GOOD)} == before
