"""Coordination: which recommendation wins when several touch one deployment, and approvability.

Priority order: customer preferences > quality > performance SLOs > cost. It is data, below, so that the
order is stated once and every conflict reason quotes it.
"""

from __future__ import annotations

from collections import defaultdict

from optiinfra_assets.models import Customer, Recommendation, RecommendationStatus, Validation

PRIORITY: tuple[str, ...] = ("customer_preference", "quality", "performance", "cost")

OBJECTIVE_OF_KIND: dict[str, str] = {
    "spot_migration": "cost",
    "right_sizing": "cost",
    "reserved_instances": "cost",
    "scale_down": "cost",
    "kv_cache_tuning": "performance",
    "batch_size": "performance",
    "quantization": "performance",
    "scale_up": "performance",
    "quality_rollback": "quality",
    "spot_rollback": "quality",
    "preference_enforcement": "customer_preference",
}
# Kinds no agent has declared yet rank lowest, so a new kind can never override a declared one.
DEFAULT_OBJECTIVE = PRIORITY[-1]
# Kinds that move capacity onto spot instances, which a customer may forbid.
SPOT_KINDS = frozenset({"spot_migration"})


def objective_of(kind: str) -> str:
    """The objective a recommendation kind serves (unknown kinds: the lowest priority, cost)."""
    return OBJECTIVE_OF_KIND.get(kind, DEFAULT_OBJECTIVE)


def priority_rank(kind: str) -> int:
    """0 for the highest-priority objective; larger is lower priority."""
    return PRIORITY.index(objective_of(kind))


def preference_violation(rec: Recommendation, customer: Customer | None) -> str | None:
    """Why ``rec`` contradicts the customer's preferences, or None."""
    if customer is None:
        return None
    if rec.kind in SPOT_KINDS and not customer.allow_spot:
        return f"contradicts a customer preference: {customer.id} does not allow spot instances"
    return None


def _winner_key(rec: Recommendation) -> tuple[int, float, float, str]:
    # Higher priority first; within one objective the larger saving, then the lower risk, then the id
    # (a stable tie-break so the same inputs always give the same winner).
    return (priority_rank(rec.kind), -rec.estimated_monthly_savings_usd, rec.risk_score, rec.id)


def _loss_reason(loser: Recommendation, winner: Recommendation) -> str:
    won_obj, lost_obj = objective_of(winner.kind), objective_of(loser.kind)
    order = " > ".join(PRIORITY)
    if won_obj != lost_obj:
        return (
            f"conflicts with {winner.id} ({winner.kind}) on deployment {loser.deployment_id}: "
            f"{won_obj} outranks {lost_obj} ({order})"
        )
    return (
        f"conflicts with {winner.id} ({winner.kind}) on deployment {loser.deployment_id}: both serve "
        f"{won_obj}; the winner saves ${winner.estimated_monthly_savings_usd:,.0f}/month vs "
        f"${loser.estimated_monthly_savings_usd:,.0f} at risk {winner.risk_score:.2f} vs {loser.risk_score:.2f}"
    )


def resolve_conflicts(
    recs: list[Recommendation], customers: dict[str, Customer]
) -> tuple[list[Recommendation], list[tuple[Recommendation, str]]]:
    """(winners, [(loser, reason)]). Recommendations on the same deployment conflict.

    A recommendation contradicting a customer preference always loses, even when alone. Of the rest on a
    deployment, the one serving the higher-priority objective wins. Winners keep their input order.
    """
    losers: list[tuple[Recommendation, str]] = []
    by_deployment: dict[str, list[Recommendation]] = defaultdict(list)
    for rec in recs:
        violation = preference_violation(rec, customers.get(rec.customer_id))
        if violation:
            losers.append((rec, violation))
        else:
            by_deployment[rec.deployment_id].append(rec)
    winners: list[Recommendation] = []
    for group in by_deployment.values():
        winner = min(group, key=_winner_key)
        winners.append(winner)
        losers += [(rec, _loss_reason(rec, winner)) for rec in group if rec is not winner]
    # Back to input order (identity, not id: two distinct objects may share an id in bad input).
    order = {id(rec): i for i, rec in enumerate(recs)}
    winners.sort(key=lambda rec: order[id(rec)])
    return winners, losers


def validation_status(validations: list[Validation]) -> RecommendationStatus:
    """PENDING when every validation passed (approvable), BLOCKED when any failed."""
    if any(not v.passed for v in validations):
        return RecommendationStatus.BLOCKED
    return RecommendationStatus.PENDING
