"""The performance agent: predicts whether a change keeps p95 latency within the customer's SLO."""

from __future__ import annotations

import math

from optiinfra_assets.agents.baselines import BaselineStat, is_anomalous
from optiinfra_assets.agents.cost import SpotAnalysis
from optiinfra_assets.catalog import instance_type, model
from optiinfra_assets.models import Customer, Deployment, Validation
from optiinfra_assets.serving import ServingProfile, load_point, serving_capacity

AGENT = "performance"


def replicas_lost_to_interruption(analysis: SpotAnalysis) -> tuple[int, str]:
    """How many spot replicas a plausible interruption takes, and why.

    An interruption reclaims whole instances, so at least one replica is lost; beyond that we take the
    expected number of interruptions in a month at the band's worst rate (rounded up), as if they all
    landed together, which is what correlated reclaims of one pool look like.
    """
    rate = analysis.interruption_rate_monthly
    expected = analysis.replicas * (rate if rate is not None else 1.0)
    lost = min(analysis.replicas, max(1, math.ceil(expected - 1e-9)))
    rate_text = "an unknown rate (all replicas)" if rate is None else f"{rate:.0%}/month"
    why = (
        f"losing {lost} of {analysis.replicas} replicas: at least one whole instance, and "
        f"{analysis.replicas} x {rate_text} = {expected:.2f} expected interruptions a month, rounded up"
    )
    return lost, why


def validate_spot_migration(
    customer: Customer, deployment: Deployment, analysis: SpotAnalysis, peak_requests_per_s: float
) -> Validation:
    """Pass when the replicas surviving a plausible interruption keep p95 within the SLO at peak load."""
    lost, why = replicas_lost_to_interruption(analysis)
    surviving = analysis.replicas - lost
    slo = customer.slo_p95_latency_ms
    figures = {
        "slo_p95_ms": slo,
        "replicas": float(analysis.replicas),
        "replicas_lost": float(lost),
        "surviving_replicas": float(surviving),
        "peak_requests_per_s": peak_requests_per_s,
    }
    if surviving == 0:
        detail = f"{why}; no replica survives, so {deployment.id} is down until a replacement launches"
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    itype = instance_type(deployment.instance_type)
    cap = serving_capacity(model(deployment.model), itype, ServingProfile())
    if not cap.fits:
        detail = f"{deployment.model} does not fit {itype.name}: {cap.reason}"
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    per_replica = peak_requests_per_s / surviving
    point = load_point(cap, itype, per_replica)
    figures |= {
        "predicted_p95_ms": round(point.latency_p95_ms, 1),
        "per_replica_requests_per_s": round(per_replica, 4),
        "utilization": round(point.utilization, 4),
        "replica_capacity_requests_per_s": round(cap.max_requests_per_s, 4),
    }
    passed = point.latency_p95_ms <= slo
    verdict = "within" if passed else "over"
    detail = (
        f"{why}; {surviving} surviving replica{'s' if surviving != 1 else ''} carry the peak "
        f"{peak_requests_per_s:.2f} req/s ({per_replica:.2f} each, {point.utilization:.0%} utilized): "
        f"predicted p95 {point.latency_p95_ms:.0f} ms, {verdict} the SLO of {slo:.0f} ms"
    )
    return Validation(agent=AGENT, passed=passed, detail=detail, figures=figures)


def latency_regression(observed_p95: float, baseline: BaselineStat, slo_p95_ms: float) -> tuple[bool, str]:
    """(regressed, why) for a rollout stage: p95 over the SLO, or anomalously above its baseline.

    Only the high side counts: latency falling below the baseline is not a regression.
    """
    if observed_p95 > slo_p95_ms:
        return True, f"p95 {observed_p95:.0f} ms breaks the SLO of {slo_p95_ms:.0f} ms"
    if observed_p95 > baseline.median and is_anomalous(observed_p95, baseline):
        return True, (
            f"p95 {observed_p95:.0f} ms is anomalously above its baseline (median {baseline.median:.0f} ms, "
            f"MAD {baseline.mad:.0f} ms) though within the SLO of {slo_p95_ms:.0f} ms"
        )
    return False, (
        f"p95 {observed_p95:.0f} ms is within the SLO of {slo_p95_ms:.0f} ms and its baseline "
        f"(median {baseline.median:.0f} ms, MAD {baseline.mad:.0f} ms)"
    )
