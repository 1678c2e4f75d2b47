"""Coordination: which change goes ahead when several touch one deployment, and approvability.

Priority order: customer preferences > quality > performance SLOs > cost (``Objective`` order). A change
that contradicts a customer preference always loses. Of the rest on one deployment, the higher objective
wins; the loser is re-evaluated against the winner's config:

* nothing left to do on the winner's config -> dropped, with the reason;
* still worth doing and it leaves the winner's changes alone -> deferred: proposed again after the winner
  is settled (two rollouts must not move one deployment at once);
* it would change what the winner changes -> escalated to the customer, who decides.

Pure: capabilities, proposals and configs in, verdicts out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from optiinfra_assets.agents.capability import PRIORITY, Capability, Objective
from optiinfra_assets.models import (
    Customer,
    DeploymentConfig,
    Recommendation,
    RecommendationStatus,
    Validation,
)

ORDER_TEXT = " > ".join(o.value for o in PRIORITY)


class Verdict(StrEnum):
    KEEP = "keep"
    DROPPED = "dropped"  # nothing left to do once the winner is applied
    DEFERRED = "deferred"  # still worth doing: proposed again once the winner is settled
    ESCALATED = "escalated"  # conflicts with the winner: the customer decides
    PREFERENCE = "preference"  # contradicts a customer preference


@dataclass
class Settled:
    rec: Recommendation
    verdict: Verdict
    reason: str = ""


# (loser, the winner's desired config) -> the loser re-proposed on that config, or None
Reevaluate = Callable[[Recommendation, DeploymentConfig], Recommendation | None]


def objective_of(kind: str, capabilities: Sequence[Capability]) -> Objective:
    """The objective a kind serves; kinds no capability declares rank lowest, so they never override."""
    for cap in capabilities:
        if cap.kind == kind:
            return cap.objective
    return PRIORITY[-1]


def preference_violation(rec: Recommendation, customer: Customer | None) -> str | None:
    """Why ``rec`` contradicts the customer's preferences, or None. Judged on the config, whatever the kind."""
    if customer is None:
        return None
    if rec.desired.spot_replicas > rec.current.spot_replicas and not customer.allow_spot:
        return f"contradicts a customer preference: {customer.id} does not allow spot instances"
    return None


def changed_fields(rec: Recommendation) -> set[str]:
    return set(rec.current.changes(rec.desired))


def _advice_only(kind: str, capabilities: Sequence[Capability]) -> bool:
    return any(cap.kind == kind and cap.advice_only for cap in capabilities)


def _rank(rec: Recommendation, capabilities: Sequence[Capability]) -> tuple[int, int, int, float, float, str]:
    # A change already decided or under way is never preempted; then higher priority; within one objective
    # a change to the fleet before advice about the fleet as it is (a commitment is re-sized on the changed
    # config), then the larger saving, then the lower risk, then the id (a stable tie-break).
    decided = rec.status in (RecommendationStatus.APPROVED, RecommendationStatus.EXECUTING)
    return (
        0 if decided else 1,
        PRIORITY.index(objective_of(rec.kind, capabilities)),
        1 if _advice_only(rec.kind, capabilities) else 0,
        -rec.estimate.monthly_savings_usd,
        rec.risk_score,
        rec.id,
    )


def _why_lost(loser: Recommendation, winner: Recommendation, capabilities: Sequence[Capability]) -> str:
    won, lost = objective_of(winner.kind, capabilities), objective_of(loser.kind, capabilities)
    head = f"conflicts with {winner.id} ({winner.kind}) on deployment {loser.deployment_id}: "
    if winner.status in (RecommendationStatus.APPROVED, RecommendationStatus.EXECUTING):
        return head + f"that change is already {winner.status.value}"
    if won != lost:
        return head + f"{won.value} outranks {lost.value} ({ORDER_TEXT})"
    if _advice_only(loser.kind, capabilities) and not _advice_only(winner.kind, capabilities):
        return head + "a change to the fleet goes before advice about the fleet as it is"
    return head + (
        f"both serve {won.value}; the winner saves ${winner.estimate.monthly_savings_usd:,.0f}/month vs "
        f"${loser.estimate.monthly_savings_usd:,.0f} at risk {winner.risk_score:.2f} vs {loser.risk_score:.2f}"
    )


def settle(
    loser: Recommendation, winner: Recommendation, reevaluate: Reevaluate, capabilities: Sequence[Capability]
) -> Settled:
    """Re-evaluate ``loser`` against ``winner``'s config and say what becomes of it."""
    why = _why_lost(loser, winner, capabilities)
    again = reevaluate(loser, winner.desired)
    if again is None:
        return Settled(loser, Verdict.DROPPED, f"{why}; re-evaluated on its config: nothing left to do")
    overlap = changed_fields(again) & changed_fields(winner)
    if overlap:
        return Settled(
            again.model_copy(update={"id": loser.id}),
            Verdict.ESCALATED,
            f"{why}; re-evaluated on its config it still changes {', '.join(sorted(overlap))}, which the "
            "winner changes too: the customer decides",
        )
    return Settled(
        loser,
        Verdict.DEFERRED,
        f"{why}; re-evaluated on its config it is still worth doing ({again.summary}): proposed again once "
        f"{winner.id} is settled",
    )


def resolve_conflicts(
    candidates: Sequence[Recommendation],
    open_recs: Sequence[Recommendation],
    customers: dict[str, Customer],
    capabilities: Sequence[Capability],
    reevaluate: Reevaluate,
) -> tuple[list[Settled], list[Settled]]:
    """(a verdict for every candidate in input order, verdicts for open recommendations that now lose).

    ``open_recs`` are those already in the store. A candidate conflicts with them as with other candidates.
    An open one still waiting for a decision (pending or escalated) that loses to a new candidate of higher
    priority is settled the same way; one already approved or executing always wins.
    """
    verdicts: dict[int, Settled] = {}
    by_deployment: dict[str, list[Recommendation]] = defaultdict(list)
    for rec in candidates:
        violation = preference_violation(rec, customers.get(rec.customer_id))
        if violation:
            verdicts[id(rec)] = Settled(rec, Verdict.PREFERENCE, violation)
        else:
            by_deployment[rec.deployment_id].append(rec)
    for rec in open_recs:
        if rec.deployment_id in by_deployment and rec.status is not RecommendationStatus.BLOCKED:
            by_deployment[rec.deployment_id].append(rec)
    candidate_ids = {id(r) for r in candidates}
    open_losers: list[Settled] = []
    for group in by_deployment.values():
        winner = min(group, key=lambda r: _rank(r, capabilities))
        for rec in group:
            if rec is winner:
                if id(rec) in candidate_ids:
                    verdicts[id(rec)] = Settled(rec, Verdict.KEEP)
            elif id(rec) in candidate_ids:
                verdicts[id(rec)] = settle(rec, winner, reevaluate, capabilities)
            elif id(winner) in candidate_ids:  # an open one the new candidate outranks
                open_losers.append(settle(rec, winner, reevaluate, capabilities))
    return [verdicts[id(rec)] for rec in candidates], open_losers


def validation_status(validations: list[Validation]) -> RecommendationStatus:
    """PENDING when every validation passed (approvable), BLOCKED when any failed."""
    if any(not v.passed for v in validations):
        return RecommendationStatus.BLOCKED
    return RecommendationStatus.PENDING
