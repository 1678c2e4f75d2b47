"""Parallelism: tensor/pipeline parallel size and the instance they run on, from the model's size, the GPU's
memory, the interconnect (NVLink or PCIe, per instance type in the catalog) and the SLO.

vLLM runs one replica per instance with TP x PP = the instance's GPUs, so a different split is a different
instance type of the same GPU, or a TP/PP reshuffle on the same one (PP avoids per-layer all-reduces over
PCIe). For each instance type with the deployment's GPU, each split the model's heads and layers allow, and
the fewest replicas that hold the SLO plan at the observed peak, the serving model predicts p95. It proposes
when the model does not fit, p95 is over the SLO, or the same SLO holds on fewer GPUs (GPUs wasted).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import BaseModel

from optiinfra_assets.agents import performance
from optiinfra_assets.agents.capability import (
    Estimate,
    Evidence,
    Objective,
    PerDeploymentCapability,
    Proposal,
)
from optiinfra_assets.agents.performance import (
    AGENT,
    ConfigForecast,
    Predicted,
    change_estimate,
    forecast_config,
    forecast_proposal,
    observed_peak_requests_per_s,
    with_engine,
)
from optiinfra_assets.catalog import INSTANCE_TYPES, InstanceType, instance_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig, Lifecycle
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "parallelism"


class Layout(BaseModel):
    instance_type: str
    gpus_per_replica: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    interconnect: str  # nvlink | pcie | none
    replicas: int
    gpus: int
    usd_per_hour: float


class ParallelismEvidence(Evidence):
    kind: Literal["parallelism"] = KIND
    deployment_id: str
    model: str
    trigger: Literal["does_not_fit", "over_slo", "gpus_wasted"]
    observed_peak_requests_per_s: float
    slo_p95_ms: float
    current_layout: Layout
    proposed_layout: Layout
    current_fits: bool
    current_reason: str
    before: Predicted | None  # None when the current config does not fit
    after: Predicted
    layouts_tried: int


def splits(gpus: int) -> list[tuple[int, int]]:
    """(TP, PP) pairs with TP x PP = gpus, TP a power of two (vLLM's all-reduce kernels), TP-first."""
    return [(tp, gpus // tp) for tp in (2**k for k in range(7)) if tp <= gpus and gpus % tp == 0][::-1]


def replica_mix(current: DeploymentConfig, itype: InstanceType, replicas: int) -> tuple[int, int]:
    """(on-demand, spot) for ``replicas`` in the current config's lifecycle proportions (all on-demand on a
    type without a spot market)."""
    if itype.spot_usd_hour is None:
        return replicas, 0
    spot = round(replicas * current.spot_replicas / current.replicas)
    return replicas - spot, spot


def one_replica(config: DeploymentConfig) -> DeploymentConfig:
    return config.model_copy(update={"on_demand_replicas": 1, "spot_replicas": 0})


def hourly_price(config: DeploymentConfig) -> float:
    itype = instance_type(config.instance_type)
    spot = itype.price_usd_hour(Lifecycle.SPOT) if config.spot_replicas else 0.0
    return config.on_demand_replicas * itype.ondemand_usd_hour + config.spot_replicas * spot


def layout_of(config: DeploymentConfig) -> Layout:
    itype = instance_type(config.instance_type)
    return Layout(
        instance_type=itype.name,
        gpus_per_replica=itype.gpu_count,
        tensor_parallel_size=config.engine.tensor_parallel_size,
        pipeline_parallel_size=config.engine.pipeline_parallel_size,
        interconnect=itype.interconnect,
        replicas=config.replicas,
        gpus=config.replicas * itype.gpu_count,
        usd_per_hour=round(hourly_price(config), 4),
    )


def same_gpu_types(itype: InstanceType) -> list[InstanceType]:
    """Instance types with the same GPU, one per GPU count (the cheapest), fewest GPUs first."""
    cheapest: dict[int, InstanceType] = {}
    for other in INSTANCE_TYPES.values():
        if other.gpu is itype.gpu:
            best = cheapest.get(other.gpu_count)
            if best is None or other.ondemand_usd_hour < best.ondemand_usd_hour:
                cheapest[other.gpu_count] = other
    return [cheapest[n] for n in sorted(cheapest)]


def smallest_holding(
    deployment: Deployment,
    itype: InstanceType,
    tp: int,
    pp: int,
    peak: float,
    customer: Customer,
    settings: DecisionSettings,
) -> tuple[DeploymentConfig, ConfigForecast] | None:
    """The fewest replicas of (instance type, TP, PP) holding the SLO plan at the peak, None if none can."""
    current = deployment.config
    engine_config = with_engine(
        current.model_copy(update={"instance_type": itype.name}),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
    )
    one = forecast_config(deployment.model, one_replica(engine_config), peak)
    if not one.fits:
        return None
    # p95 falls with the load per replica towards the unloaded latency: when even that misses the SLO plan,
    # the step time is too slow and no replica count helps.
    unloaded = forecast_config(deployment.model, one_replica(engine_config), _UNLOADED_REQUESTS_PER_S)
    if unloaded.p95_ms > (1.0 - settings.perf_slo_margin) * customer.slo_p95_latency_ms:
        return None
    # Fewest replicas at the planned utilization, then more until p95 holds too (bounded by max_replicas).
    start = max(1, math.ceil(peak / (one.replica_capacity_rps * settings.perf_max_planned_utilization)))
    for replicas in range(start, current.max_replicas + 1):
        on_demand, spot = replica_mix(current, itype, replicas)
        config = engine_config.model_copy(update={"on_demand_replicas": on_demand, "spot_replicas": spot})
        forecast = forecast_config(deployment.model, config, peak)
        if forecast.holds(customer.slo_p95_latency_ms, settings):
            return config, forecast
    return None


def layout_key(config: DeploymentConfig) -> tuple[int, int, int]:
    """GPUs per replica, TP and PP: what parallelism changes (the same key on a cheaper type of the same
    size, or with other replica counts, is right-sizing's and autoscaling's)."""
    engine = config.engine
    gpus = instance_type(config.instance_type).gpu_count
    return gpus, engine.tensor_parallel_size, engine.pipeline_parallel_size


# A load so light that nothing queues: what one request's latency is on its own.
_UNLOADED_REQUESTS_PER_S = 1e-6


def unloaded_p95_ms(deployment: Deployment) -> float:
    """p95 of the current config with no queueing: the latency its step time alone gives."""
    return forecast_config(deployment.model, deployment.config, _UNLOADED_REQUESTS_PER_S).p95_ms


def plan_parallelism(
    deployment: Deployment, peak: float, customer: Customer, settings: DecisionSettings
) -> tuple[list[tuple[DeploymentConfig, ConfigForecast]], int]:
    """Every layout that holds the SLO plan at its fewest replicas, fewest GPUs (then cheapest) first."""
    found, tried = [], 0
    for itype in same_gpu_types(instance_type(deployment.instance_type)):
        for tp, pp in splits(itype.gpu_count):
            tried += 1
            holding = smallest_holding(deployment, itype, tp, pp, peak, customer, settings)
            if holding is not None:
                found.append(holding)
    found.sort(key=lambda h: (h[1].gpus, hourly_price(h[0]), h[1].p95_ms))
    return found, tried


class Parallelism(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = (
        "Tensor/pipeline parallel size and instance type from model size, GPU memory, interconnect and the "
        "SLO: when the model does not fit, p95 is over the SLO, or GPUs are wasted."
    )
    evidence_model = ParallelismEvidence
    # One step: the target moves each pool by ceil(fraction x its change), so a canary of another layout
    # would drain a one-replica deployment's only instance while a fraction of the new ones serve its load.
    stages = (100,)
    # Fewer GPUs spend latency headroom on purpose: the SLO, not the old baseline, is the bar.
    stage_checks = (performance.latency_within_slo,)
    valued_by = ("latency_p95_delta_pct", "realized_monthly_savings_usd", "utilization_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        peak = observed_peak_requests_per_s(
            snapshot.baselines.get(deployment.id, {}), deployment.replicas, settings
        )
        if peak is None:
            return "no load baseline to size the layout for"
        current = deployment.config
        before = forecast_config(deployment.model, current, peak)
        slo = customer.slo_p95_latency_ms
        if not before.fits:
            trigger = "does_not_fit"
        elif unloaded_p95_ms(deployment) > (1.0 - settings.perf_slo_margin) * slo:
            # Over the SLO with no queue at all: the step time is too slow, which more replicas of the same
            # layout cannot fix (over the SLO under load is scaling's case).
            trigger = "over_slo"
        else:
            trigger = "gpus_wasted"
        layouts, tried = plan_parallelism(deployment, peak, customer, settings)
        # Another layout, not the same one with more or fewer replicas (autoscaling's and right-sizing's).
        layouts = [h for h in layouts if layout_key(h[0]) != layout_key(current)]
        if not layouts:
            return f"no layout of {instance_type(current.instance_type).gpu.name} GPUs holds the SLO plan at the peak"
        if trigger == "gpus_wasted":
            fewer = [h for h in layouts if h[1].gpus < before.gpus]
            if not fewer:
                return f"no layout holds the SLO on fewer than its {before.gpus} GPUs"
            desired, after = fewer[0]
        elif trigger == "over_slo":
            faster = [h for h in layouts if h[1].p95_ms < before.p95_ms]
            if not faster:
                return "no layout predicts a lower p95 than the current one"
            desired, after = faster[0]
        else:
            desired, after = layouts[0]
        if desired == current:
            return "the current layout is already the smallest that holds the SLO"
        return self._proposal(deployment, trigger, peak, slo, before, desired, after, tried, settings)

    def _proposal(
        self,
        deployment: Deployment,
        trigger: str,
        peak: float,
        slo: float,
        before: ConfigForecast,
        desired: DeploymentConfig,
        after: ConfigForecast,
        tried: int,
        settings: DecisionSettings,
    ) -> Proposal:
        current = deployment.config
        was_layout, new_layout = layout_of(current), layout_of(desired)
        savings = (was_layout.usd_per_hour - new_layout.usd_per_hour) * settings.hours_per_month
        now = Predicted.of(after)
        was = Predicted.of(before) if before.fits else None
        why = {
            "does_not_fit": f"{deployment.model} does not fit as configured ({before.reason})",
            "over_slo": f"predicted p95 at the peak {before.p95_ms / 1e3:.1f} s is over the {slo / 1e3:.0f} s SLO",
            "gpus_wasted": f"{was_layout.gpus} GPUs serve a peak that {new_layout.gpus} hold within the SLO plan",
        }[trigger]

        def text(layout: Layout) -> str:
            return (
                f"{layout.replicas} x {layout.instance_type} (TP {layout.tensor_parallel_size} x PP "
                f"{layout.pipeline_parallel_size}, {layout.interconnect}) = {layout.gpus} GPUs, "
                f"${layout.usd_per_hour:.2f}/h"
            )

        evidence = ParallelismEvidence(
            deployment_id=deployment.id,
            model=deployment.model,
            trigger=trigger,
            observed_peak_requests_per_s=round(peak, 4),
            slo_p95_ms=slo,
            current_layout=was_layout,
            proposed_layout=new_layout,
            current_fits=before.fits,
            current_reason=before.reason,
            before=was,
            after=now,
            layouts_tried=tried,
            reasons=[
                why,
                f"now: {text(was_layout)}" + (f": {was.describe()}" if was else ""),
                f"proposed: {text(new_layout)}: {now.describe()}",
                f"{tried} layouts of {instance_type(current.instance_type).gpu.name} tried (TP x PP = GPUs per "
                "instance, TP dividing the KV heads); all-reduces cost more over PCIe than NVLink",
            ],
        )
        summary = (
            f"Re-lay {deployment.id} ({deployment.model}) from {text(was_layout)} to {text(new_layout)}: "
            f"{why}; predicted p95 at peak {now.p95_ms / 1e3:.1f} s"
            + (f", ${savings:,.0f}/month" if savings > 0 else "")
            + "."
        )
        # A config that does not fit has no latency to compare with: only the money is estimated then.
        estimate = (
            change_estimate(before, after, savings)
            if before.fits
            else Estimate(monthly_savings_usd=round(savings, 2))
        )
        return forecast_proposal(
            KIND, deployment, desired, evidence, summary, before, after, settings, estimate=estimate
        )
