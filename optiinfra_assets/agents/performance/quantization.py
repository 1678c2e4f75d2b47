"""Quantization: serve a 16-bit model as FP8, INT8 or INT4-AWQ where the GPU runs the format, for memory and
throughput, at the quality cost the serving model expects for the model's size (serving.quality_factor).

It acts on deployments that run hot (peak utilization over ``quantize_from_peak_utilization``) and leaves lossless fixes first: a full KV cache is kv_cache_tuning's, a binding batch limit is
batch_tuning's. Of the formats that fit, the GPU supports and stay within the quality gate, it picks the
least lossy one that holds the SLO at the observed peak (else the fastest). Every stage is canaried behind
the application agent's quality gate: the sandbox lowers served quality by the same factor, so a
quantization that costs more than the gate rolls back.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel

from optiinfra_assets.agents import application, performance
from optiinfra_assets.agents.capability import Evidence, Objective, PerDeploymentCapability, Proposal
from optiinfra_assets.agents.performance import (
    AGENT,
    ConfigForecast,
    Predicted,
    batch_limit_gain_pct,
    expected_quality_drop_pct,
    forecast_config,
    forecast_proposal,
    gain_pct,
    observed_peak_requests_per_s,
    with_engine,
)
from optiinfra_assets.catalog import instance_type, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig, Quantization
from optiinfra_assets.serving import served_quantization
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "quantization"
# Least lossy first (serving.QUALITY_LOSS_AT_8B): the order ties are broken in.
FORMATS: tuple[Quantization, ...] = (Quantization.FP8, Quantization.INT8, Quantization.INT4_AWQ)
UNQUANTIZED = (Quantization.FP16, Quantization.BF16)


class QuantOption(BaseModel):
    """One format as the serving model sees it for this deployment."""

    quantization: Quantization
    fits: bool
    why_not: str = ""  # the field and reason when the GPU or the memory cannot run it
    weights_gib_per_gpu: float | None = None
    replica_capacity_rps: float | None = None
    p95_ms: float | None = None
    expected_quality_drop_pct: float | None = None


class QuantizationEvidence(Evidence):
    kind: Literal["quantization"] = KIND
    deployment_id: str
    model: str
    params_b: float
    instance_type: str
    gpu: str
    quantization_from: Quantization
    quantization_to: Quantization
    observed_peak_requests_per_s: float
    before: Predicted
    after: Predicted
    options: list[QuantOption]
    expected_quality_drop_pct: float
    quality_gate_pct: float


def quantization_options(
    deployment: Deployment, peak: float, before: ConfigForecast, formats: tuple[Quantization, ...] = FORMATS
) -> list[tuple[QuantOption, DeploymentConfig, ConfigForecast]]:
    """Every format of ``formats`` for the deployment, with why it cannot run where it cannot."""
    out = []
    for fmt in formats:
        config = with_engine(deployment.config, quantization=fmt)
        after = forecast_config(deployment.model, config, peak)
        if not after.fits:
            option = QuantOption(quantization=fmt, fits=False, why_not=after.reason)
        else:
            option = QuantOption(
                quantization=fmt,
                fits=True,
                weights_gib_per_gpu=round(after.weights_gib_per_gpu, 3),
                replica_capacity_rps=round(after.replica_capacity_rps, 4),
                p95_ms=round(after.p95_ms, 1),
                expected_quality_drop_pct=round(expected_quality_drop_pct(before, after), 3),
            )
        out.append((option, config, after))
    return out


def choose_format(
    options: list[tuple[QuantOption, DeploymentConfig, ConfigForecast]],
    customer: Customer,
    settings: DecisionSettings,
) -> tuple[QuantOption, DeploymentConfig, ConfigForecast] | None:
    """The least lossy format that holds the SLO plan at the peak, else the fastest within the quality gate."""
    allowed = [
        o
        for o in options
        if o[0].fits and (o[0].expected_quality_drop_pct or 0.0) <= settings.max_quality_drop_pct
    ]
    holding = [o for o in allowed if o[2].holds(customer.slo_p95_latency_ms, settings)]
    if holding:
        return holding[0]  # FORMATS is least lossy first
    return min(allowed, key=lambda o: o[2].p95_ms, default=None)


class QuantizationCapability(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = (
        "Serve FP16/BF16 models as FP8, INT8 or INT4-AWQ where the GPU supports it, for throughput and "
        "memory, canaried behind the quality gate."
    )
    evidence_model = QuantizationEvidence
    formats: ClassVar[tuple[Quantization, ...]] = FORMATS  # the formats considered, least lossy first
    stage_checks = (application.quality_gate, performance.latency_slo_or_recovering)
    valued_by = ("latency_p95_delta_pct", "quality_delta_pct", "utilization_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        spec = model(deployment.model)
        served = served_quantization(spec, deployment.config.engine)
        if served not in UNQUANTIZED:
            return f"already served as {served.value}"
        baselines = snapshot.baselines.get(deployment.id, {})
        peak = observed_peak_requests_per_s(baselines, deployment.replicas, settings)
        if peak is None:
            return "no load baseline to size the change for"
        before = forecast_config(deployment.model, deployment.config, peak)
        if not before.fits:
            return f"the current config does not fit ({before.reason}): parallelism's case"
        slo = customer.slo_p95_latency_ms
        # Quantizing trades quality for throughput: only worth it where throughput is short at the peak.
        if before.utilization < settings.quantize_from_peak_utilization:
            return (
                f"runs cool: {before.utilization:.0%} utilized at the observed peak (quantizing from "
                f"{settings.quantize_from_peak_utilization:.0%}), p95 {before.p95_ms / 1e3:.1f} s of a "
                f"{slo / 1e3:.0f} s SLO"
            )
        kv = baselines.get("kv_cache_usage")
        if kv is not None and kv.n and kv.p95 >= settings.kv_pressure_usage:
            return f"KV cache p95 {kv.p95:.0%} is under pressure: kv_cache_tuning first (near lossless)"
        if (
            batch_limit_gain_pct(deployment.model, deployment.config, peak)
            >= settings.min_performance_gain_pct
        ):
            return "max_num_seqs binds below what the KV cache holds: batch_tuning first (lossless)"
        options = quantization_options(deployment, peak, before, self.formats)
        chosen = choose_format(options, customer, settings)
        if chosen is None:
            return "no format the GPU runs fits within the quality gate: " + "; ".join(
                f"{o.quantization.value}: {o.why_not or f'{o.expected_quality_drop_pct}% quality'}"
                for o, _, _ in options
            )
        option, desired, after = chosen
        gain = max(gain_pct(before.p95_ms, after.p95_ms), -gain_pct(before.capacity_rps, after.capacity_rps))
        if gain < settings.min_performance_gain_pct:
            return f"{option.quantization.value} gains {gain:.1f}%, under the {settings.min_performance_gain_pct:g}% worth a change"
        return self._proposal(
            deployment, spec.param_count(), served, peak, before, after, desired, option, options, settings
        )

    def _proposal(
        self,
        deployment: Deployment,
        params: int,
        served: Quantization,
        peak: float,
        before: ConfigForecast,
        after: ConfigForecast,
        desired: DeploymentConfig,
        option: QuantOption,
        options: list[tuple[QuantOption, DeploymentConfig, ConfigForecast]],
        settings: DecisionSettings,
    ) -> Proposal:
        itype = instance_type(deployment.instance_type)
        drop = expected_quality_drop_pct(before, after)
        was, now = Predicted.of(before), Predicted.of(after)
        fmt = option.quantization
        checkpoint = (
            "vLLM quantizes the 16-bit checkpoint to FP8 at load"
            if fmt is Quantization.FP8
            else f"needs a {fmt.value} checkpoint of {deployment.model} (W8A8 / AWQ)"
        )
        evidence = QuantizationEvidence(
            deployment_id=deployment.id,
            model=deployment.model,
            params_b=round(params / 1e9, 2),
            instance_type=itype.name,
            gpu=itype.gpu.name,
            quantization_from=served,
            quantization_to=fmt,
            observed_peak_requests_per_s=round(peak, 4),
            before=was,
            after=now,
            options=[o for o, _, _ in options],
            expected_quality_drop_pct=round(drop, 3),
            quality_gate_pct=settings.max_quality_drop_pct,
            reasons=[
                f"now ({served.value}): {was.describe()}",
                f"as {fmt.value}: {now.describe()}",
                f"weights {was.weights_gib_per_gpu:.1f} -> {now.weights_gib_per_gpu:.1f} GiB per GPU; "
                f"{checkpoint}",
                f"expected quality cost {drop:.2f}% for a {params / 1e9:.1f}B model (gate "
                f"{settings.max_quality_drop_pct:g}%); canaried behind the quality gate",
            ]
            + [f"{o.quantization.value}: {o.why_not}" for o, _, _ in options if not o.fits],
        )
        summary = (
            f"Serve {deployment.id} ({deployment.model}) as {fmt.value} instead of {served.value} on "
            f"{itype.gpu.name}: capacity {was.replica_capacity_rps:.2f} -> {now.replica_capacity_rps:.2f} req/s "
            f"per replica, p95 at peak {was.p95_ms / 1e3:.1f} s -> {now.p95_ms / 1e3:.1f} s, expected quality "
            f"cost {drop:.2f}%."
        )
        return forecast_proposal(KIND, deployment, desired, evidence, summary, before, after, settings, drop)
