"""The performance agent: judges any proposed config's effect on the latency SLO with the serving model,
and watches p95 latency between rollout stages."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel

from optiinfra_assets.agents.application.ab_test import Verdict, compare_latency
from optiinfra_assets.agents.baselines import is_anomalous
from optiinfra_assets.agents.capability import CheckResult, Proposal, StageContext, ValidationRequest
from optiinfra_assets.catalog import instance_type, model, replica_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Deployment, DeploymentConfig, EngineConfig, Estimate, Evidence, Validation
from optiinfra_assets.serving import (
    ConfigError,
    ServingCapacity,
    Workload,
    load_point,
    quality_factor,
    serving_capacity,
    validate_config,
)
from optiinfra_assets.snapshot import BaselineStat

AGENT = "performance"
# What requests look like when nothing says otherwise: the sandbox's and the serving model's default.
TYPICAL_WORKLOAD = Workload()


# ---- what a config would do at the observed peak (shared by every performance capability) ------------


@dataclass(frozen=True)
class ConfigForecast:
    """What the serving model predicts for a deployment config at a load: one replica's capacity and the
    latency, throughput and KV-cache use of the deployment with the load spread over its replicas."""

    fits: bool
    reason: str  # why it does not fit (the field and value), or the capacity model's summary
    replicas: int = 0
    kv_cache_tokens: int = 0
    max_concurrency: int = 0  # sequences one replica runs at once (KV cache and max_num_seqs bound it)
    kv_bound: bool = False  # the KV cache, not max_num_seqs, bounds the running batch
    replica_capacity_rps: float = 0.0
    per_replica_rps: float = 0.0
    utilization: float = 0.0
    p95_ms: float = math.inf
    p99_ms: float = math.inf
    ttft_ms: float = math.inf
    itl_ms: float = math.inf
    tokens_per_s: float = 0.0  # whole deployment at the load
    kv_cache_usage: float = 0.0
    weights_gib_per_gpu: float = 0.0
    quality_factor: float = 1.0  # expected quality relative to 16-bit weights and KV cache
    gpus: int = 0

    @property
    def capacity_rps(self) -> float:
        """Requests/s the whole deployment serves at saturation."""
        return self.replica_capacity_rps * self.replicas

    def holds(self, slo_p95_ms: float, settings: DecisionSettings) -> bool:
        """p95 within the planning margin under the SLO, at no more than the planned utilization."""
        return (
            self.fits
            and self.p95_ms <= (1.0 - settings.perf_slo_margin) * slo_p95_ms
            and self.utilization <= settings.perf_max_planned_utilization
        )


@cache
def _replica_capacity(
    model_name: str,
    instance_type_name: str,
    engine: EngineConfig,
    workload: Workload,
    gpus_per_replica: int | None = None,
) -> tuple[str | None, ServingCapacity | None, float]:
    """(why it cannot run, one replica's capacity, quality factor) of an engine on an instance type (or a
    slice of ``gpus_per_replica`` of its GPUs): pure in its arguments and independent of the replica count,
    so computed once per process for each."""
    config = DeploymentConfig(
        instance_type=instance_type_name,
        on_demand_replicas=1,
        engine=engine,
        gpus_per_replica=gpus_per_replica,
    )
    try:
        validate_config(model_name, config)
    except ConfigError as exc:
        return str(exc), None, 1.0
    spec = model(model_name)
    cap = serving_capacity(spec, replica_type(config), engine, workload)
    if not cap.fits:
        return cap.reason, None, 1.0
    return None, cap, quality_factor(spec, engine)


def forecast_config(
    model_name: str, config: DeploymentConfig, requests_per_s: float, workload: Workload = TYPICAL_WORKLOAD
) -> ConfigForecast:
    """The serving model's prediction for ``config`` carrying ``requests_per_s`` over all its replicas.

    A config vLLM could not run (serving.validate_config: TP not dividing the heads, a format the GPU lacks,
    memory) comes back with ``fits`` False and the error naming the field: never a number for it."""
    problem, cap, quality = _replica_capacity(
        model_name, config.instance_type, config.engine, workload, config.gpus_per_replica
    )
    if cap is None:
        return ConfigForecast(fits=False, reason=problem or "does not fit")
    itype = replica_type(config)
    per_replica = requests_per_s / config.replicas
    point = load_point(cap, itype, per_replica)
    return ConfigForecast(
        fits=True,
        reason=cap.reason,
        replicas=config.replicas,
        kv_cache_tokens=cap.kv_cache_tokens,
        max_concurrency=cap.max_batch,
        kv_bound=cap.max_batch < config.engine.max_num_seqs,
        replica_capacity_rps=cap.max_requests_per_s,
        per_replica_rps=per_replica,
        utilization=point.utilization,
        p95_ms=point.latency_p95_ms,
        p99_ms=point.latency_p99_ms,
        ttft_ms=point.ttft_ms,
        itl_ms=point.itl_ms,
        tokens_per_s=point.tokens_per_s * config.replicas,
        kv_cache_usage=point.kv_cache_usage,
        weights_gib_per_gpu=cap.weight_gib_per_gpu,
        quality_factor=quality,
        gpus=config.replicas * itype.gpu_count,
    )


def observed_peak_requests_per_s(
    baselines: dict[str, BaselineStat], replicas: int, settings: DecisionSettings
) -> float | None:
    """The deployment's peak load: the baseline's p95 of requests/s per instance times the replicas that
    served it, plus the settings' growth margin (ValidationRequest.peak_requests_per_s, from a snapshot).
    None without a baseline: a performance change is never sized on a load nobody observed."""
    stat = baselines.get("requests_per_s")
    if stat is None or stat.n == 0:
        return None
    return stat.p95 * replicas * (1.0 + settings.peak_growth_margin)


def with_engine(config: DeploymentConfig, **engine: object) -> DeploymentConfig:
    """``config`` with some engine fields changed (validated: a bad value names its field)."""
    fields = config.engine.model_dump() | engine
    return config.model_copy(update={"engine": EngineConfig.model_validate(fields)})


def gain_pct(before: float, after: float) -> float:
    """How much smaller ``after`` is than ``before``, in percent (latency: positive is faster)."""
    if not math.isfinite(before) or before <= 0:
        return 100.0 if math.isfinite(after) else 0.0
    return 100.0 * (before - after) / before


def change_pct(before: float, after: float) -> float:
    """Relative change of ``after`` over ``before`` in percent, finite (for Estimates)."""
    if not math.isfinite(before) or not math.isfinite(after) or before <= 0:
        return 0.0
    return 100.0 * (after - before) / before


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
    itype = replica_type(proposed)
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


def _slo_and_baseline(ctx: StageContext) -> CheckResult:
    """The stage's p95 within the SLO and not anomalously above its baseline (no A/B test)."""
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


def _with_ab_test(ctx: StageContext, result: CheckResult) -> CheckResult:
    """``result`` with the canary's latency against the control's by the A/B test (ab_test.compare_latency:
    a bootstrap interval of the p95 ratio, one look per stage with O'Brien–Fleming alpha spending, a minimum
    sample size) where the stage has both arms' latency samples: a clear rise over
    ``ab_max_latency_increase_pct`` fails the check even within the SLO, and the test, verdict, interval and
    sample counts go on the record. Without both arms (or with too few samples) ``result`` is unchanged but
    for the reason in its detail."""
    arms = ctx.ab_arms("latency")
    if arms is None:
        return result
    allowed = ctx.settings.ab_max_latency_increase_pct
    ab = compare_latency(*arms, max_increase_pct=allowed, **ctx.ab_design())
    if ab.verdict == Verdict.INSUFFICIENT_SAMPLES:
        return result.model_copy(update={"detail": f"{result.detail} (no A/B test: {ab.detail})"})
    update: dict[str, object] = {
        "detail": f"{result.detail}; A/B {ab.verdict.value}: {ab.detail}",
        "test": ab.test,
        "verdict": ab.verdict.value,
        "interval": ab.interval,
        "samples": {"canary": ab.n_canary, "control": ab.n_control},
    }
    if ab.verdict == Verdict.DEGRADED:
        # The A/B test decides: its figures are the ones that failed (as the quality gate records them).
        update |= {"passed": False, "value": ab.canary, "baseline": ab.control, "threshold": allowed}
    return result.model_copy(update=update)


def latency_slo(ctx: StageContext) -> CheckResult:
    """Stage check: p95 within the SLO and not anomalously above its baseline, and, where the stage has
    canary and control latency samples, the canary's p95 not clearly above the control's (A/B test)."""
    return _with_ab_test(ctx, _slo_and_baseline(ctx))


def latency_slo_or_recovering(ctx: StageContext) -> CheckResult:
    """Stage check of a change meant to cut latency: latency_slo, except that a deployment that already broke
    its SLO (its baseline p95 is over it) passes the SLO part while the stage's p95 stays under that
    high-water mark: a canary on part of the replicas cannot bring the whole deployment within the SLO at
    once. The A/B test of canary against control applies either way."""
    result = _slo_and_baseline(ctx)
    baseline = ctx.baselines.get("latency_p95_ms")
    p95 = ctx.observation["latency_p95_ms"]
    if (
        not result.passed
        and baseline is not None
        and baseline.n > 0
        and baseline.p95 > ctx.slo_p95_latency_ms
        and p95 <= baseline.p95
    ):
        detail = (
            f"{result.detail}, which it already broke before the change (baseline p95 up to "
            f"{baseline.p95:.0f} ms); this stage stays under that"
        )
        result = result.model_copy(update={"passed": True, "detail": detail})
    return _with_ab_test(ctx, result)


def latency_within_slo(ctx: StageContext) -> CheckResult:
    """Stage check for a change that spends latency headroom on purpose (fewer GPUs, a larger batch): p95
    within the SLO; rising above its old baseline is what was planned, so it is not a regression."""
    p95, slo = ctx.observation["latency_p95_ms"], ctx.slo_p95_latency_ms
    baseline = ctx.baselines.get("latency_p95_ms")
    passed = p95 <= slo
    return CheckResult(
        name="latency",
        passed=passed,
        detail=f"p95 {p95:.0f} ms {'is within' if passed else 'breaks'} the SLO of {slo:.0f} ms",
        value=p95,
        baseline=None if baseline is None else baseline.median,
        threshold=slo,
    )


class Predicted(BaseModel):
    """A ConfigForecast as evidence: what the serving model predicts for a config at the observed peak."""

    replicas: int
    gpus: int
    kv_cache_tokens: int
    max_concurrency: int
    replica_capacity_rps: float
    utilization: float
    p95_ms: float
    ttft_ms: float
    itl_ms: float
    tokens_per_s: float
    kv_cache_usage: float
    weights_gib_per_gpu: float
    quality_factor: float

    @classmethod
    def of(cls, forecast: ConfigForecast) -> Predicted:
        if not forecast.fits:
            raise ValueError(f"no prediction for a config that does not fit: {forecast.reason}")
        return cls(
            replicas=forecast.replicas,
            gpus=forecast.gpus,
            kv_cache_tokens=forecast.kv_cache_tokens,
            max_concurrency=forecast.max_concurrency,
            replica_capacity_rps=round(forecast.replica_capacity_rps, 4),
            utilization=round(forecast.utilization, 4),
            p95_ms=round(forecast.p95_ms, 1),
            ttft_ms=round(forecast.ttft_ms, 1),
            itl_ms=round(forecast.itl_ms, 2),
            tokens_per_s=round(forecast.tokens_per_s, 1),
            kv_cache_usage=round(forecast.kv_cache_usage, 4),
            weights_gib_per_gpu=round(forecast.weights_gib_per_gpu, 3),
            quality_factor=round(forecast.quality_factor, 5),
        )

    def describe(self) -> str:
        return (
            f"{self.replicas} replica{'s' if self.replicas != 1 else ''} x {self.max_concurrency} sequences "
            f"({self.kv_cache_tokens} KV tokens each), {self.replica_capacity_rps:.2f} req/s per replica, "
            f"{self.utilization:.0%} utilized at the peak: p95 {self.p95_ms / 1e3:.1f} s, "
            f"TTFT {self.ttft_ms:.0f} ms, ITL {self.itl_ms:.1f} ms"
        )


def expected_quality_drop_pct(before: ConfigForecast, after: ConfigForecast) -> float:
    """The quality the serving model expects a change to cost, in percent of the current quality."""
    return 100.0 * (1.0 - after.quality_factor / before.quality_factor)


def change_estimate(
    before: ConfigForecast, after: ConfigForecast, monthly_savings_usd: float = 0.0
) -> Estimate:
    """A performance change's Estimate from the two forecasts at the same peak load."""
    return Estimate(
        monthly_savings_usd=round(monthly_savings_usd, 2),
        p95_latency_change_pct=round(change_pct(before.p95_ms, after.p95_ms), 2),
        throughput_change_pct=round(change_pct(before.capacity_rps, after.capacity_rps), 2),
        quality_change_pct=round(-expected_quality_drop_pct(before, after), 3),
    )


def change_risk(after: ConfigForecast, quality_drop_pct: float, settings: DecisionSettings) -> float:
    """Risk of a performance change in 0..1, explainable in one line:

    0.15 (any restart of the engine) + 0.45 x quality cost / the quality gate + 0.4 x predicted peak
    utilization after the change (how little room is left if the prediction is optimistic)."""
    quality = min(1.0, max(0.0, quality_drop_pct) / settings.max_quality_drop_pct)
    return round(min(1.0, 0.15 + 0.45 * quality + 0.4 * min(1.0, after.utilization)), 4)


def forecast_proposal(
    kind: str,
    deployment: Deployment,
    desired: DeploymentConfig,
    evidence: Evidence,
    summary: str,
    before: ConfigForecast,
    after: ConfigForecast,
    settings: DecisionSettings,
    quality_drop_pct: float = 0.0,
    estimate: Estimate | None = None,
) -> Proposal:
    """A performance change of ``deployment`` to ``desired`` as a Proposal: estimated (unless ``estimate`` is
    given) and risk-scored from the two forecasts at the same peak load."""
    return Proposal(
        kind=kind,
        customer_id=deployment.customer_id,
        deployment_id=deployment.id,
        current=deployment.config,
        desired=desired,
        evidence=evidence,
        estimate=change_estimate(before, after) if estimate is None else estimate,
        risk_score=change_risk(after, quality_drop_pct, settings),
        summary=summary,
    )


def kv_holdable_concurrency(forecast: ConfigForecast, workload: Workload = TYPICAL_WORKLOAD) -> int:
    """Sequences of the average context the KV cache of a forecast config holds, whatever max_num_seqs."""
    return int(forecast.kv_cache_tokens // workload.avg_context_tokens) if forecast.fits else 0


def batch_limit_gain_pct(model_name: str, config: DeploymentConfig, requests_per_s: float) -> float:
    """Capacity gained by letting the running batch grow to what the KV cache holds: > 0 when max_num_seqs,
    not the cache, bounds the batch (batch_tuning's case, which the other capabilities leave to it)."""
    before = forecast_config(model_name, config, requests_per_s)
    holdable = kv_holdable_concurrency(before)
    if not before.fits or holdable <= config.engine.max_num_seqs:
        return 0.0
    raised = with_engine(
        config,
        max_num_seqs=holdable,
        max_num_batched_tokens=max(holdable, config.engine.max_num_batched_tokens),
    )
    after = forecast_config(model_name, raised, requests_per_s)
    return change_pct(before.capacity_rps, after.capacity_rps) if after.fits else 0.0
