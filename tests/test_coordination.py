"""Conflict resolution by priority: customer preference > quality > performance > cost."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from optiinfra_assets.agents.coordination import (
    PRIORITY,
    objective_of,
    resolve_conflicts,
    validation_status,
)
from optiinfra_assets.models import (
    Customer,
    Recommendation,
    RecommendationStatus,
    Risk,
    Validation,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUSTOMERS = {
    "cust-a": Customer(id="cust-a", name="A", slo_p95_latency_ms=20000.0, min_monthly_savings_usd=100.0),
    "cust-b": Customer(
        id="cust-b", name="B", slo_p95_latency_ms=20000.0, min_monthly_savings_usd=100.0, allow_spot=False
    ),
}


def rec(
    rid: str, kind: str, deployment: str = "dep-1", customer: str = "cust-a", savings: float = 0.0
) -> Recommendation:
    return Recommendation(
        id=rid,
        kind=kind,
        customer_id=customer,
        deployment_id=deployment,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=24),
        estimated_monthly_savings_usd=savings,
        risk=Risk.LOW,
        risk_score=0.2,
        summary=f"{kind} on {deployment}",
    )


def test_priority_order_and_kind_objectives() -> None:
    assert PRIORITY == ("customer_preference", "quality", "performance", "cost")
    assert objective_of("spot_migration") == "cost"
    assert objective_of("right_sizing") == "cost"
    assert objective_of("reserved_instances") == "cost"
    assert objective_of("kv_cache_tuning") == "performance"
    assert objective_of("batch_size") == "performance"
    assert objective_of("quantization") == "performance"
    assert objective_of("quality_rollback") == "quality"
    assert objective_of("something_new") == "cost"  # unknown kinds rank lowest


def test_performance_beats_cost_on_same_deployment() -> None:
    spot, kv = rec("r-spot", "spot_migration", savings=50_000), rec("r-kv", "kv_cache_tuning")
    winners, losers = resolve_conflicts([spot, kv], CUSTOMERS)
    assert winners == [kv]
    assert [(loser.id, "performance outranks cost" in why) for loser, why in losers] == [("r-spot", True)]
    assert "r-kv" in losers[0][1]


def test_quality_beats_performance_and_cost() -> None:
    recs = [rec("r-spot", "spot_migration"), rec("r-q", "quality_rollback"), rec("r-batch", "batch_size")]
    winners, losers = resolve_conflicts(recs, CUSTOMERS)
    assert [w.id for w in winners] == ["r-q"]
    reasons = {loser.id: why for loser, why in losers}
    assert "quality outranks cost" in reasons["r-spot"]
    assert "quality outranks performance" in reasons["r-batch"]


def test_different_deployments_do_not_conflict_and_keep_order() -> None:
    recs = [rec("r-1", "spot_migration", "dep-1"), rec("r-2", "kv_cache_tuning", "dep-2")]
    winners, losers = resolve_conflicts(recs, CUSTOMERS)
    assert winners == recs and losers == []


def test_same_objective_prefers_larger_saving() -> None:
    small = rec("r-small", "right_sizing", savings=1_000)
    large = rec("r-large", "spot_migration", savings=9_000)
    winners, losers = resolve_conflicts([small, large], CUSTOMERS)
    assert winners == [large]
    assert "both serve cost" in losers[0][1]


def test_customer_preference_always_loses_even_alone() -> None:
    spot = rec("r-spot", "spot_migration", customer="cust-b", savings=90_000)
    winners, losers = resolve_conflicts([spot], CUSTOMERS)
    assert winners == []
    assert losers[0][0] is spot
    assert "customer preference" in losers[0][1] and "does not allow spot" in losers[0][1]


def test_preference_violation_does_not_block_a_lower_priority_alternative() -> None:
    spot = rec("r-spot", "spot_migration", customer="cust-b", savings=90_000)
    rightsize = rec("r-rs", "right_sizing", customer="cust-b", savings=1_000)
    winners, losers = resolve_conflicts([spot, rightsize], CUSTOMERS)
    assert winners == [rightsize]
    assert [loser.id for loser, _ in losers] == ["r-spot"]


def test_validation_status() -> None:
    ok = Validation(agent="performance", passed=True, detail="fine")
    bad = Validation(agent="resource", passed=False, detail="pool too thin")
    assert validation_status([ok, ok]) == RecommendationStatus.PENDING
    assert validation_status([ok, bad]) == RecommendationStatus.BLOCKED
