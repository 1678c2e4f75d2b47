"""The performance agent: judges any proposed config's effect on the latency SLO with the serving model,
and watches p95 latency between rollout stages."""

from __future__ import annotations

import math

from optiinfra_assets.agents.baselines import is_anomalous
from optiinfra_assets.agents.capability import CheckResult, StageContext, ValidationRequest
from optiinfra_assets.catalog import instance_type, model
from optiinfra_assets.models import DeploymentConfig, Validation
from optiinfra_assets.serving import load_point, serving_capacity
from optiinfra_assets.snapshot import BaselineStat

AGENT = "performance"


def replicas_lost_to_interruption(config: DeploymentConfig) -> tuple[int, str]:
    """How many spot replicas of ``config`` a plausible interruption takes, and why.

    An interruption reclaims whole instances, so at least one spot replica is lost; beyond that we take the
    expected number of interruptions in a month at the band's worst rate (rounded up), as if they all
    landed together, which is what correlated reclaims of one pool look like.
    """
    spot = config.spot_replicas
    band = instance_type(config.instance_type).spot_interrupt_rate
    rate = None if band is None else band[1]
    expected = spot * (rate if rate is not None else 1.0)
    lost = min(spot, max(1, math.ceil(expected - 1e-9)))
    rate_text = "an unknown rate (all replicas)" if rate is None else f"{rate:.0%}/month"
    why = (
        f"losing {lost} of {config.replicas} replicas: at least one whole spot instance, and "
        f"{spot} spot x {rate_text} = {expected:.2f} expected interruptions a month, rounded up"
    )
    return lost, why


def validate(request: ValidationRequest) -> Validation:
    """Pass when the proposed config holds p95 within the SLO at the observed peak load, also after a
    plausible spot interruption when it runs spot replicas."""
    proposed, slo = request.proposed, request.customer.slo_p95_latency_ms
    peak = request.peak_requests_per_s()
    figures = {"slo_p95_ms": slo, "replicas": float(proposed.replicas), "peak_requests_per_s": peak}
    itype = instance_type(proposed.instance_type)
    cap = serving_capacity(model(request.deployment.model), itype, proposed.engine)
    if not cap.fits:
        detail = f"{request.deployment.model} does not fit {itype.name} as proposed: {cap.reason}"
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    surviving, why = proposed.replicas, f"all {proposed.replicas} replicas"
    if proposed.spot_replicas:
        lost, why = replicas_lost_to_interruption(proposed)
        surviving = proposed.replicas - lost
        figures |= {"replicas_lost": float(lost)}
    figures["surviving_replicas"] = float(surviving)
    if surviving == 0:
        detail = (
            f"{why}; no replica survives, so {request.deployment.id} is down until a replacement launches"
        )
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    per_replica = peak / surviving
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
        f"{why}; {surviving} replica{'s' if surviving != 1 else ''} carry the peak "
        f"{peak:.2f} req/s ({per_replica:.2f} each, {point.utilization:.0%} utilized): "
        f"predicted p95 {point.latency_p95_ms:.0f} ms, {verdict} the SLO of {slo:.0f} ms"
    )
    return Validation(agent=AGENT, passed=passed, detail=detail, figures=figures)


def latency_regression(
    observed_p95: float, baseline: BaselineStat, slo_p95_ms: float, z: float = 3.5
) -> tuple[bool, str]:
    """(regressed, why) for a rollout stage: p95 over the SLO, or anomalously above its baseline.

    Only the high side counts: latency falling below the baseline is not a regression.
    """
    if observed_p95 > slo_p95_ms:
        return True, f"p95 {observed_p95:.0f} ms breaks the SLO of {slo_p95_ms:.0f} ms"
    if observed_p95 > baseline.median and is_anomalous(observed_p95, baseline, z):
        return True, (
            f"p95 {observed_p95:.0f} ms is anomalously above its baseline (median {baseline.median:.0f} ms, "
            f"MAD {baseline.mad:.0f} ms) though within the SLO of {slo_p95_ms:.0f} ms"
        )
    return False, (
        f"p95 {observed_p95:.0f} ms is within the SLO of {slo_p95_ms:.0f} ms and its baseline "
        f"(median {baseline.median:.0f} ms, MAD {baseline.mad:.0f} ms)"
    )


def latency_slo(ctx: StageContext) -> CheckResult:
    """Stage check: p95 within the SLO and not anomalously above its baseline."""
    p95, slo = ctx.observation["latency_p95_ms"], ctx.slo_p95_latency_ms
    baseline = ctx.baselines.get("latency_p95_ms")
    if baseline is not None and baseline.n > 0:
        regressed, why = latency_regression(p95, baseline, slo, ctx.settings.latency_anomaly_z)
    else:
        regressed = p95 > slo
        why = (
            f"p95 {p95:.0f} ms {'breaks' if regressed else 'is within'} the SLO of {slo:.0f} ms (no baseline)"
        )
    return CheckResult(
        name="latency",
        passed=not regressed,
        detail=why,
        value=p95,
        baseline=None if baseline is None else baseline.median,
        threshold=slo,
    )
