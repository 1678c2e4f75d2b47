"""The cost agent's spot analysis on real catalog prices and bands."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from factories import deployment

from optiinfra_assets.agents.capability import Proposal, Skip, risk_level
from optiinfra_assets.agents.cost.spot_migration import (
    SpotMigration,
    SpotMigrationEvidence,
    analyze_spot_migration,
    spot_risk_score,
    spot_scenario_features,
)
from optiinfra_assets.catalog import instance_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import (
    Customer,
    Deployment,
    Instance,
    InstanceState,
    Lifecycle,
    Risk,
)
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
P95_BASELINE = BaselineStat(median=9000.0, mad=300.0, p05=8200.0, p95=10500.0, n=5000)


def customer(**overrides: object) -> Customer:
    fields: dict[str, object] = {
        "id": "cust-a",
        "name": "Acme",
        "slo_p95_latency_ms": 20000.0,
        "min_monthly_savings_usd": 100.0,
    }
    return Customer.model_validate(fields | overrides)


def instances(dep: Deployment, lifecycles: list[Lifecycle]) -> list[Instance]:
    return [
        Instance(
            id=f"i-{n}",
            deployment_id=dep.id,
            instance_type=dep.instance_type,
            lifecycle=lifecycle,
            launched_at=NOW - timedelta(days=3),
        )
        for n, lifecycle in enumerate(lifecycles)
    ]


def on_demand(dep: Deployment) -> list[Instance]:
    return instances(dep, [Lifecycle.ON_DEMAND] * dep.replicas)


def good_candidate() -> SpotMigrationEvidence:
    dep = deployment()
    return analyze_spot_migration(customer(), dep, on_demand(dep), P95_BASELINE)


def test_low_band_four_replicas_is_eligible_with_real_savings() -> None:
    analysis = good_candidate()
    p4de = instance_type("p4de.24xlarge")
    assert p4de.spot_usd_hour is not None
    expected = 4 * (p4de.ondemand_usd_hour - p4de.spot_usd_hour) * 730.0
    assert analysis.eligible
    assert analysis.estimated_monthly_savings_usd == pytest.approx(expected, rel=1e-6)
    assert analysis.estimated_monthly_savings_usd > 50_000
    assert analysis.savings_pct == pytest.approx(66.07, abs=0.05)
    assert analysis.interruption_band == "<5%"
    assert analysis.interruption_rate_monthly == 0.05
    assert analysis.expected_interruptions_per_month == pytest.approx(0.2)
    assert analysis.slo_headroom == pytest.approx(0.55)
    assert analysis.risk in (Risk.LOW, Risk.MEDIUM)
    assert analysis.risk_score < 0.33
    text = " ".join(analysis.reasons)
    assert "$52," in text and "<5%" in text and "9000 ms" in text


def test_single_replica_on_worst_band_is_high_risk() -> None:
    dep = deployment("g5.xlarge", "Llama-3.1-8B", replicas=1)
    analysis = analyze_spot_migration(customer(), dep, on_demand(dep), P95_BASELINE)
    assert analysis.eligible  # savings ~$417 are over the $100 minimum: eligible, but risky
    assert analysis.interruption_band == ">20%"
    assert analysis.risk == Risk.HIGH
    assert analysis.risk_score >= 0.8
    assert any("1/1 of capacity" in r for r in analysis.reasons)


def test_more_replicas_and_more_headroom_lower_risk() -> None:
    few, _ = spot_risk_score(0.05, 1, 0.55)
    many, _ = spot_risk_score(0.05, 8, 0.55)
    tight, _ = spot_risk_score(0.05, 8, 0.05)
    assert many < few
    assert tight > many


def test_missing_data_never_lowers_risk() -> None:
    known, _ = spot_risk_score(0.05, 4, 0.3)
    unknown_headroom, factors = spot_risk_score(0.05, 4, None)
    unknown_rate, _ = spot_risk_score(None, 4, 0.3)
    assert unknown_headroom > known and unknown_rate > known
    assert "no latency baseline" in factors[2]


def test_customer_disallowing_spot_gets_no_recommendation() -> None:
    dep = deployment()
    analysis = analyze_spot_migration(customer(allow_spot=False), dep, on_demand(dep), P95_BASELINE)
    assert not analysis.eligible
    assert any("customer preference" in r and "does not allow spot" in r for r in analysis.reasons)
    assert _analyze(customer(allow_spot=False), dep) == []


def _analyze(cust: Customer, dep: Deployment) -> list[Proposal]:
    """What the capability proposes for a one-deployment fleet (skips left out)."""
    snapshot = FleetSnapshot(customers=[cust], deployments=[dep], instances=on_demand(dep))
    snapshot.baselines = {dep.id: {"latency_p95_ms": P95_BASELINE}}
    items = list(SpotMigration().analyze(snapshot, DecisionSettings()))
    assert all(isinstance(i, Proposal | Skip) for i in items)
    return [i for i in items if isinstance(i, Proposal)]


def test_savings_below_customer_minimum_gets_no_recommendation() -> None:
    dep = deployment("g5.xlarge", "Llama-3.1-8B", replicas=1)
    analysis = analyze_spot_migration(
        customer(min_monthly_savings_usd=1000.0), dep, on_demand(dep), P95_BASELINE
    )
    assert not analysis.eligible
    assert any("$417/month" in r and "$1,000/month" in r for r in analysis.reasons)
    assert _analyze(customer(min_monthly_savings_usd=1000.0), dep) == []


def test_type_without_spot_market_is_not_eligible() -> None:
    dep = deployment("p5.4xlarge", "Llama-3.1-8B", replicas=2)
    analysis = analyze_spot_migration(customer(), dep, on_demand(dep), P95_BASELINE)
    assert not analysis.eligible
    assert analysis.spot_usd_hour is None
    assert analysis.estimated_monthly_savings_usd == 0.0
    assert any("no spot market price" in r for r in analysis.reasons)


def test_already_all_spot_is_not_eligible_and_partial_counts_only_on_demand() -> None:
    dep = deployment()
    all_spot = analyze_spot_migration(customer(), dep, instances(dep, [Lifecycle.SPOT] * 4), P95_BASELINE)
    assert not all_spot.eligible
    assert any("already runs on spot" in r for r in all_spot.reasons)
    half = analyze_spot_migration(
        customer(), dep, instances(dep, [Lifecycle.SPOT] * 2 + [Lifecycle.ON_DEMAND] * 2), P95_BASELINE
    )
    assert half.eligible and half.on_demand_replicas == 2
    assert half.estimated_monthly_savings_usd == pytest.approx(
        good_candidate().estimated_monthly_savings_usd / 2, rel=1e-6
    )


def test_ended_instances_and_other_deployments_are_ignored() -> None:
    dep = deployment()
    mine = on_demand(dep)
    ended = mine[0].model_copy(update={"id": "i-old", "state": InstanceState.INTERRUPTED})
    other = mine[1].model_copy(update={"id": "i-other", "deployment_id": "dep-2"})
    analysis = analyze_spot_migration(customer(), dep, [*mine, ended, other], P95_BASELINE)
    assert analysis.replicas == 4 and analysis.on_demand_replicas == 4


def test_no_instances_reported_assumes_deployment_replicas_on_demand() -> None:
    analysis = analyze_spot_migration(customer(), deployment(), [], None)
    assert analysis.replicas == 4 and analysis.on_demand_replicas == 4
    assert analysis.slo_headroom is None
    assert any("assuming all 4 on-demand" in r for r in analysis.reasons)


def test_proposal_moves_every_on_demand_replica_to_spot_with_typed_evidence() -> None:
    analysis = good_candidate()
    (proposal,) = _analyze(customer(), deployment())
    assert proposal.kind == "spot_migration"
    assert (proposal.current.on_demand_replicas, proposal.current.spot_replicas) == (4, 0)
    assert (proposal.desired.on_demand_replicas, proposal.desired.spot_replicas) == (0, 4)
    assert proposal.current.changes(proposal.desired) == {
        "on_demand_replicas": (4, 0),
        "spot_replicas": (0, 4),
    }
    assert isinstance(proposal.evidence, SpotMigrationEvidence)
    assert proposal.evidence == analysis
    assert proposal.estimate.monthly_savings_usd == analysis.estimated_monthly_savings_usd
    assert f"${analysis.estimated_monthly_savings_usd:,.0f}/month" in proposal.summary
    assert proposal.risk_score == analysis.risk_score


def test_scenario_features_have_fixed_keys_in_unit_range() -> None:
    good = spot_scenario_features(good_candidate())
    dep = deployment("g5.xlarge", "Llama-3.1-8B", replicas=1)
    risky = spot_scenario_features(analyze_spot_migration(customer(), dep, on_demand(dep), None))
    assert list(good) == list(risky)
    assert len(good) >= 8
    for features in (good, risky):
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in features.values())
    assert risky["interruption_rate"] > good["interruption_rate"]
    assert risky["replica_concentration"] == 1.0 and good["replica_concentration"] == 0.25
    assert good["model_size_log"] > risky["model_size_log"]


def test_risk_level_thresholds() -> None:
    settings = DecisionSettings()
    assert risk_level(0.0, settings) == Risk.LOW
    assert risk_level(0.329, settings) == Risk.LOW
    assert risk_level(0.33, settings) == Risk.MEDIUM
    assert risk_level(0.66, settings) == Risk.HIGH
