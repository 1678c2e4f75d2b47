"""Spot migration: move a deployment's on-demand replicas to spot, for what it saves, at a stated risk.

Prices and interruption bands come from the catalog (public Spot Advisor / price data); latency headroom
comes from the deployment's learned p95 baseline. Everything here is plain, explainable arithmetic.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from optiinfra_assets.agents import application, performance
from optiinfra_assets.agents.capability import (
    Estimate,
    Evidence,
    Objective,
    PerDeploymentCapability,
    Proposal,
    risk_level,
)
from optiinfra_assets.agents.cost import AGENT
from optiinfra_assets.catalog import InstanceType, instance_type, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, Instance, InstanceState, Lifecycle, Risk
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot

KIND = "spot_migration"

# Risk formula weights (they sum to 1, so the score stays in 0..1). The interruption rate counts most:
# it is how often capacity is lost at all; concentration says how much is lost at once; headroom says
# whether losing it breaks the SLO.
W_INTERRUPTION = 0.5
W_CONCENTRATION = 0.3
W_HEADROOM = 0.2
# The catalog caps the open-ended '>20%' band at 30%/month: that is the rate scored as 1.0.
MAX_INTERRUPTION_RATE = 0.30
# At or above this SLO headroom (p95 at half the SLO or less) an interruption has room to be absorbed.
COMFORTABLE_HEADROOM = 0.5

# Feature scales for the decision-memory vector (largest values in the catalog, so features land in 0..1).
_MAX_GPU_MEMORY_GIB = 8 * 141.0  # p5en.48xlarge: 8 x H200
_MAX_PARAMS_B = 405.0  # Llama-3.1-405B
_SAVINGS_DECADES = 6.0  # log10(1 + $1M/month) ~ 6


class SpotMigrationEvidence(Evidence):
    kind: Literal["spot_migration"] = KIND
    customer_id: str
    deployment_id: str
    instance_type: str
    model: str
    replicas: int
    on_demand_replicas: int
    ondemand_usd_hour: float
    spot_usd_hour: float | None
    estimated_monthly_savings_usd: float
    savings_pct: float
    interruption_band: str | None
    interruption_rate_monthly: float | None  # the band's upper bound: we plan for its worst end
    expected_interruptions_per_month: float
    slo_headroom: float | None  # 1 - observed p95 / SLO p95; None without a latency baseline
    risk_score: float = Field(ge=0, le=1)
    risk: Risk
    eligible: bool


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def _replica_counts(deployment: Deployment, instances: list[Instance]) -> tuple[int, int, bool]:
    """(replicas, on-demand replicas, whether instances were reported) from the deployment's running ones."""
    running = [i for i in instances if i.deployment_id == deployment.id and i.state == InstanceState.RUNNING]
    if not running:
        return deployment.replicas, deployment.replicas, False
    on_demand = sum(1 for i in running if i.lifecycle == Lifecycle.ON_DEMAND)
    return len(running), on_demand, True


def _slo_headroom(customer: Customer, latency_p95: BaselineStat | None) -> float | None:
    if latency_p95 is None or latency_p95.n == 0:
        return None
    return 1.0 - latency_p95.median / customer.slo_p95_latency_ms


def spot_risk_score(rate: float | None, replicas: int, headroom: float | None) -> tuple[float, list[str]]:
    """Score spot risk in 0..1 and explain each term.

    score = 0.5 * min(rate / 0.30, 1)                    how often an instance is reclaimed (band's worst end)
          + 0.3 * 1 / replicas                           share of capacity one interruption takes
          + 0.2 * (1 - clamp(headroom / 0.5, 0, 1))      how little p95 headroom is left to absorb it
    An unknown rate counts as the maximum and unknown headroom as none: missing data never lowers risk.
    """
    rate_term = 1.0 if rate is None else _clamp01(rate / MAX_INTERRUPTION_RATE)
    concentration = 1.0 / max(replicas, 1)
    headroom_term = 1.0 if headroom is None else 1.0 - _clamp01(headroom / COMFORTABLE_HEADROOM)
    score = W_INTERRUPTION * rate_term + W_CONCENTRATION * concentration + W_HEADROOM * headroom_term
    rate_text = "unknown (scored as the worst)" if rate is None else f"{rate:.0%}/month"
    headroom_text = (
        "no latency baseline (scored as no headroom)" if headroom is None else f"SLO headroom {headroom:.0%}"
    )
    factors = [
        f"{W_INTERRUPTION} x {rate_term:.2f} (interruption rate {rate_text}; 30%/month scores 1)",
        f"{W_CONCENTRATION} x {concentration:.2f} (one interruption takes 1/{replicas} of capacity)",
        f"{W_HEADROOM} x {headroom_term:.2f} ({headroom_text}; 50% or more is ample)",
    ]
    return _clamp01(score), factors


def _ineligibility(customer: Customer, itype: InstanceType, on_demand: int, savings: float) -> list[str]:
    """Reasons the migration must not be recommended (empty: eligible)."""
    reasons: list[str] = []
    if not customer.allow_spot:
        reasons.append(
            f"customer {customer.id} does not allow spot instances (a customer preference, which "
            "outranks cost)"
        )
    if itype.spot_usd_hour is None:
        reasons.append(f"{itype.name} has no spot market price")
    if on_demand == 0:
        reasons.append("every replica already runs on spot")
    if itype.spot_usd_hour is not None and on_demand > 0 and savings < customer.min_monthly_savings_usd:
        reasons.append(
            f"savings ${savings:,.0f}/month are below the customer's minimum of "
            f"${customer.min_monthly_savings_usd:,.0f}/month"
        )
    return reasons


def analyze_spot_migration(
    customer: Customer,
    deployment: Deployment,
    running: list[Instance],
    latency_p95: BaselineStat | None,
    settings: DecisionSettings | None = None,
) -> SpotMigrationEvidence:
    """Analyze moving the deployment's on-demand replicas to spot.

    Savings = on-demand replicas moved x (on-demand - spot $/h) x hours per month, from catalog prices.
    Risk: :func:`spot_risk_score` on the band's upper monthly interruption rate, the replica count after
    the move and the SLO headroom of the baseline's median p95 latency. Not eligible when the customer
    disallows spot, the type has no spot price, nothing runs on-demand or savings are below the customer's
    minimum; the reasons list says why in words and numbers.
    """
    settings = settings or DecisionSettings()
    itype = instance_type(deployment.instance_type)
    replicas, on_demand, reported = _replica_counts(deployment, running)
    spot_price = itype.spot_usd_hour
    per_hour = 0.0 if spot_price is None else itype.ondemand_usd_hour - spot_price
    savings = on_demand * per_hour * settings.hours_per_month
    savings_pct = 100.0 * per_hour / itype.ondemand_usd_hour
    band_rate = itype.spot_interrupt_rate
    rate = None if band_rate is None else band_rate[1]
    headroom = _slo_headroom(customer, latency_p95)
    score, factors = spot_risk_score(rate, replicas, headroom)
    blockers = _ineligibility(customer, itype, on_demand, savings)

    reasons = [] if reported else [f"no running instances reported: assuming all {replicas} on-demand"]
    reasons += blockers
    if spot_price is not None:
        reasons.append(
            f"{on_demand} of {replicas} {itype.name} replicas on-demand at ${itype.ondemand_usd_hour:.3f}/h; "
            f"spot ${spot_price:.3f}/h ({savings_pct:.0f}% less) saves ${savings:,.0f}/month"
        )
    reasons.append(f"Spot Advisor band {itype.spot_interrupt_band or 'unknown'}")
    if latency_p95 is not None and headroom is not None:
        reasons.append(
            f"baseline p95 {latency_p95.median:.0f} ms vs SLO {customer.slo_p95_latency_ms:.0f} ms"
        )
    level = risk_level(score, settings)
    reasons.append(f"risk {score:.2f} ({level.value}) = " + " + ".join(factors))
    return SpotMigrationEvidence(
        customer_id=customer.id,
        deployment_id=deployment.id,
        instance_type=itype.name,
        model=deployment.model,
        replicas=replicas,
        on_demand_replicas=on_demand,
        ondemand_usd_hour=itype.ondemand_usd_hour,
        spot_usd_hour=spot_price,
        estimated_monthly_savings_usd=round(savings, 2),
        savings_pct=round(savings_pct, 2),
        interruption_band=itype.spot_interrupt_band,
        interruption_rate_monthly=rate,
        expected_interruptions_per_month=round((rate or 0.0) * replicas, 4),
        slo_headroom=None if headroom is None else round(headroom, 4),
        risk_score=round(score, 4),
        risk=level,
        eligible=not blockers,
        reasons=reasons,
    )


def spot_scenario_features(evidence: SpotMigrationEvidence) -> dict[str, float]:
    """The scenario as a fixed set of numeric features in ~0..1 (the decision-memory vector).

    Same keys, same order, every time; unknowns take their most cautious value so that a scenario with
    missing data resembles risky ones rather than safe ones.
    """
    itype = instance_type(evidence.instance_type)
    spec = model(evidence.model)
    params_b = spec.param_count() / 1e9
    weight_gib = spec.weight_bytes() / 1024**3
    rate = evidence.interruption_rate_monthly
    headroom = evidence.slo_headroom
    return {
        "interruption_rate": 1.0 if rate is None else _clamp01(rate / MAX_INTERRUPTION_RATE),
        "replica_concentration": 1.0 / max(evidence.replicas, 1),
        "on_demand_share": evidence.on_demand_replicas / max(evidence.replicas, 1),
        "savings_pct": _clamp01(evidence.savings_pct / 100.0),
        "monthly_savings_log": _clamp01(
            math.log10(1.0 + max(evidence.estimated_monthly_savings_usd, 0.0)) / _SAVINGS_DECADES
        ),
        "slo_headroom": 0.0 if headroom is None else _clamp01(headroom),
        "gpu_memory": _clamp01(itype.gpu_memory_gib_total / _MAX_GPU_MEMORY_GIB),
        "model_size_log": _clamp01(math.log10(1.0 + params_b) / math.log10(1.0 + _MAX_PARAMS_B)),
        "memory_pressure": _clamp01(weight_gib / itype.gpu_memory_gib_total),
        "risk_score": evidence.risk_score,
    }


class SpotMigration(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = (
        "Move on-demand replicas to spot where the saving is worth the interruption risk."
    )
    evidence_model = SpotMigrationEvidence
    stage_checks = (application.quality_gate, performance.latency_slo)
    valued_by = ("realized_monthly_savings_usd", "quality_delta_pct", "latency_p95_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        running = snapshot.running_by_deployment.get(deployment.id, [])
        latency = snapshot.baseline(deployment.id, "latency_p95_ms")
        evidence = analyze_spot_migration(customer, deployment, running, latency, settings)
        if not evidence.eligible:
            return "not eligible: " + "; ".join(evidence.reasons)
        return self._proposal(deployment, evidence)

    def _proposal(self, deployment: Deployment, evidence: SpotMigrationEvidence) -> Proposal:
        # Configs are desired states: the recorded one, and the same with every replica on spot.
        current = deployment.config
        desired = current.model_copy(update={"on_demand_replicas": 0, "spot_replicas": current.replicas})
        moved = evidence.on_demand_replicas
        summary = (
            f"Move {moved} on-demand {evidence.instance_type} replica{'s' if moved != 1 else ''} of "
            f"{evidence.deployment_id} ({evidence.model}) to spot to save "
            f"${evidence.estimated_monthly_savings_usd:,.0f}/month ({evidence.savings_pct:.0f}%) at "
            f"{evidence.risk.value} risk."
        )
        return Proposal(
            kind=KIND,
            customer_id=evidence.customer_id,
            deployment_id=evidence.deployment_id,
            current=current,
            desired=desired,
            evidence=evidence,
            estimate=Estimate(monthly_savings_usd=evidence.estimated_monthly_savings_usd),
            risk_score=evidence.risk_score,
            summary=summary,
        )

    def features(self, proposal: Proposal) -> dict[str, float]:
        assert isinstance(proposal.evidence, SpotMigrationEvidence)
        return spot_scenario_features(proposal.evidence)
