"""Conflict resolution by priority: customer preference > quality > performance > cost, then re-evaluation
of each loser against the winner's config (dropped, deferred or escalated).

The capabilities are defined here, each with its own evidence type: coordination only reads a
capability's kind and objective, and judges changes on their configs whatever the kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal

import pytest

from optiinfra_assets.agents.capability import PRIORITY, Capability, Objective, Proposal, Skip
from optiinfra_assets.agents.coordination import (
    Verdict,
    changed_fields,
    objective_of,
    preference_violation,
    resolve_conflicts,
    validation_status,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import (
    Customer,
    DeploymentConfig,
    Estimate,
    Evidence,
    KvCacheDtype,
    Recommendation,
    RecommendationStatus,
    Risk,
    Validation,
)
from optiinfra_assets.snapshot import FleetSnapshot

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUSTOMERS = {
    "cust-a": Customer(id="cust-a", name="A", slo_p95_latency_ms=20000.0, min_monthly_savings_usd=100.0),
    "cust-b": Customer(
        id="cust-b", name="B", slo_p95_latency_ms=20000.0, min_monthly_savings_usd=100.0, allow_spot=False
    ),
}
BASE = DeploymentConfig(instance_type="g6e.xlarge", on_demand_replicas=4)


# ---- capabilities of this module ----------------------------------------------------------------


class ChangeEvidence(Evidence):
    kind: Literal["test_change"] = "test_change"
    note: str = ""


class QualityEvidence(ChangeEvidence):
    kind: Literal["test_quality"] = "test_quality"  # type: ignore[assignment]


class BatchingEvidence(ChangeEvidence):
    kind: Literal["test_batching"] = "test_batching"  # type: ignore[assignment]


class RightSizingEvidence(ChangeEvidence):
    kind: Literal["test_right_sizing"] = "test_right_sizing"  # type: ignore[assignment]


class SpotEvidence(ChangeEvidence):
    kind: Literal["test_spot"] = "test_spot"  # type: ignore[assignment]


class _Proposes(Capability):
    """Proposes nothing on its own: these tests hand coordination ready-made recommendations."""

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterable[Proposal | Skip]:
        return []


class QualityFix(_Proposes):
    kind: ClassVar[str] = "test_quality"
    agent: ClassVar[str] = "application"
    objective: ClassVar[Objective] = Objective.QUALITY
    description: ClassVar[str] = "Undo a change that hurt quality."
    evidence_model = QualityEvidence


class Batching(_Proposes):
    kind: ClassVar[str] = "test_batching"
    agent: ClassVar[str] = "performance"
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = "Tune the batch size for latency."
    evidence_model = BatchingEvidence


class RightSizing(_Proposes):
    kind: ClassVar[str] = "test_right_sizing"
    agent: ClassVar[str] = "cost"
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = "Fewer or smaller replicas."
    evidence_model = RightSizingEvidence


class Spot(_Proposes):
    kind: ClassVar[str] = "test_spot"
    agent: ClassVar[str] = "cost"
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = "Move replicas to spot."
    evidence_model = SpotEvidence


CAPS: tuple[Capability, ...] = (QualityFix(), Batching(), RightSizing(), Spot())
EVIDENCE = {cap.kind: cap.evidence_model for cap in CAPS}

# What each kind does to BASE (changed fields in comments)
TO_SPOT = BASE.model_copy(update={"on_demand_replicas": 0, "spot_replicas": 4})  # replicas per lifecycle
SMALLER = BASE.model_copy(update={"on_demand_replicas": 3})  # on_demand_replicas
BATCH_128 = BASE.model_copy(update={"engine": BASE.engine.model_copy(update={"max_num_seqs": 128})})
FP8_KV = BASE.model_copy(
    update={"engine": BASE.engine.model_copy(update={"kv_cache_dtype": KvCacheDtype.FP8})}
)
DESIRED = {
    "test_spot": TO_SPOT,
    "test_right_sizing": SMALLER,
    "test_batching": BATCH_128,
    "test_quality": FP8_KV,
}


def rec(
    rid: str,
    kind: str,
    deployment: str = "dep-1",
    customer: str = "cust-a",
    savings: float = 0.0,
    *,
    current: DeploymentConfig = BASE,
    desired: DeploymentConfig | None = None,
    status: RecommendationStatus = RecommendationStatus.PENDING,
) -> Recommendation:
    return Recommendation(
        id=rid,
        kind=kind,
        customer_id=customer,
        deployment_id=deployment,
        status=status,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=24),
        current=current,
        desired=DESIRED[kind] if desired is None else desired,
        estimate=Estimate(monthly_savings_usd=savings),
        risk=Risk.LOW,
        risk_score=0.2,
        summary=f"{kind} on {deployment}",
        evidence=EVIDENCE[kind](),
    )


class Reevaluate:
    """A stand-in for re-running a loser's capability on the winner's config: answers per loser id
    (None: nothing left to do) and records what it was asked."""

    def __init__(self, answers: dict[str, Recommendation | None] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, DeploymentConfig]] = []

    def __call__(self, loser: Recommendation, base: DeploymentConfig) -> Recommendation | None:
        self.calls.append((loser.id, base))
        return self.answers.get(loser.id)


def resolve(candidates, open_recs=(), reevaluate=None):
    return resolve_conflicts(candidates, list(open_recs), CUSTOMERS, CAPS, reevaluate or Reevaluate())


# ---- priority -----------------------------------------------------------------------------------


def test_priority_order_and_objectives_come_from_the_capabilities() -> None:
    assert PRIORITY == (Objective.CUSTOMER, Objective.QUALITY, Objective.PERFORMANCE, Objective.COST)
    assert objective_of("test_quality", CAPS) is Objective.QUALITY
    assert objective_of("test_batching", CAPS) is Objective.PERFORMANCE
    assert objective_of("test_right_sizing", CAPS) is Objective.COST
    assert objective_of("test_spot", CAPS) is Objective.COST
    assert objective_of("something_new", CAPS) is Objective.COST  # unknown kinds rank lowest
    assert objective_of("test_batching", ()) is Objective.COST  # only declared capabilities count


def test_performance_beats_cost_on_same_deployment() -> None:
    spot, batch = rec("r-spot", "test_spot", savings=50_000), rec("r-batch", "test_batching")
    reevaluate = Reevaluate()
    verdicts, open_losers = resolve([spot, batch], reevaluate=reevaluate)
    assert [(v.rec.id, v.verdict) for v in verdicts] == [
        ("r-spot", Verdict.DROPPED),
        ("r-batch", Verdict.KEEP),
    ]
    assert "performance outranks cost" in verdicts[0].reason and "r-batch" in verdicts[0].reason
    assert "nothing left to do" in verdicts[0].reason
    assert reevaluate.calls == [("r-spot", BATCH_128)]  # re-evaluated on the winner's config
    assert open_losers == []


def test_quality_beats_performance_and_cost() -> None:
    recs = [rec("r-spot", "test_spot"), rec("r-q", "test_quality"), rec("r-batch", "test_batching")]
    verdicts, _ = resolve(recs)
    assert [v.verdict for v in verdicts] == [Verdict.DROPPED, Verdict.KEEP, Verdict.DROPPED]
    reasons = {v.rec.id: v.reason for v in verdicts}
    assert "quality outranks cost" in reasons["r-spot"]
    assert "quality outranks performance" in reasons["r-batch"]


def test_different_deployments_do_not_conflict_and_keep_order() -> None:
    recs = [rec("r-1", "test_spot", "dep-1"), rec("r-2", "test_batching", "dep-2")]
    reevaluate = Reevaluate()
    verdicts, open_losers = resolve(recs, reevaluate=reevaluate)
    assert [(v.rec, v.verdict) for v in verdicts] == [(recs[0], Verdict.KEEP), (recs[1], Verdict.KEEP)]
    assert open_losers == [] and reevaluate.calls == []


def test_same_objective_prefers_larger_saving() -> None:
    small = rec("r-small", "test_right_sizing", savings=1_000)
    large = rec("r-large", "test_spot", savings=9_000)
    verdicts, _ = resolve([small, large])
    assert [v.verdict for v in verdicts] == [Verdict.DROPPED, Verdict.KEEP]
    assert "both serve cost" in verdicts[0].reason


# ---- customer preference ------------------------------------------------------------------------


def test_customer_preference_always_loses_even_alone() -> None:
    spot = rec("r-spot", "test_spot", customer="cust-b", savings=90_000)
    verdicts, _ = resolve([spot])
    (verdict,) = verdicts
    assert verdict.rec is spot and verdict.verdict is Verdict.PREFERENCE
    assert "customer preference" in verdict.reason and "does not allow spot" in verdict.reason


def test_the_preference_is_judged_on_the_config_whatever_the_kind() -> None:
    b = CUSTOMERS["cust-b"]
    # a right-sizing that happens to add spot replicas contradicts it too
    sneaky = rec(
        "r-rs",
        "test_right_sizing",
        customer="cust-b",
        desired=SMALLER.model_copy(update={"spot_replicas": 1}),
    )
    assert preference_violation(sneaky, b) is not None
    # a spot-kind change that adds no spot replica does not (here: it moves spot back to on-demand)
    back = rec("r-back", "test_spot", customer="cust-b", current=TO_SPOT, desired=BASE)
    assert preference_violation(back, b) is None
    assert preference_violation(rec("r-spot", "test_spot"), CUSTOMERS["cust-a"]) is None  # allows spot
    assert preference_violation(rec("r-spot", "test_spot"), None) is None  # unknown customer: nothing known
    verdicts, _ = resolve([sneaky, back])
    assert [v.verdict for v in verdicts] == [Verdict.PREFERENCE, Verdict.KEEP]


def test_preference_violation_does_not_block_a_lower_priority_alternative() -> None:
    spot = rec("r-spot", "test_spot", customer="cust-b", savings=90_000)
    rightsize = rec("r-rs", "test_right_sizing", customer="cust-b", savings=1_000)
    verdicts, _ = resolve([spot, rightsize])
    assert [(v.rec.id, v.verdict) for v in verdicts] == [
        ("r-spot", Verdict.PREFERENCE),
        ("r-rs", Verdict.KEEP),
    ]


# ---- open recommendations -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [RecommendationStatus.APPROVED, RecommendationStatus.EXECUTING])
def test_an_approved_or_executing_change_is_never_preempted(status: RecommendationStatus) -> None:
    decided = rec("r-spot", "test_spot", savings=100.0, status=status)
    quality = rec("r-q", "test_quality")
    reevaluate = Reevaluate()
    verdicts, open_losers = resolve([quality], [decided], reevaluate)
    (verdict,) = verdicts
    assert verdict.rec is quality and verdict.verdict is Verdict.DROPPED
    assert f"that change is already {status.value}" in verdict.reason
    assert reevaluate.calls == [("r-q", TO_SPOT)]
    assert open_losers == []


def test_an_open_pending_change_loses_to_a_new_higher_priority_one() -> None:
    waiting = rec("r-spot", "test_spot", savings=50_000)
    blocked = rec("r-rs", "test_right_sizing", status=RecommendationStatus.BLOCKED)
    batch = rec("r-batch", "test_batching")
    verdicts, open_losers = resolve([batch], [waiting, blocked])
    assert [v.verdict for v in verdicts] == [Verdict.KEEP]
    # the blocked one takes no part in conflicts
    assert [(v.rec.id, v.verdict) for v in open_losers] == [("r-spot", Verdict.DROPPED)]
    assert "performance outranks cost" in open_losers[0].reason


def test_an_open_change_of_higher_priority_wins_over_a_new_one() -> None:
    waiting = rec("r-q", "test_quality")
    spot = rec("r-spot", "test_spot", savings=50_000)
    verdicts, open_losers = resolve([spot], [waiting])
    assert [v.verdict for v in verdicts] == [Verdict.DROPPED] and open_losers == []
    assert "quality outranks cost" in verdicts[0].reason


def test_open_changes_on_other_deployments_are_not_touched() -> None:
    other = rec("r-other", "test_spot", deployment="dep-2", savings=50_000)
    verdicts, open_losers = resolve([rec("r-q", "test_quality")], [other])
    assert [v.verdict for v in verdicts] == [Verdict.KEEP] and open_losers == []


# ---- re-evaluation against the winner -----------------------------------------------------------


def test_a_loser_with_nothing_left_to_do_is_dropped() -> None:
    batch, spot = rec("r-batch", "test_batching"), rec("r-spot", "test_spot", savings=50_000)
    verdicts, _ = resolve([batch, spot], reevaluate=Reevaluate({"r-spot": None}))
    assert verdicts[1].verdict is Verdict.DROPPED and verdicts[1].rec is spot
    assert "re-evaluated on its config: nothing left to do" in verdicts[1].reason


def test_a_loser_still_worth_doing_elsewhere_is_deferred() -> None:
    batch, spot = rec("r-batch", "test_batching"), rec("r-spot", "test_spot", savings=50_000)
    # on the winner's config the spot move still saves, and touches only the replicas per lifecycle
    again = rec(
        "r-spot-2",
        "test_spot",
        savings=48_000,
        current=BATCH_128,
        desired=BATCH_128.model_copy(update={"on_demand_replicas": 0, "spot_replicas": 4}),
    )
    assert changed_fields(again) == {"on_demand_replicas", "spot_replicas"}
    assert changed_fields(batch) == {"engine.max_num_seqs"}
    verdicts, _ = resolve([batch, spot], reevaluate=Reevaluate({"r-spot": again}))
    verdict = verdicts[1]
    assert verdict.verdict is Verdict.DEFERRED and verdict.rec is spot
    assert (
        "still worth doing" in verdict.reason and "proposed again once r-batch is settled" in verdict.reason
    )


def test_a_loser_that_changes_what_the_winner_changes_is_escalated() -> None:
    quality, batch = rec("r-q", "test_quality"), rec("r-batch", "test_batching")
    # the quality fix moves the KV cache to fp8; on that config batching wants the KV cache back in bf16
    engine = FP8_KV.engine.model_copy(update={"kv_cache_dtype": KvCacheDtype.BF16, "max_num_seqs": 128})
    again = rec(
        "r-batch-2", "test_batching", current=FP8_KV, desired=FP8_KV.model_copy(update={"engine": engine})
    )
    verdicts, open_losers = resolve([quality, batch], reevaluate=Reevaluate({"r-batch": again}))
    assert [v.verdict for v in verdicts] == [Verdict.KEEP, Verdict.ESCALATED]
    escalated = verdicts[1]
    # the re-evaluated change, under the loser's id, goes to the customer
    assert escalated.rec.id == "r-batch" and escalated.rec.desired == again.desired
    assert "engine.kv_cache_dtype" in escalated.reason and "engine.max_num_seqs" not in escalated.reason
    assert "the customer decides" in escalated.reason and "quality outranks performance" in escalated.reason
    assert open_losers == []


def test_an_open_loser_is_settled_the_same_way() -> None:
    waiting = rec("r-batch", "test_batching")
    quality = rec("r-q", "test_quality")
    engine = FP8_KV.engine.model_copy(update={"kv_cache_dtype": KvCacheDtype.AUTO, "max_num_seqs": 128})
    again = rec(
        "r-batch-2", "test_batching", current=FP8_KV, desired=FP8_KV.model_copy(update={"engine": engine})
    )
    _, open_losers = resolve([quality], [waiting], Reevaluate({"r-batch": again}))
    assert [(v.rec.id, v.verdict) for v in open_losers] == [("r-batch", Verdict.ESCALATED)]


def test_validation_status() -> None:
    ok = Validation(agent="performance", passed=True, detail="fine")
    bad = Validation(agent="resource", passed=False, detail="pool too thin")
    assert validation_status([ok, ok]) == RecommendationStatus.PENDING
    assert validation_status([ok, bad]) == RecommendationStatus.BLOCKED
