"""Batch tuning: max_num_seqs and max_num_batched_tokens (chunked prefill) from the observed load.

Along the throughput-latency frontier (each max_num_seqs up to what the KV cache holds, each chunked-prefill
budget), the serving model predicts one replica's capacity and the p95 at the observed peak; the choice is
the highest capacity whose p95 holds the SLO with the planning margin. It proposes when that beats the
current limits by ``min_performance_gain_pct`` and the current limits cost something now: the deployment
runs over the planned utilization or p95 is near the SLO at its peak.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel

from optiinfra_assets.agents import performance
from optiinfra_assets.agents.capability import Evidence, Objective, PerDeploymentCapability, Proposal
from optiinfra_assets.agents.performance import (
    AGENT,
    ConfigForecast,
    Predicted,
    forecast_config,
    forecast_proposal,
    kv_holdable_concurrency,
    observed_peak_requests_per_s,
    with_engine,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "batch_tuning"
# Chunked-prefill budgets tried (vLLM's defaults are 2048 and 8192 by GPU; 16384 suits long prompts).
BATCHED_TOKENS: tuple[int, ...] = (2048, 4096, 8192, 16384)


class FrontierPoint(BaseModel):
    max_num_seqs: int
    max_num_batched_tokens: int
    replica_capacity_rps: float
    p95_ms: float
    holds_slo: bool


class BatchTuningEvidence(Evidence):
    kind: Literal["batch_tuning"] = KIND
    deployment_id: str
    model: str
    instance_type: str
    observed_peak_requests_per_s: float
    kv_holdable_sequences: int
    max_num_seqs_from: int
    max_num_seqs_to: int
    max_num_batched_tokens_from: int
    max_num_batched_tokens_to: int
    before: Predicted
    after: Predicted
    frontier: list[FrontierPoint]  # the points that fit, by capacity


def seq_candidates(current: int, holdable: int) -> list[int]:
    """Powers of two from 8 up to the KV cache's concurrency, the concurrency itself and the current."""
    out = {current, max(1, holdable)}
    n = 8
    while n < holdable:
        out.add(n)
        n *= 2
    return sorted(out)


def frontier(
    deployment: Deployment, peak: float, customer: Customer, settings: DecisionSettings
) -> list[tuple[FrontierPoint, DeploymentConfig, ConfigForecast]]:
    """Every (max_num_seqs, max_num_batched_tokens) that fits, with its capacity and p95 at the peak."""
    current = deployment.config
    holdable = kv_holdable_concurrency(forecast_config(deployment.model, current, peak))
    points = []
    for seqs in seq_candidates(current.engine.max_num_seqs, holdable):
        for tokens in sorted({current.engine.max_num_batched_tokens, *BATCHED_TOKENS}):
            if tokens < seqs:
                continue
            config = with_engine(current, max_num_seqs=seqs, max_num_batched_tokens=tokens)
            forecast = forecast_config(deployment.model, config, peak)
            if not forecast.fits:
                continue
            point = FrontierPoint(
                max_num_seqs=seqs,
                max_num_batched_tokens=tokens,
                replica_capacity_rps=round(forecast.replica_capacity_rps, 4),
                p95_ms=round(forecast.p95_ms, 1),
                holds_slo=forecast.holds(customer.slo_p95_latency_ms, settings),
            )
            points.append((point, config, forecast))
    return sorted(points, key=lambda p: (-p[2].replica_capacity_rps, p[2].p95_ms))


class BatchTuning(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = (
        "max_num_seqs and max_num_batched_tokens from the observed load: the highest throughput on the "
        "throughput-latency frontier that holds the SLO."
    )
    evidence_model = BatchTuningEvidence
    # Batch limits do not touch the weights or the KV format: quality cannot move, latency can.
    stage_checks = (performance.latency_slo_or_recovering,)
    valued_by = ("latency_p95_delta_pct", "utilization_delta_pct", "quality_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        baselines = snapshot.baselines.get(deployment.id, {})
        peak = observed_peak_requests_per_s(baselines, deployment.replicas, settings)
        if peak is None:
            return "no load baseline to tune the batch for"
        before = forecast_config(deployment.model, deployment.config, peak)
        if not before.fits:
            return f"the current config does not fit ({before.reason}): parallelism's case"
        slo = customer.slo_p95_latency_ms
        if before.holds(slo, settings):
            return (
                f"the current limits hold the SLO plan at the peak ({before.utilization:.0%} utilized, p95 "
                f"{before.p95_ms / 1e3:.1f} s of {slo / 1e3:.0f} s)"
            )
        points = frontier(deployment, peak, customer, settings)
        holding = [p for p in points if p[0].holds_slo]
        if not holding:
            return "no batch limit holds the SLO plan at the observed peak: more replicas or faster hardware"
        _, desired, after = holding[0]
        gain = 100.0 * (after.replica_capacity_rps / before.replica_capacity_rps - 1.0)
        if desired == deployment.config or gain < settings.min_performance_gain_pct:
            return f"the frontier's best point gains {gain:.1f}% throughput, under the {settings.min_performance_gain_pct:g}% worth a change"
        holdable = kv_holdable_concurrency(before)
        was, now = Predicted.of(before), Predicted.of(after)
        engine, new = deployment.config.engine, desired.engine
        evidence = BatchTuningEvidence(
            deployment_id=deployment.id,
            model=deployment.model,
            instance_type=deployment.instance_type,
            observed_peak_requests_per_s=round(peak, 4),
            kv_holdable_sequences=holdable,
            max_num_seqs_from=engine.max_num_seqs,
            max_num_seqs_to=new.max_num_seqs,
            max_num_batched_tokens_from=engine.max_num_batched_tokens,
            max_num_batched_tokens_to=new.max_num_batched_tokens,
            before=was,
            after=now,
            frontier=[p for p, _, _ in points],
            reasons=[
                f"now (max_num_seqs {engine.max_num_seqs}, max_num_batched_tokens "
                f"{engine.max_num_batched_tokens}): {was.describe()}",
                f"the KV cache holds {holdable} sequences of the average context",
                f"highest-throughput point holding p95 <= {(1 - settings.perf_slo_margin):.0%} of the "
                f"{slo / 1e3:.0f} s SLO at <= {settings.perf_max_planned_utilization:.0%} utilization: "
                f"max_num_seqs {new.max_num_seqs}, max_num_batched_tokens {new.max_num_batched_tokens}: "
                f"{now.describe()}",
            ],
        )
        changed = ", ".join(
            f"{k.removeprefix('engine.')} {a} -> {b}"
            for k, (a, b) in deployment.config.changes(desired).items()
        )
        summary = (
            f"Retune the batch limits of {deployment.id} ({deployment.model}): {changed}; capacity "
            f"+{gain:.0f}%, p95 at peak {was.p95_ms / 1e3:.1f} s -> {now.p95_ms / 1e3:.1f} s."
        )
        return forecast_proposal(KIND, deployment, desired, evidence, summary, before, after, settings)
