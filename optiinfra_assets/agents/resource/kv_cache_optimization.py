"""KV-cache optimization (the resource agent's view): from KV-cache use and preemptions, the cheapest change
that gives the cache room - prefix caching, FP8 KV cache, KV offload to CPU memory - or a ``max_num_seqs``
that stops preemption thrash when nothing else can.

vLLM preempts (recomputes) running sequences when the KV cache is full; the hourly rollup keeps KV-cache use
per deployment (mean and p95/p99), so an hour whose p99 reaches ``PREEMPTING`` is counted as preempting. The
serving model (serving.py) judges each option at the deployment's peak: the KV tokens it gives, the cache use
and p95 it predicts. It overlaps the performance agent's ``kv_cache_tuning`` on purpose; when both propose for
one deployment, coordination settles it (no code is shared with it except through serving.py).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from optiinfra_assets.agents import application, performance
from optiinfra_assets.agents.capability import (
    Estimate,
    Evidence,
    Objective,
    PerDeploymentCapability,
    Proposal,
    Skip,
)
from optiinfra_assets.agents.resource import AGENT
from optiinfra_assets.catalog import InstanceType, instance_type, kv_dtype_problem, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, EngineConfig, KvCacheDtype
from optiinfra_assets.serving import load_point, serving_capacity
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "kv_cache_optimization"
KV_P95, KV_P99 = "kv_cache_usage_p95", "kv_cache_usage_p99"
# KV-cache use at which an hour counts as under pressure, and at which vLLM is preempting.
PRESSURE, PREEMPTING = 0.9, 0.98
RECENT_HOURS = 24
# CPU memory of the instance left to the OS, the engine's process and the page cache before KV offload.
HOST_RESERVED_FRACTION = 0.5


class KvCacheOptimizationEvidence(Evidence):
    kind: Literal["kv_cache_optimization"] = KIND
    deployment_id: str
    kv_usage_p95: float
    pressure_hours: int
    preempting_hours: int
    hours: int
    option: str
    kv_tokens_before: int
    kv_tokens_after: int
    predicted_kv_usage_before: float
    predicted_kv_usage_after: float
    predicted_p95_before_ms: float
    predicted_p95_after_ms: float
    options_considered: list[str]


def _options(engine: EngineConfig, itype: InstanceType) -> list[tuple[str, EngineConfig]]:
    """Changes in order of cost to quality and operations: free first, lossy later, limiting last."""
    out: list[tuple[str, EngineConfig]] = []
    if not engine.enable_prefix_caching:
        out.append(("enable prefix caching", engine.model_copy(update={"enable_prefix_caching": True})))
    full_width = engine.kv_cache_dtype in (KvCacheDtype.AUTO, KvCacheDtype.FP16, KvCacheDtype.BF16)
    if full_width and kv_dtype_problem(itype.gpu, KvCacheDtype.FP8) is None:
        out.append(("FP8 KV cache", engine.model_copy(update={"kv_cache_dtype": KvCacheDtype.FP8})))
    host_free = itype.memory_gib * (1.0 - HOST_RESERVED_FRACTION)
    if engine.kv_offload_gib < host_free:
        out.append(
            (
                f"KV offload of {host_free:.0f} GiB to CPU memory",
                engine.model_copy(update={"kv_offload_gib": host_free}),
            )
        )
    return out


class KvCacheOptimization(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = (
        "Give the KV cache room where it runs full or preempts: prefix caching, FP8 KV cache, KV offload to "
        "CPU memory, or a max_num_seqs that stops preemption."
    )
    evidence_model = KvCacheOptimizationEvidence
    stage_checks = (application.quality_gate, performance.latency_slo)
    valued_by = ("latency_p95_delta_pct", "quality_delta_pct", "utilization_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | Skip | str:
        rows = snapshot.hourly_of("performance", deployment.id)
        if rows.is_empty() or KV_P95 not in rows.columns:
            return "no KV-cache history yet"
        recent = rows.tail(RECENT_HOURS)
        p95 = recent[KV_P95].fill_null(0.0).to_numpy()
        p99 = recent[KV_P99].fill_null(0.0).to_numpy() if KV_P99 in recent.columns else p95
        pressure, preempting = int(np.sum(p95 >= PRESSURE)), int(np.sum(p99 >= PREEMPTING))
        if pressure == 0 and preempting == 0:
            return f"no KV pressure: p95 use at most {float(p95.max()):.0%} in the last {len(p95)} h"
        return self._propose(
            snapshot, deployment, float(np.max(p95)), pressure, preempting, len(p95), settings
        )

    def _propose(
        self,
        snapshot: FleetSnapshot,
        deployment: Deployment,
        usage_p95: float,
        pressure: int,
        preempting: int,
        hours: int,
        settings: DecisionSettings,
    ) -> Proposal | Skip:
        config = deployment.config
        itype, spec = instance_type(config.instance_type), model(deployment.model)
        stat = snapshot.baseline(deployment.id, "requests_per_s")
        peak = stat.p95 * (1.0 + settings.peak_growth_margin) if stat else deployment.base_requests_per_s
        before_cap = serving_capacity(spec, itype, config.engine)
        if not before_cap.fits:
            return Skip(
                deployment_id=deployment.id, reason=f"current config does not fit: {before_cap.reason}"
            )
        before = load_point(before_cap, itype, peak)
        considered: list[str] = []
        chosen = None
        for label, engine in _options(config.engine, itype):
            cap = serving_capacity(spec, itype, engine)
            if not cap.fits:
                considered.append(f"{label}: does not fit ({cap.reason})")
                continue
            after = load_point(cap, itype, peak)
            considered.append(
                f"{label}: {cap.kv_cache_tokens + cap.kv_offload_tokens} KV tokens, use {after.kv_cache_usage:.0%}, "
                f"p95 {after.latency_p95_ms:.0f} ms"
            )
            more_room = cap.kv_cache_tokens + cap.kv_offload_tokens > before_cap.kv_cache_tokens
            if chosen is None and more_room and after.latency_p95_ms <= before.latency_p95_ms * 1.05:
                chosen = (label, engine, cap, after)
        if chosen is None:
            # Nothing adds room: cap the batch at what the cache holds, so sequences wait rather than thrash.
            fits = max(1, int(before_cap.kv_cache_tokens // before_cap.avg_context_tokens))
            if fits >= config.engine.max_num_seqs:
                return Skip(
                    deployment_id=deployment.id,
                    reason="KV pressure but no option helps: " + "; ".join(considered),
                )
            engine = config.engine.model_copy(update={"max_num_seqs": fits})
            cap = serving_capacity(spec, itype, engine)
            chosen = (
                f"max_num_seqs {config.engine.max_num_seqs} -> {fits}",
                engine,
                cap,
                load_point(cap, itype, peak),
            )
            considered.append(chosen[0])
        label, engine, cap, after = chosen
        desired = config.model_copy(update={"engine": engine})
        change = 100.0 * (after.latency_p95_ms / before.latency_p95_ms - 1.0)
        evidence = KvCacheOptimizationEvidence(
            deployment_id=deployment.id,
            kv_usage_p95=round(usage_p95, 4),
            pressure_hours=pressure,
            preempting_hours=preempting,
            hours=hours,
            option=label,
            kv_tokens_before=before_cap.kv_cache_tokens,
            kv_tokens_after=cap.kv_cache_tokens + cap.kv_offload_tokens,
            predicted_kv_usage_before=round(before.kv_cache_usage, 4),
            predicted_kv_usage_after=round(after.kv_cache_usage, 4),
            predicted_p95_before_ms=round(before.latency_p95_ms, 1),
            predicted_p95_after_ms=round(after.latency_p95_ms, 1),
            options_considered=considered,
            reasons=[
                f"KV-cache p95 use {usage_p95:.0%}; {pressure} of {hours} h at or over {PRESSURE:.0%}, {preempting} h "
                f"preempting (p99 at or over {PREEMPTING:.0%})",
                f"{label}: KV tokens {before_cap.kv_cache_tokens} -> {cap.kv_cache_tokens + cap.kv_offload_tokens}, "
                f"p95 at peak {before.latency_p95_ms:.0f} -> {after.latency_p95_ms:.0f} ms (serving model)",
            ],
        )
        return Proposal(
            kind=KIND,
            customer_id=deployment.customer_id,
            deployment_id=deployment.id,
            current=config,
            desired=desired,
            evidence=evidence,
            estimate=Estimate(p95_latency_change_pct=round(change, 2)),
            risk_score=0.35 if "FP8" in label else 0.2,
            summary=f"{label} on {deployment.id}: its KV cache runs full ({usage_p95:.0%} p95, {preempting} h preempting)",
        )
