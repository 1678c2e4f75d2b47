"""GPU-aware consolidation: the MILP on cases with a known optimum, never worse than greedy, constraints named
when infeasible, and the capability on the sandbox (proposed, approved, rolled out make-before-break)."""

from __future__ import annotations

import numpy as np
import pytest
from workflow_fixtures import Clock, run_rollout

from optiinfra_assets.agents.resource.consolidation import (
    Consolidation,
    ConsolidationEvidence,
    ReplicaGroup,
    consolidate,
    replica_fit,
)
from optiinfra_assets.catalog import INSTANCE_TYPES
from optiinfra_assets.models import ExecutionStatus, Lifecycle, RecommendationStatus
from optiinfra_assets.workflow import Services, decide, run_analysis_pass

G6_12 = INSTANCE_TYPES["g6.12xlarge"].ondemand_usd_hour  # 4 x L4


def _group(did: str, customer: str, replicas: int, **kw: object) -> ReplicaGroup:
    values: dict = {
        "deployment_id": did,
        "customer_id": customer,
        "model": "Qwen2.5-14B",  # 2 x L4 per replica: no 2-GPU L4 type, so L4 replicas must share
        "lifecycle": Lifecycle.ON_DEMAND,
        "replicas": replicas,
        "spread_over": replicas,
        "peak_rps_per_replica": 0.5,
        "slo_p95_ms": 45_000.0,
        "allow_spot": True,
        "dedicated": False,
        "current_instance_type": "g6.12xlarge",
    }
    return ReplicaGroup(**(values | kw))


def test_two_tp2_deployments_share_4_gpu_instances_at_the_known_optimum() -> None:
    assert replica_fit("Qwen2.5-14B", "L4", 0.5, 45_000.0).gpus == 2
    groups = [_group("a", "x", 2), _group("b", "y", 2)]
    result = consolidate(groups, ["L4"], time_limit_s=10)
    assert result.optimum is not None and result.greedy is not None
    # Today: 4 replicas, each alone on a 4-GPU g6.12xlarge. Optimum: two g6.12xlarge, each one replica of a
    # and one of b (spread forbids both replicas of a deployment on one instance; g6.48xlarge costs more).
    assert result.current_cost_usd_hour == pytest.approx(4 * G6_12)
    assert result.optimum.status == "optimal"
    assert result.optimum.cost_usd_hour == pytest.approx(2 * G6_12)
    assert [(s.instance_type, s.replicas) for s in result.optimum.shared_instances] == [
        ("g6.12xlarge", {"a": 1, "b": 1}),
        ("g6.12xlarge", {"a": 1, "b": 1}),
    ]
    assert result.saving_usd_hour == pytest.approx(2 * G6_12)
    assert result.optimum.cost_usd_hour <= result.greedy.cost_usd_hour


def test_a_dedicated_customer_shares_with_no_one() -> None:
    groups = [_group("a", "x", 2, dedicated=True), _group("b", "y", 2)]
    result = consolidate(groups, ["L4"], time_limit_s=10)
    assert result.optimum is not None
    assert result.optimum.cost_usd_hour == pytest.approx(4 * G6_12)
    for inst in result.optimum.shared_instances:
        assert len(inst.replicas) == 1  # never a and b together


def test_replicas_spread_over_two_instances_even_when_one_would_hold_them() -> None:
    result = consolidate([_group("a", "x", 2, model="Llama-3.1-8B", peak_rps_per_replica=0.2)], ["L4"], 10)
    assert result.optimum is not None
    placement = result.optimum.placements[0]
    assert sum(placement.solo.values()) + len(placement.shared) >= 2


def test_an_infeasible_consolidation_names_the_constraint_and_proposes_nothing() -> None:
    no_spot = _group("s", "x", 1, lifecycle=Lifecycle.SPOT, allow_spot=False)
    too_big = _group("m", "y", 1, model="Llama-3.1-405B", peak_rps_per_replica=0.1)
    too_fast = _group("f", "z", 1, model="Llama-3.1-8B", slo_p95_ms=100.0)
    result = consolidate([no_spot, too_big, too_fast, _group("ok", "w", 2)], ["T4", "L4"], 10)
    assert result.optimum is None and result.greedy is None
    text = " | ".join(result.infeasible)
    assert "no spot" in text and "memory" in text and "SLO" in text
    assert len(result.infeasible) == 3


def test_the_solver_is_never_worse_than_greedy_on_a_random_fleet() -> None:
    rng = np.random.default_rng(3)
    models = ("Llama-3.1-8B", "Qwen2.5-14B", "Mistral-7B-Instruct-v0.2")
    types = ("g6.xlarge", "g6.12xlarge", "g6e.xlarge", "g5.xlarge", "g6e.12xlarge")
    groups = [
        _group(
            f"d{i}",
            f"c{int(rng.integers(6))}",
            int(rng.integers(1, 5)),
            model=str(rng.choice(models)),
            peak_rps_per_replica=float(rng.uniform(0.1, 0.6)),
            current_instance_type=str(rng.choice(types)),
        )
        for i in range(25)
    ]
    result = consolidate(groups, ["L4", "A10G", "L40S"], time_limit_s=10)
    assert result.optimum is not None and result.greedy is not None
    assert result.optimum.cost_usd_hour <= result.greedy.cost_usd_hour + 1e-6
    placed = {
        p.deployment_id: sum(p.solo.values()) + sum(p.shared.values()) for p in result.optimum.placements
    }
    assert placed == {g.deployment_id: g.replicas for g in groups}


def test_consolidation_on_the_sandbox_is_proposed_and_rolled_out(svc: Services, clock: Clock) -> None:
    cap = Consolidation()
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    mine = report.capabilities[cap.kind]
    assert mine.error is None, mine.error
    assert set(mine.skipped) | {r.deployment_id for r in mine.created} == {
        d.id for d in svc.state.list_deployments()
    }
    assert mine.created, mine.skipped
    rec = next((r for r in mine.created if r.status is RecommendationStatus.PENDING), None)
    assert rec is not None, [(r.deployment_id, r.status_reason) for r in mine.created]
    ev = rec.evidence
    assert isinstance(ev, ConsolidationEvidence)
    assert ev.optimum_cost_usd_hour <= ev.greedy_cost_usd_hour
    assert ev.optimum_cost_usd_hour < ev.fleet_cost_usd_hour and ev.fleet_saving_usd_hour > 0
    assert ev.to_instance_type == rec.desired.instance_type != rec.current.instance_type
    assert ev.deployment_saving_usd_hour > 0
    decide(svc.state, rec.id, "approve", "alice", "", "cli", now=clock())
    execution = run_rollout(svc, clock, rec.id, capabilities=(cap,))
    assert execution.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.ROLLED_BACK), execution.reason
    if execution.status is ExecutionStatus.SUCCEEDED:
        running = svc.state.list_instances(rec.deployment_id)
        assert {i.instance_type for i in running} == {ev.to_instance_type}
        assert len(running) == rec.desired.replicas
