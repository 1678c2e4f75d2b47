"""KV-cache tuning: give a deployment whose KV cache is full more of it.

When the observed KV-cache use sits at the level where vLLM preempts running sequences and queues new ones
(``DecisionSettings.kv_pressure_usage``), the capacity model tries what vLLM offers without new hardware:
a larger ``gpu_memory_utilization`` (up to ``max_gpu_memory_utilization``), an FP8 KV cache (half the bytes
per token, where the GPU has FP8), prefix caching, and ``max_num_seqs`` set to what the cache then holds so
that the scheduler stops admitting sequences it would preempt. It proposes the config with the lowest
predicted p95 at the observed peak, with both forecasts (concurrency, capacity, p95) in the evidence.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from typing import ClassVar, Literal

from optiinfra_assets.agents import application, performance
from optiinfra_assets.agents.capability import Evidence, Objective, PerDeploymentCapability, Proposal
from optiinfra_assets.agents.performance import (
    AGENT,
    ConfigForecast,
    Predicted,
    expected_quality_drop_pct,
    forecast_config,
    forecast_proposal,
    gain_pct,
    kv_holdable_concurrency,
    observed_peak_requests_per_s,
    with_engine,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig, KvCacheDtype
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "kv_cache_tuning"


class KvCacheTuningEvidence(Evidence):
    kind: Literal["kv_cache_tuning"] = KIND
    deployment_id: str
    model: str
    instance_type: str
    observed_kv_usage_p95: float
    observed_kv_usage_median: float
    kv_pressure_usage: float
    observed_peak_requests_per_s: float
    before: Predicted
    after: Predicted
    changes: dict[str, tuple[object, object]]  # engine field -> (now, proposed)
    expected_quality_drop_pct: float
    candidates_tried: int


def kv_candidates(config: DeploymentConfig, settings: DecisionSettings) -> Iterator[DeploymentConfig]:
    """Engine variants of ``config`` that give the KV cache more room (before fitting max_num_seqs)."""
    engine = config.engine
    utilizations = sorted(
        {
            engine.gpu_memory_utilization,
            max(engine.gpu_memory_utilization, settings.max_gpu_memory_utilization),
        }
    )
    dtypes = dict.fromkeys((engine.kv_cache_dtype, KvCacheDtype.FP8))
    for utilization, dtype in product(utilizations, dtypes):
        yield with_engine(
            config, gpu_memory_utilization=utilization, kv_cache_dtype=dtype, enable_prefix_caching=True
        )


def fit_max_num_seqs(
    model_name: str, config: DeploymentConfig, peak: float
) -> tuple[DeploymentConfig, ConfigForecast]:
    """``config`` with max_num_seqs lowered to what its KV cache holds (never raised: batch_tuning's job)."""
    forecast = forecast_config(model_name, config, peak)
    holdable = kv_holdable_concurrency(forecast)
    if not forecast.fits or holdable < 1 or holdable >= config.engine.max_num_seqs:
        return config, forecast
    fitted = with_engine(config, max_num_seqs=holdable)
    return fitted, forecast_config(model_name, fitted, peak)


def tune_kv_cache(
    deployment: Deployment, peak: float, settings: DecisionSettings
) -> tuple[DeploymentConfig, ConfigForecast, ConfigForecast, int] | str:
    """(desired config, forecast now, forecast after, candidates tried), or why nothing helps."""
    current = deployment.config
    before = forecast_config(deployment.model, current, peak)
    if not before.fits:
        return f"the current config does not fit ({before.reason}): parallelism's case"
    best: tuple[DeploymentConfig, ConfigForecast] | None = None
    tried = 0
    for candidate in kv_candidates(current, settings):
        config, after = fit_max_num_seqs(deployment.model, candidate, peak)
        tried += 1
        if not after.fits or config == current:
            continue
        if expected_quality_drop_pct(before, after) > settings.max_quality_drop_pct:
            continue
        if best is None or (after.p95_ms, -after.quality_factor) < (best[1].p95_ms, -best[1].quality_factor):
            best = (config, after)
    if best is None:
        return f"no KV-cache setting the hardware runs gives it more room ({tried} tried)"
    config, after = best
    gain = max(gain_pct(before.p95_ms, after.p95_ms), -gain_pct(before.capacity_rps, after.capacity_rps))
    if gain < settings.min_performance_gain_pct:
        return (
            f"the best KV-cache setting gains {gain:.1f}% (p95 or capacity), under the "
            f"{settings.min_performance_gain_pct:g}% worth a change"
        )
    return config, before, after, tried


class KvCacheTuning(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = (
        "Under KV-cache pressure (preemptions, queueing): gpu_memory_utilization, FP8 KV cache, prefix "
        "caching and max_num_seqs from the capacity model."
    )
    evidence_model = KvCacheTuningEvidence
    # An FP8 KV cache can move quality: the quality gate watches every stage, beside the latency SLO.
    stage_checks = (application.quality_gate, performance.latency_slo_or_recovering)
    valued_by = ("latency_p95_delta_pct", "quality_delta_pct", "utilization_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        baselines = snapshot.baselines.get(deployment.id, {})
        kv = baselines.get("kv_cache_usage")
        if kv is None or kv.n == 0:
            return "no KV-cache usage baseline yet"
        if kv.p95 < settings.kv_pressure_usage:
            return f"KV cache p95 {kv.p95:.0%} is under the {settings.kv_pressure_usage:.0%} of pressure"
        peak = observed_peak_requests_per_s(baselines, deployment.replicas, settings)
        if peak is None:
            return "no load baseline to size the KV cache for"
        tuned = tune_kv_cache(deployment, peak, settings)
        if isinstance(tuned, str):
            return tuned
        return self._proposal(deployment, kv.p95, kv.median, peak, *tuned, settings)

    def _proposal(
        self,
        deployment: Deployment,
        kv_p95: float,
        kv_median: float,
        peak: float,
        desired: DeploymentConfig,
        before: ConfigForecast,
        after: ConfigForecast,
        tried: int,
        settings: DecisionSettings,
    ) -> Proposal:
        current = deployment.config
        changes = current.changes(desired)
        quality_drop = expected_quality_drop_pct(before, after)
        was, now = Predicted.of(before), Predicted.of(after)
        evidence = KvCacheTuningEvidence(
            deployment_id=deployment.id,
            model=deployment.model,
            instance_type=current.instance_type,
            observed_kv_usage_p95=round(kv_p95, 4),
            observed_kv_usage_median=round(kv_median, 4),
            kv_pressure_usage=settings.kv_pressure_usage,
            observed_peak_requests_per_s=round(peak, 4),
            before=was,
            after=now,
            changes=changes,
            expected_quality_drop_pct=round(quality_drop, 3),
            candidates_tried=tried,
            reasons=[
                f"KV cache p95 {kv_p95:.0%} (median {kv_median:.0%}) is at or over "
                f"{settings.kv_pressure_usage:.0%}: vLLM preempts running sequences and queues new ones",
                f"now: {was.describe()}",
                f"proposed ({', '.join(f'{k} {a} -> {b}' for k, (a, b) in changes.items())}): {now.describe()}",
                f"expected quality cost {max(quality_drop, 0.0):.2f}% (gate {settings.max_quality_drop_pct:g}%)",
            ],
        )
        summary = (
            f"Tune the KV cache of {deployment.id} ({deployment.model}): concurrency {was.max_concurrency} -> "
            f"{now.max_concurrency} per replica, predicted p95 at peak {was.p95_ms / 1e3:.1f} s -> "
            f"{now.p95_ms / 1e3:.1f} s."
        )
        return forecast_proposal(
            KIND, deployment, desired, evidence, summary, before, after, settings, quality_drop
        )
