"""Right-sizing: the search against a brute-force oracle, the evidence, and the capability on the real engines
(analysis, coordination with spot migration, approval and a staged make-before-break rollout)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from workflow_fixtures import Clock, run_rollout

from optiinfra_assets.agents.cost.right_sizing import (
    Demand,
    RightSizing,
    RightSizingEvidence,
    analyze_right_sizing,
    candidate_engine,
    parallel_splits,
    search,
    sized_config,
)
from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.catalog import INSTANCE_TYPES, config_usd_hour, default_config
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, ExecutionStatus, RecommendationStatus
from optiinfra_assets.serving import load_points, serving_capacity
from optiinfra_assets.workflow import Services, decide, run_analysis_pass

OVER = "globex-oversized-llama8b"  # the sandbox's over-provisioned deployment
SETTINGS = DecisionSettings()


def _oracle(model_name: str, current, demand: Demand, max_replicas: int = 64) -> float:
    """The cheapest $/hour over every type, split and replica count 1..max_replicas that fits and holds the
    SLO within the utilization cap: exhaustive, no bounds."""
    from optiinfra_assets.catalog import model

    best = math.inf
    for itype in INSTANCE_TYPES.values():
        for tp, pp in parallel_splits(itype.gpu_count):
            engine = candidate_engine(current, itype, tp, pp)
            if isinstance(engine, str):
                continue
            cap = serving_capacity(model(model_name), itype, engine)
            if not cap.fits:
                continue
            counts = np.arange(1, max_replicas + 1, dtype=np.float64)
            points = load_points(cap, itype, demand.peak_requests_per_s / counts)
            ok = (
                (points["latency_p95_ms"] <= demand.slo_p95_ms)
                & (points["utilization"] <= demand.max_utilization)
                & (counts * cap.kv_cache_tokens >= demand.kv_tokens)
            )
            for n in counts[ok].astype(int):
                best = min(best, config_usd_hour(sized_config(current, itype, engine, int(n))))
                break
    return best


def test_parallel_splits_use_every_gpu_of_the_instance() -> None:
    assert parallel_splits(1) == [(1, 1)]
    assert parallel_splits(8) == [(8, 1), (4, 2), (2, 4), (1, 8)]


@pytest.mark.parametrize(
    ("model_name", "itype", "replicas", "peak", "slo"),
    [
        ("Llama-3.1-8B", "g5.4xlarge", 6, 3.0, 45_000.0),
        ("Qwen2.5-72B", "p5.48xlarge", 2, 4.0, 40_000.0),
        ("Mistral-7B-Instruct-v0.2", "g6.xlarge", 8, 12.0, 20_000.0),
    ],
)
def test_search_finds_the_exhaustive_optimum(
    model_name: str, itype: str, replicas: int, peak: float, slo: float
):
    current = default_config(itype, replicas)
    demand = Demand(peak_requests_per_s=peak, kv_tokens=20_000.0, slo_p95_ms=slo, max_utilization=0.8)
    chosen, candidates = search(model_name, current, demand, SETTINGS)
    assert chosen is not None
    assert config_usd_hour(chosen) == pytest.approx(_oracle(model_name, current, demand))
    # Every (type, split) of the catalog is listed, exactly one chosen, each loser with a reason.
    pairs = {(t.name, tp) for t in INSTANCE_TYPES.values() for tp, _ in parallel_splits(t.gpu_count)}
    assert {(c["instance_type"], c["tensor_parallel_size"]) for c in candidates} == pairs
    assert [c["verdict"] for c in candidates].count("chosen") == 1
    assert all(c["why"] for c in candidates)
    won = next(c for c in candidates if c["verdict"] == "chosen")
    assert won["predicted_p95_ms"] <= slo and won["utilization"] <= 0.8


def test_no_config_serves_an_impossible_slo() -> None:
    current = default_config("g6e.xlarge", 2)
    demand = Demand(peak_requests_per_s=5.0, kv_tokens=0.0, slo_p95_ms=10.0, max_utilization=0.8)
    chosen, candidates = search("Llama-3.1-8B", current, demand, SETTINGS)
    assert chosen is None and all(c["verdict"] == "infeasible" for c in candidates)


def _customer(slo: float = 45_000.0, minimum: float = 0.0) -> Customer:
    return Customer(id="c", name="c", slo_p95_latency_ms=slo, min_monthly_savings_usd=minimum)


def _deployment(itype: str, replicas: int, model_name: str = "Llama-3.1-8B") -> Deployment:
    return Deployment(
        id="d",
        customer_id="c",
        model=model_name,
        config=default_config(itype, replicas),
        base_requests_per_s=1,
    )


def test_an_over_provisioned_deployment_gets_cheaper_within_the_slo() -> None:
    ev = analyze_right_sizing(_customer(), _deployment("g5.4xlarge", 6), 0.12, 0.05, SETTINGS)
    assert isinstance(ev, RightSizingEvidence), ev
    assert ev.proposed.usd_month < ev.current.usd_month
    assert ev.monthly_savings_usd == pytest.approx(ev.current.usd_month - ev.proposed.usd_month, abs=0.02)
    assert ev.proposed.predicted_p95_ms <= ev.slo_p95_ms and ev.proposed.headroom >= 0
    assert ev.proposed.utilization <= SETTINGS.right_sizing_max_utilization
    # The growth margin is planned for: 6 instances x 0.12 req/s at p95, plus 20%.
    assert ev.planned_peak_requests_per_s == pytest.approx(6 * 0.12 * 1.2, rel=1e-3)
    assert len(ev.candidates) > 50 and any(c.verdict == "pruned" for c in ev.candidates)
    assert SETTINGS.low_risk_below <= ev.risk_score < SETTINGS.high_risk_from  # new hardware: medium


def test_well_sized_or_not_worth_it_is_a_reason_not_a_proposal() -> None:
    busy = analyze_right_sizing(
        _customer(30_000.0), _deployment("g6e.xlarge", 3, "Qwen2.5-14B"), 0.6, 0.3, SETTINGS
    )
    assert isinstance(busy, str) and "already right-sized" in busy
    small = analyze_right_sizing(_customer(minimum=1e6), _deployment("g5.4xlarge", 6), 0.12, 0.05, SETTINGS)
    assert isinstance(small, str) and "below the customer's minimum" in small


def test_right_sizing_goes_end_to_end_on_the_real_engines(svc: Services, clock: Clock) -> None:
    cap = RightSizing()
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    mine = report.capabilities[cap.kind]
    assert mine.error is None
    rec = next(r for r in mine.created if r.deployment_id == OVER)
    assert rec.status is RecommendationStatus.PENDING, rec.status_reason
    assert [v.agent for v in rec.validations] == ["performance", "resource", "application"]
    stored = svc.state.get_recommendation(rec.id)
    assert isinstance(stored.evidence, RightSizingEvidence) and stored.evidence == rec.evidence
    assert stored.desired.instance_type != stored.current.instance_type
    assert stored.evidence.proposed.usd_month < stored.evidence.current.usd_month
    assert stored.stages == [10, 50, 100]

    decide(svc.state, rec.id, "approve", "alice", "ok", "cli", now=clock())
    execution = run_rollout(svc, clock, rec.id, capabilities=(cap,))
    assert execution.status is ExecutionStatus.SUCCEEDED, execution.reason
    assert [s.stage_pct for s in execution.stages] == [10, 50, 100]
    assert {c.name for s in execution.stages for c in s.checks} == {"quality", "latency"}
    running = svc.state.list_instances(OVER)
    assert len(running) == rec.desired.replicas
    assert {i.instance_type for i in running} == {rec.desired.instance_type}
    assert svc.state.get_deployment(OVER).config == rec.desired
    outcome = svc.state.get_outcome(rec.id)
    assert outcome is not None and outcome.realized_monthly_savings_usd > 0


def test_right_sizing_and_spot_migration_are_coordinated(svc: Services, clock: Clock) -> None:
    # globex-rag-mistral: spot saves more than right-sizing; both change the replica counts.
    both = "globex-rag-mistral"
    report = run_analysis_pass(svc, clock(), capabilities=(SpotMigration(), RightSizing()), detectors=())
    pending = [
        r
        for r in svc.state.list_open_recommendations()
        if r.deployment_id == both and r.status is RecommendationStatus.PENDING
    ]
    # Both serve cost: never two approvable changes on one deployment; the larger saving goes first.
    assert [r.kind for r in pending] == ["spot_migration"]
    (loser,) = [r for r in report.capabilities["right_sizing"].created if r.deployment_id == both]
    assert loser.status is RecommendationStatus.ESCALATED
    assert "both serve cost" in loser.status_reason and "the customer decides" in loser.status_reason


def test_a_reevaluation_narrows_the_snapshot_to_the_loser() -> None:
    from optiinfra_assets.snapshot import FleetSnapshot

    deps = [_deployment("g5.4xlarge", 6), _deployment("g6e.xlarge", 2).model_copy(update={"id": "e"})]
    frame = pl.DataFrame({"deployment_id": ["d", "e"], "hour": [1, 2], "x": [1.0, 2.0]})
    snap = FleetSnapshot([_customer()], deps, [], hourly={"perf": frame})
    assert snap.hourly_of("perf", "e")["x"].to_list() == [2.0]  # splits the frame once
    moved = snap.with_config("d", default_config("g6e.xlarge", 1)).only("d")
    assert [d.id for d in moved.deployments] == ["d"] and moved.deployments[0].instance_type == "g6e.xlarge"
    assert moved.customer_by_id == snap.customer_by_id
    # the per-deployment split is carried over, not recomputed for every conflict
    assert moved.__dict__["_hourly_by_deployment"] is snap.__dict__["_hourly_by_deployment"]
