"""Right-sizing: the cheapest (instance type, tensor x pipeline parallel split, replica count) of the catalog
that serves a deployment's model with enough KV cache for its observed concurrency and holds its latency SLO
at the observed p95 load plus a growth margin, judged by the serving model.

The search is exact over the catalog and prunes by a lower bound: a candidate needs at least
``ceil(peak / (max utilization x one replica's capacity))`` replicas and enough replicas for the KV tokens in
use, and a config's price only grows with its replicas, so a candidate whose bound already costs more than the
best feasible config found cannot win. Every candidate is listed in the evidence with why it lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

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
from optiinfra_assets.catalog import (
    INSTANCE_TYPES,
    InstanceType,
    config_usd_hour,
    default_engine,
    instance_type,
    kv_dtype_problem,
    model,
    quantization_problem,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig, EngineConfig, Quantization, Risk
from optiinfra_assets.serving import ServingCapacity, load_points, serving_capacity
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "right_sizing"
# Replica counts tried above a candidate's lower bound before it is judged unable to hold the SLO: the
# queueing term grows without bound only near saturation, which the utilization cap already keeps away.
REPLICA_SEARCH_SPAN = 32
# Risk weights: how close the planned peak runs to the SLO, how busy the replicas are, and whether the
# hardware changes at all (a new instance type or parallel split is a bigger step than scaling in). They sum
# to 0.8: a config at both limits on new hardware is high risk; the peak is already planned with a margin.
W_LATENCY, W_UTILIZATION, W_HARDWARE = 0.3, 0.3, 0.2
SCALE_ONLY_HARDWARE_TERM = 0.3  # the hardware term when only the replica count changes
# A config within this share of the current price is the same price (rounding, not a saving to act on).
SAME_PRICE_SHARE = 0.005


class ConfigFigures(BaseModel):
    """A config as right-sizing priced and judged it, at the planned peak load."""

    instance_type: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int
    usd_month: float
    predicted_p95_ms: float
    utilization: float  # of each replica at the planned peak
    headroom: float  # 1 - predicted p95 / SLO


class Candidate(BaseModel):
    """One (instance type, TP x PP) the search considered, and its verdict."""

    instance_type: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    replicas: int | None = None  # the fewest that hold the SLO, where some do
    usd_month: float | None = None  # of that count, or of the lower bound when pruned
    predicted_p95_ms: float | None = None
    utilization: float | None = None
    verdict: Literal["chosen", "costlier", "pruned", "infeasible"]
    why: str


class RightSizingEvidence(Evidence):
    kind: Literal["right_sizing"] = KIND
    customer_id: str
    deployment_id: str
    model: str
    slo_p95_ms: float
    observed_p95_requests_per_s: float  # the whole deployment, at its baseline p95
    planned_peak_requests_per_s: float  # plus the growth margin
    kv_tokens_needed: float  # KV tokens in use at the baseline p95 of cache use, plus the margin
    growth_margin: float
    max_utilization: float
    current: ConfigFigures
    proposed: ConfigFigures
    monthly_savings_usd: float
    savings_pct: float
    candidates: list[Candidate] = Field(default_factory=list)
    risk_score: float = Field(ge=0, le=1)
    risk: Risk


@dataclass(frozen=True)
class Demand:
    """What a config must carry: the planned peak and the KV tokens in use at it, within the SLO."""

    peak_requests_per_s: float
    kv_tokens: float
    slo_p95_ms: float
    max_utilization: float


@lru_cache(maxsize=16_384)
def _capacity(model_name: str, itype_name: str, engine: EngineConfig) -> ServingCapacity:
    # Pure in its arguments; many deployments serve the same models, so each pair is computed once.
    return serving_capacity(model(model_name), instance_type(itype_name), engine)


def parallel_splits(gpus: int) -> list[tuple[int, int]]:
    """(TP, PP) pairs using all of an instance's GPUs (one replica per instance), most TP first."""
    return [(tp, gpus // tp) for tp in range(gpus, 0, -1) if gpus % tp == 0]


def candidate_engine(current: DeploymentConfig, itype: InstanceType, tp: int, pp: int) -> EngineConfig | str:
    """The engine a candidate runs: the current one on its own hardware; elsewhere vLLM's per-GPU scheduler
    defaults with the current weight format, KV dtype, context length and memory settings (bf16 becomes
    fp16 on GPUs without bf16: the same numbers). A string says why the GPU cannot run it."""
    engine = current.engine
    same = itype.name == current.instance_type and (tp, pp) == (
        engine.tensor_parallel_size,
        engine.pipeline_parallel_size,
    )
    if same:
        return engine
    quantization = engine.quantization
    if quantization is Quantization.BF16 and "bf16" not in itype.gpu.features:
        quantization = Quantization.FP16
    if (why := quantization_problem(itype.gpu, quantization)) is not None:
        return why
    if (why := kv_dtype_problem(itype.gpu, engine.kv_cache_dtype)) is not None:
        return why
    return default_engine(
        itype.gpu,
        itype.gpu_count,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        quantization=quantization,
        kv_cache_dtype=engine.kv_cache_dtype,
        max_model_len=engine.max_model_len,
        gpu_memory_utilization=engine.gpu_memory_utilization,
        enable_prefix_caching=engine.enable_prefix_caching,
        kv_offload_gib=engine.kv_offload_gib,
    )


def spot_count(current: DeploymentConfig, itype: InstanceType, replicas: int) -> int:
    """Spot replicas of ``replicas``: the current share of spot, where the type has a spot market."""
    share = current.spot_replicas / current.replicas
    return math.floor(replicas * share) if itype.spot_usd_hour is not None else 0


def sized_config(
    current: DeploymentConfig, itype: InstanceType, engine: EngineConfig, replicas: int
) -> DeploymentConfig:
    """``replicas`` of a type, keeping the current share of spot replicas where the type has a spot market."""
    spot = spot_count(current, itype, replicas)
    return DeploymentConfig(
        instance_type=itype.name,
        on_demand_replicas=replicas - spot,
        spot_replicas=spot,
        min_replicas=min(current.min_replicas, replicas),
        max_replicas=max(current.max_replicas, replicas),
        engine=engine,
    )


def _usd_month(config: DeploymentConfig, settings: DecisionSettings) -> float:
    return config_usd_hour(config) * settings.hours_per_month


def judge(
    cap: ServingCapacity, itype: InstanceType, demand: Demand, replicas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted p95 ms, utilization) of each replica count at the planned peak, split evenly."""
    points = load_points(cap, itype, demand.peak_requests_per_s / replicas)
    return points["latency_p95_ms"], points["utilization"]


def fewest_replicas(
    cap: ServingCapacity, itype: InstanceType, demand: Demand, lower: int
) -> tuple[int, float, float] | None:
    """(replicas, p95, utilization) of the fewest replicas from ``lower`` on that hold the SLO within the
    utilization cap, or None within REPLICA_SEARCH_SPAN."""
    counts = np.arange(lower, lower + REPLICA_SEARCH_SPAN, dtype=np.float64)
    p95, util = judge(cap, itype, demand, counts)
    ok = np.nonzero((p95 <= demand.slo_p95_ms) & (util <= demand.max_utilization))[0]
    if not ok.size:
        return None
    k = int(ok[0])
    return int(counts[k]), float(p95[k]), float(util[k])


@dataclass(slots=True)
class _Option:
    itype: InstanceType
    tp: int
    pp: int
    engine: EngineConfig | None
    cap: ServingCapacity | None
    lower: int
    lower_usd_month: float
    problem: str | None


def _lower_bound(
    model_name: str,
    current: DeploymentConfig,
    itype: InstanceType,
    tp: int,
    pp: int,
    demand: Demand,
    settings: DecisionSettings,
) -> _Option:
    engine, cap = _served(model_name, current.instance_type, current.engine, itype.name, tp, pp)
    if isinstance(engine, str):
        return _Option(itype, tp, pp, None, None, 0, math.inf, engine)
    assert cap is not None
    if not cap.fits:
        return _Option(itype, tp, pp, engine, cap, 0, math.inf, cap.reason)
    by_load = math.ceil(demand.peak_requests_per_s / (demand.max_utilization * cap.max_requests_per_s) - 1e-9)
    by_kv = math.ceil(demand.kv_tokens / max(cap.kv_cache_tokens, 1) - 1e-9)
    lower = max(1, current.min_replicas, by_load, by_kv)
    # config_usd_hour of sized_config(current, itype, engine, lower), without building the config: the
    # bound is priced for every candidate of every deployment.
    spot = spot_count(current, itype, lower)
    usd_hour = (lower - spot) * itype.ondemand_usd_hour + spot * (itype.spot_usd_hour or 0.0)
    return _Option(itype, tp, pp, engine, cap, lower, usd_hour * settings.hours_per_month, None)


@lru_cache(maxsize=65_536)
def _served(
    model_name: str, current_type: str, current_engine: EngineConfig, itype_name: str, tp: int, pp: int
) -> tuple[EngineConfig | str, ServingCapacity | None]:
    """A candidate's engine (or why it cannot run) and its capacity; pure, so computed once per process."""
    current = DeploymentConfig(instance_type=current_type, on_demand_replicas=1, engine=current_engine)
    engine = candidate_engine(current, instance_type(itype_name), tp, pp)
    if isinstance(engine, str):
        return engine, None
    return engine, _capacity(model_name, itype_name, engine)


def search(
    model_name: str,
    current: DeploymentConfig,
    demand: Demand,
    settings: DecisionSettings,
    itypes: tuple[InstanceType, ...] | None = None,
) -> tuple[DeploymentConfig | None, list[dict]]:
    """The cheapest config that serves ``demand`` (None if none does) and every candidate's verdict (the
    fields of a :class:`Candidate`: plain dicts, validated only into evidence that is proposed)."""
    options = [
        _lower_bound(model_name, current, itype, tp, pp, demand, settings)
        for itype in (itypes or tuple(INSTANCE_TYPES.values()))
        for tp, pp in parallel_splits(itype.gpu_count)
    ]
    options.sort(key=lambda o: (o.lower_usd_month, o.itype.name, -o.tp))
    best: tuple[float, DeploymentConfig, int] | None = None
    verdicts: list[dict] = []
    quota = settings.gpu_quota_per_family
    for opt in options:
        base = {
            "instance_type": opt.itype.name,
            "tensor_parallel_size": opt.tp,
            "pipeline_parallel_size": opt.pp,
        }
        if opt.problem is not None:
            verdicts.append({**base, "verdict": "infeasible", "why": opt.problem})
            continue
        assert opt.cap is not None and opt.engine is not None
        if best is not None and opt.lower_usd_month >= best[0]:
            verdicts.append(
                {
                    **base,
                    "replicas": opt.lower,
                    "usd_month": round(opt.lower_usd_month, 2),
                    "verdict": "pruned",
                    "why": (
                        f"needs at least {opt.lower} replicas (load and KV cache) at "
                        f"${opt.lower_usd_month:,.0f}/month, no cheaper than the best found (${best[0]:,.0f})"
                    ),
                }
            )
            continue
        found = fewest_replicas(opt.cap, opt.itype, demand, opt.lower)
        if found is None:
            verdicts.append(
                {
                    **base,
                    "verdict": "infeasible",
                    "why": (
                        f"no count from {opt.lower} to {opt.lower + REPLICA_SEARCH_SPAN - 1} replicas holds "
                        f"p95 within {demand.slo_p95_ms:.0f} ms at {demand.max_utilization:.0%} utilization"
                    ),
                }
            )
            continue
        replicas, p95, util = found
        gpus = replicas * opt.itype.gpu_count
        if gpus > quota:
            verdicts.append(
                {
                    **base,
                    "replicas": replicas,
                    "verdict": "infeasible",
                    "why": f"needs {replicas} replicas ({gpus} GPUs), over the {quota}-GPU family quota",
                }
            )
            continue
        config = sized_config(current, opt.itype, opt.engine, replicas)
        cost = _usd_month(config, settings)
        figures = {
            "replicas": replicas,
            "usd_month": round(cost, 2),
            "predicted_p95_ms": round(p95, 1),
            "utilization": round(util, 4),
        }
        verdicts.append({**base, **figures, "verdict": "costlier", "why": ""})
        if best is None or cost < best[0]:
            best = (cost, config, len(verdicts) - 1)
    if best is None:
        return None, verdicts
    chosen_cost = best[0]
    for k, cand in enumerate(verdicts):
        if k == best[2]:
            cand |= {"verdict": "chosen", "why": "the cheapest config that holds the SLO"}
        elif cand["verdict"] == "costlier":
            extra = cand["usd_month"] - chosen_cost
            cand["why"] = f"holds the SLO with {cand['replicas']} replicas but costs ${extra:,.0f}/month more"
    return best[1], verdicts


def figures_of(
    model_name: str, config: DeploymentConfig, demand: Demand, settings: DecisionSettings
) -> ConfigFigures | None:
    """A config's price and predicted p95 and utilization at the planned peak (None: it does not fit)."""
    itype = instance_type(config.instance_type)
    cap = _capacity(model_name, itype.name, config.engine)
    if not cap.fits:
        return None
    p95, util = judge(cap, itype, demand, np.array([float(config.replicas)]))
    return ConfigFigures(
        instance_type=itype.name,
        tensor_parallel_size=config.engine.tensor_parallel_size,
        pipeline_parallel_size=config.engine.pipeline_parallel_size,
        replicas=config.replicas,
        usd_month=round(_usd_month(config, settings), 2),
        predicted_p95_ms=round(float(p95[0]), 1),
        utilization=round(float(util[0]), 4),
        headroom=round(1.0 - float(p95[0]) / demand.slo_p95_ms, 4),
    )


def right_sizing_risk(proposed: ConfigFigures, current: DeploymentConfig, max_util: float) -> float:
    """0..1: W_LATENCY x p95/SLO + W_UTILIZATION x utilization/cap + W_HARDWARE x (1 for new hardware,
    SCALE_ONLY_HARDWARE_TERM when only the replica count changes), all at the planned peak."""
    same_hardware = proposed.instance_type == current.instance_type and (
        proposed.tensor_parallel_size,
        proposed.pipeline_parallel_size,
    ) == (current.engine.tensor_parallel_size, current.engine.pipeline_parallel_size)
    hardware = SCALE_ONLY_HARDWARE_TERM if same_hardware else 1.0
    score = (
        W_LATENCY * min(1.0, 1.0 - proposed.headroom)
        + W_UTILIZATION * min(1.0, proposed.utilization / max_util)
        + W_HARDWARE * hardware
    )
    return min(1.0, max(0.0, score))


def analyze_right_sizing(
    customer: Customer,
    deployment: Deployment,
    load_p95: float,
    kv_usage_p95: float,
    settings: DecisionSettings,
) -> RightSizingEvidence | str:
    """Evidence for the cheapest config that serves the deployment, or why nothing is proposed.

    ``load_p95`` is the baseline p95 of requests/s per instance and ``kv_usage_p95`` of the KV-cache share
    in use; both scale by the current replicas to the deployment's load and KV tokens in use, and by
    1 + the growth margin to what the new config must carry.
    """
    current = deployment.config
    margin = settings.right_sizing_growth_margin
    current_cap = _capacity(deployment.model, current.instance_type, current.engine)
    if not current_cap.fits:
        return f"the current config does not fit per the serving model: {current_cap.reason}"
    observed = load_p95 * current.replicas
    kv_tokens = kv_usage_p95 * current_cap.kv_cache_tokens * current.replicas * (1.0 + margin)
    demand = Demand(
        peak_requests_per_s=observed * (1.0 + margin),
        kv_tokens=kv_tokens,
        slo_p95_ms=customer.slo_p95_latency_ms,
        max_utilization=settings.right_sizing_max_utilization,
    )
    chosen, candidates = search(deployment.model, current, demand, settings)
    if chosen is None:
        return (
            f"no catalog config holds p95 {demand.slo_p95_ms:.0f} ms at {demand.peak_requests_per_s:.2f} req/s "
            f"within {demand.max_utilization:.0%} utilization"
        )
    now = figures_of(deployment.model, current, demand, settings)
    proposed = figures_of(deployment.model, chosen, demand, settings)
    assert now is not None and proposed is not None
    savings = now.usd_month - proposed.usd_month
    if chosen == current or savings <= SAME_PRICE_SHARE * now.usd_month:
        return (
            f"already right-sized: {current.replicas} x {current.instance_type} at ${now.usd_month:,.0f}/month "
            f"is the cheapest config holding p95 within {demand.slo_p95_ms:.0f} ms at "
            f"{demand.peak_requests_per_s:.2f} req/s"
        )
    if savings < customer.min_monthly_savings_usd:
        return (
            f"right-sizing to {chosen.replicas} x {chosen.instance_type} saves ${savings:,.0f}/month, below the "
            f"customer's minimum of ${customer.min_monthly_savings_usd:,.0f}/month"
        )
    score = right_sizing_risk(proposed, current, demand.max_utilization)
    level = risk_level(score, settings)
    lost = sum(c["verdict"] != "chosen" for c in candidates)
    reasons = [
        f"observed p95 load {observed:.2f} req/s ({load_p95:.3f} per instance x {current.replicas}); planned "
        f"for {demand.peak_requests_per_s:.2f} req/s (+{margin:.0%} growth) within {demand.max_utilization:.0%} "
        "utilization per replica",
        f"KV cache: {kv_tokens:,.0f} tokens in use at the p95 of cache use, with the margin",
        f"now {now.replicas} x {now.instance_type} (TP {now.tensor_parallel_size} x PP "
        f"{now.pipeline_parallel_size}) at ${now.usd_month:,.0f}/month: p95 {now.predicted_p95_ms:,.0f} ms, "
        f"{now.utilization:.0%} utilized at the planned peak",
        f"proposed {proposed.replicas} x {proposed.instance_type} (TP {proposed.tensor_parallel_size} x PP "
        f"{proposed.pipeline_parallel_size}) at ${proposed.usd_month:,.0f}/month: p95 "
        f"{proposed.predicted_p95_ms:,.0f} ms ({proposed.headroom:.0%} headroom to the "
        f"{demand.slo_p95_ms:,.0f} ms SLO), {proposed.utilization:.0%} utilized",
        f"{len(candidates)} candidates considered; {lost} lost (costlier, pruned by their lower bound or "
        "infeasible: see candidates)",
        f"risk {score:.2f} ({level.value}) = {W_LATENCY} x p95/SLO + {W_UTILIZATION} x utilization/cap + "
        f"{W_HARDWARE} x hardware change",
    ]
    return RightSizingEvidence(
        customer_id=customer.id,
        deployment_id=deployment.id,
        model=deployment.model,
        slo_p95_ms=customer.slo_p95_latency_ms,
        observed_p95_requests_per_s=round(observed, 4),
        planned_peak_requests_per_s=round(demand.peak_requests_per_s, 4),
        kv_tokens_needed=round(kv_tokens, 1),
        growth_margin=margin,
        max_utilization=demand.max_utilization,
        current=now,
        proposed=proposed,
        monthly_savings_usd=round(savings, 2),
        savings_pct=round(100.0 * savings / now.usd_month, 2),
        candidates=[Candidate.model_validate(c) for c in candidates],
        risk_score=round(score, 4),
        risk=level,
        reasons=reasons,
    )


class RightSizing(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = (
        "The cheapest instance type, parallel split and replica count that holds the SLO at the observed "
        "p95 load plus a growth margin, with KV cache for the observed concurrency."
    )
    evidence_model = RightSizingEvidence
    # Right-sizing consolidates load on purpose: p95 above its old baseline is planned; the SLO is the line.
    stage_checks = (application.quality_gate, performance.latency_within_slo)
    valued_by = ("realized_monthly_savings_usd", "latency_p95_delta_pct", "quality_delta_pct")

    change_under_way = "a change is under way"

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        load = snapshot.baseline(deployment.id, "requests_per_s")
        kv = snapshot.baseline(deployment.id, "kv_cache_usage")
        if load is None or load.n == 0 or load.p95 <= 0:
            return "no load baseline (requests_per_s) yet"
        kv_p95 = kv.p95 if kv is not None and kv.n else 0.0
        result = analyze_right_sizing(customer, deployment, load.p95, kv_p95, settings)
        return result if isinstance(result, str) else self._proposal(deployment, result)

    def _proposal(self, deployment: Deployment, evidence: RightSizingEvidence) -> Proposal:
        current, proposed = deployment.config, evidence.proposed
        itype = instance_type(proposed.instance_type)
        chosen = next(c for c in evidence.candidates if c.verdict == "chosen")
        engine = candidate_engine(current, itype, chosen.tensor_parallel_size, chosen.pipeline_parallel_size)
        assert isinstance(engine, EngineConfig)
        desired = sized_config(current, itype, engine, proposed.replicas)
        summary = (
            f"Right-size {evidence.deployment_id} ({evidence.model}) from {current.replicas} x "
            f"{current.instance_type} to {desired.replicas} x {desired.instance_type} to save "
            f"${evidence.monthly_savings_usd:,.0f}/month ({evidence.savings_pct:.0f}%); p95 "
            f"{proposed.predicted_p95_ms:,.0f} ms at the planned peak, {evidence.risk.value} risk."
        )
        now = evidence.current
        return Proposal(
            kind=KIND,
            customer_id=evidence.customer_id,
            deployment_id=evidence.deployment_id,
            current=current,
            desired=desired,
            evidence=evidence,
            estimate=Estimate(
                monthly_savings_usd=evidence.monthly_savings_usd,
                p95_latency_change_pct=round(
                    100.0
                    * (proposed.predicted_p95_ms - now.predicted_p95_ms)
                    / max(now.predicted_p95_ms, 1e-9),
                    2,
                ),
                utilization_change_pct=round(100.0 * (proposed.utilization - now.utilization), 2),
            ),
            risk_score=evidence.risk_score,
            summary=summary,
        )
