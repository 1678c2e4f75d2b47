"""KV-cache tuning: give a deployment whose KV cache is full more of it.

When vLLM preempts running sequences for want of KV blocks (the hourly preemptions per request reach
``DecisionSettings.kv_preempted_share``; where the engine exports no preemption count, when the observed
KV-cache use sits at ``kv_pressure_usage``, where vLLM starts preempting and queueing), the capacity model tries what vLLM offers without new hardware:
a larger ``gpu_memory_utilization`` (up to ``max_gpu_memory_utilization``), an FP8 KV cache (half the bytes
per token, where the GPU has FP8), prefix caching, and ``max_num_seqs`` set to what the cache then holds so
that the scheduler stops admitting sequences it would preempt. It proposes the config with the lowest
predicted p95 at the observed peak, with both forecasts (concurrency, capacity, p95) in the evidence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product
from typing import ClassVar, Literal

import numpy as np
import polars as pl

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
PREEMPTIONS, KV_USAGE = "preemptions", "kv_cache_usage"


class KvCacheTuningEvidence(Evidence):
    kind: Literal["kv_cache_tuning"] = KIND
    deployment_id: str
    model: str
    instance_type: str
    pressure_signal: Literal["preemptions", "kv_cache_usage"]  # which observation showed the pressure
    observed_preempted_share: float | None  # preemptions per request, worst hour (None: not exported)
    observed_preemptions_per_s: float | None  # per instance, in that hour
    kv_preempted_share: float
    observed_kv_usage_p95: float | None
    observed_kv_usage_median: float | None
    kv_pressure_usage: float
    observed_peak_requests_per_s: float
    before: Predicted
    after: Predicted
    changes: dict[str, tuple[object, object]]  # engine field -> (now, proposed)
    expected_quality_drop_pct: float
    candidates_tried: int


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class KvPressure:
    """What showed the KV cache too small: vLLM's preemption count, or (where the engine exports none) the
    KV-cache usage at which vLLM starts to preempt."""

    signal: Literal["preemptions", "kv_cache_usage"]
    preempted_share: float | None = None
    preemptions_per_s: float | None = None
    kv_p95: float | None = None
    kv_median: float | None = None

    def describe(self, settings: DecisionSettings) -> str:
        kv = "" if self.kv_p95 is None else f" (KV cache p95 {self.kv_p95:.0%}, median {self.kv_median:.0%})"
        if self.signal == PREEMPTIONS:
            return (
                f"vLLM preempted {self.preempted_share:.1%} of requests in the worst hour "
                f"({self.preemptions_per_s:.3f}/s per instance), at or over {settings.kv_preempted_share:.1%}"
                f"{kv}: the cache cannot hold the sequences the scheduler admits"
            )
        return (
            f"no preemption count exported; KV cache p95 {self.kv_p95:.0%} (median {self.kv_median:.0%}) is at "
            f"or over {settings.kv_pressure_usage:.0%}: vLLM preempts running sequences and queues new ones"
        )


def worst_hour_preemptions(hourly: pl.DataFrame) -> tuple[float, float] | None:
    """(preemptions per request, preemptions/s per instance) of the hour with the most preemptions per
    request, over the hours that report preemptions; None when none does (an engine without the counter,
    or hours rolled up before the store kept it)."""
    if hourly.is_empty() or "preemptions_per_s_avg" not in hourly.columns:
        return None
    preemptions = hourly["preemptions_per_s_avg"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    requests = hourly["requests_per_s_avg"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    reported = np.isfinite(preemptions) & np.isfinite(requests) & (requests > 0)
    if not reported.any():
        return None
    share = np.where(reported, preemptions / np.where(reported, requests, 1.0), -np.inf)
    worst = int(np.argmax(share))
    return float(share[worst]), float(preemptions[worst])


def kv_pressure(
    snapshot: FleetSnapshot, deployment: Deployment, settings: DecisionSettings
) -> KvPressure | str:
    """The KV pressure the deployment is under, or why there is none (or nothing to tell)."""
    kv = snapshot.baselines.get(deployment.id, {}).get(KV_USAGE)
    kv_p95, kv_median = (kv.p95, kv.median) if kv is not None and kv.n > 0 else (None, None)
    observed = worst_hour_preemptions(snapshot.hourly_of("performance", deployment.id))
    if observed is not None:
        share, per_s = observed
        if share < settings.kv_preempted_share:
            return (
                f"vLLM preempted {share:.2%} of requests in the worst hour, under the "
                f"{settings.kv_preempted_share:.1%} of pressure"
            )
        return KvPressure(PREEMPTIONS, share, per_s, kv_p95, kv_median)
    if kv_p95 is None or kv_median is None:
        return "no preemption count and no KV-cache usage baseline yet"
    if kv_p95 < settings.kv_pressure_usage:
        return (
            f"no preemption count; KV cache p95 {kv_p95:.0%} is under the "
            f"{settings.kv_pressure_usage:.0%} of pressure"
        )
    return KvPressure(KV_USAGE, kv_p95=kv_p95, kv_median=kv_median)


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
        pressure = kv_pressure(snapshot, deployment, settings)
        if isinstance(pressure, str):
            return pressure
        peak = observed_peak_requests_per_s(
            snapshot.baselines.get(deployment.id, {}), deployment.replicas, settings
        )
        if peak is None:
            return "no load baseline to size the KV cache for"
        tuned = tune_kv_cache(deployment, peak, settings)
        if isinstance(tuned, str):
            return tuned
        return self._proposal(deployment, pressure, peak, *tuned, settings)

    def _proposal(
        self,
        deployment: Deployment,
        pressure: KvPressure,
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
            pressure_signal=pressure.signal,
            observed_preempted_share=_rounded(pressure.preempted_share),
            observed_preemptions_per_s=_rounded(pressure.preemptions_per_s),
            kv_preempted_share=settings.kv_preempted_share,
            observed_kv_usage_p95=_rounded(pressure.kv_p95),
            observed_kv_usage_median=_rounded(pressure.kv_median),
            kv_pressure_usage=settings.kv_pressure_usage,
            observed_peak_requests_per_s=round(peak, 4),
            before=was,
            after=now,
            changes=changes,
            expected_quality_drop_pct=round(quality_drop, 3),
            candidates_tried=tried,
            reasons=[
                pressure.describe(settings),
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
