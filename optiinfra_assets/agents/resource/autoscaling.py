"""Predictive autoscaling: forecast a deployment's request rate, size replicas for the latency SLO through the
serving model's queueing, and scale before the peak rather than after it.

The decision (:func:`decide_replicas`) is pure and shared by the capability and ``bench/autoscaling_replay.py``:

1. **Forecast.** The shared forecaster (agents/forecast.py) predicts the rate over the lead time a new
   replica needs to serve (``autoscaling_lead_time_s``); the plan is the larger of the last observed rate and
   the forecast's upper-95% peak over that window, raised by the forecast's error when the observed rate is
   above its point forecast for the step in progress (a ramp the forecast has not caught up with: on the
   load_dev traces this cut the violation minutes by 60% for 3% more GPU-hours, docs/benchmarks.md). A ramp
   already under way in the observations is carried on over the lead time (the observed rise per second over
   the latest metric interval, times ``autoscaling_lead_time_s``): the forecast works on the series' own step
   (10 minutes, an hour) and cannot see a ramp that started inside its current step, while a replica ordered
   now serves only after the lead time; on the load_dev traces this halved the violation minutes for 1% more
   GPU-hours (docs/benchmarks.md). Too little history: it falls back to reactive scaling (the HPA rule below)
   and says so.
2. **Replicas from the SLO.** :func:`replica_rate_limit` finds, by bisection on the serving model's p95
   (serving.load_point: decode, prefill and M/M/1-like waits), the most requests/s one replica takes with p95
   at ``(1 - autoscaling_slo_margin) x SLO``; the replicas needed are the plan over that.
3. **Hysteresis and cooldown.** Scale-up is immediate; scale-down waits ``autoscaling_cooldown_s`` after the
   last change and happens only when ``(1 - autoscaling_scale_down_hysteresis)`` x the replicas suffice.
4. **Bounds.** The deployment's ``min_replicas``/``max_replicas`` (the customer's policy) clamp the target;
   a clamp is recorded, never exceeded. Changing the bounds is not this capability's to do: it says so and
   a person decides.

A change within the bounds is approved by the capability's written policy (:meth:`Autoscaling.policy_approval`)
and applied at once (one stage), so scaling reacts within minutes of the fast path's tick
(assets/autoscaling.py, every 2 minutes). Autoscaling is the customer's choice (``Customer.autoscaling``, a
written policy like auto-approval): without it the capability only says what it would do, and replica counts
stay with a person and the other capabilities (whose changes a running autoscaler would otherwise outrank on
the replica counts they share, e.g. spot migration's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from optiinfra_assets.agents import performance
from optiinfra_assets.agents.capability import (
    Estimate,
    Evidence,
    Objective,
    PerDeploymentCapability,
    Proposal,
)
from optiinfra_assets.agents.forecast import forecast, step_seconds
from optiinfra_assets.agents.resource import AGENT
from optiinfra_assets.catalog import InstanceType, instance_type, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig, Instance
from optiinfra_assets.serving import ServingCapacity, load_point, serving_capacity
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "autoscaling"
LOAD = "requests_per_s_avg"  # hourly mean per replica (performance rollup)
_BISECTION_STEPS = 40


# ---- sizing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSizing:
    """What one replica of a deployment holds under the SLO, from the serving model."""

    capacity: ServingCapacity
    itype: InstanceType
    slo_p95_ms: float
    target_p95_ms: float  # the SLO less the margin: what sizing aims for
    max_rps_per_replica: float  # the most one replica takes with p95 at the target (0: never)

    def p95_ms(self, rate_rps: float, replicas: int) -> float:
        """p95 latency with ``rate_rps`` spread over ``replicas`` (routing balances them)."""
        if replicas < 1:
            return math.inf
        return load_point(self.capacity, self.itype, rate_rps / replicas).latency_p95_ms

    def replicas_for(self, rate_rps: float) -> int:
        """Replicas that hold the target p95 at ``rate_rps`` (at least one)."""
        if self.max_rps_per_replica <= 0:
            return 10_000  # nothing holds the SLO: ask for everything, the bounds clamp it
        return max(1, math.ceil(rate_rps / self.max_rps_per_replica - 1e-9))

    def utilization(self, rate_rps: float, replicas: int) -> float:
        return rate_rps / (max(replicas, 1) * self.capacity.max_requests_per_s)


def replica_rate_limit(cap: ServingCapacity, itype: InstanceType, target_p95_ms: float) -> float:
    """The most requests/s one replica takes with the serving model's p95 at or under ``target_p95_ms``
    (p95 rises monotonically with load, so bisection finds it); 0 when even an idle replica misses it."""
    if load_point(cap, itype, 1e-6).latency_p95_ms > target_p95_ms:
        return 0.0
    lo, hi = 0.0, cap.max_requests_per_s
    while load_point(cap, itype, hi).latency_p95_ms <= target_p95_ms:
        lo, hi = hi, hi * 2.0
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2.0
        if load_point(cap, itype, mid).latency_p95_ms <= target_p95_ms:
            lo = mid
        else:
            hi = mid
    return lo


def replica_sizing(
    model_name: str, config: DeploymentConfig, slo_p95_ms: float, settings: DecisionSettings
) -> ReplicaSizing:
    itype = instance_type(config.instance_type)
    cap = serving_capacity(model(model_name), itype, config.engine)
    if not cap.fits:
        raise ValueError(f"instance_type={config.instance_type}: {model_name} does not fit: {cap.reason}")
    target = slo_p95_ms * (1.0 - settings.autoscaling_slo_margin)
    return ReplicaSizing(cap, itype, slo_p95_ms, target, replica_rate_limit(cap, itype, target))


# ---- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingDecision:
    """One scaling decision and everything it rests on (recorded as the evidence)."""

    method: Literal["predictive", "reactive_fallback", "reactive"]
    forecast_method: str | None
    fallback_reason: str | None
    observed_rps: float
    forecast_peak_rps: float | None  # the forecast's highest point over the lead window
    trend_rps: float | None  # the observed ramp carried on over the lead time (predictive only)
    planned_rps: float  # the rate sized for
    replicas_needed: int  # before hysteresis, cooldown and bounds
    current_replicas: int
    target_replicas: int
    min_replicas: int
    max_replicas: int
    clamped: str | None  # "max_replicas" / "min_replicas" when the bounds cut the target
    held: str | None  # why a change was not made (hysteresis, cooldown)
    predicted_p95_ms: float  # at the planned rate with the target replicas
    slo_p95_ms: float
    slo_margin: float  # 1 - predicted p95 / SLO

    @property
    def changes(self) -> bool:
        return self.target_replicas != self.current_replicas


def reactive_replicas(rate_rps: float, sizing: ReplicaSizing, settings: DecisionSettings) -> int:
    """HPA's rule: replicas = ceil(current x utilization / target) = ceil(load / (capacity x target))."""
    per_replica = sizing.capacity.max_requests_per_s * settings.autoscaling_target_utilization
    return max(1, math.ceil(rate_rps / per_replica - 1e-9))


def apply_hysteresis(
    needed: int,
    current: int,
    since_last_change_s: float | None,
    settings: DecisionSettings,
) -> tuple[int, str | None]:
    """Scale up at once; scale down only after the cooldown and past the hysteresis band."""
    if needed >= current:
        return needed, None
    if since_last_change_s is not None and since_last_change_s < settings.autoscaling_cooldown_s:
        return current, (
            f"cooldown: last change {since_last_change_s:.0f} s ago, scale-down waits "
            f"{settings.autoscaling_cooldown_s} s"
        )
    if needed > current * (1.0 - settings.autoscaling_scale_down_hysteresis):
        return current, (
            f"hysteresis: {needed} replicas would do, but scale-down waits until "
            f"{1 - settings.autoscaling_scale_down_hysteresis:.0%} of {current} suffice"
        )
    return needed, None


@dataclass(frozen=True)
class RateForecast:
    """The forecast a predictive decision rests on: its peak over the lead window, or why there is none."""

    peak_rps: float | None
    method: str | None
    fallback_reason: str | None
    # The point forecast of the step in progress: an observed rate above it says the forecast's level is
    # behind (a ramp it has not seen yet), and decide_replicas raises the peak by the same amount.
    now_rps: float | None = None


def forecast_rate(rates_rps: np.ndarray, timestamps: np.ndarray, settings: DecisionSettings) -> RateForecast:
    """The shared forecaster's view of the coming lead time: the highest upper-95% point over the window
    from the current step until a replica ordered now would serve (``autoscaling_lead_time_s``).

    The upper band rather than the point: it is as wide as this series has actually been wrong at that
    horizon, so a noisy series gets more headroom and a calm one less (on the load_dev traces the 80% band
    left ramps of +30% in 20 minutes uncovered: docs/benchmarks.md). Too little history (the forecaster's
    ValueError) returns the reason instead, and the decision falls back to reactive scaling."""
    rates = np.asarray(rates_rps, dtype=np.float64)
    try:
        if rates.size < 2:
            raise ValueError(f"{rates.size} point(s) of history")
        step = step_seconds(timestamps)
        horizon = math.ceil(settings.autoscaling_lead_time_s / step) + 1
        fc = forecast(rates, timestamps, horizon)
    except ValueError as exc:
        return RateForecast(None, None, f"forecast failed ({exc}): reactive scaling instead")
    return RateForecast(
        float(np.max(np.maximum(fc.upper_95, 0.0))), fc.method, None, float(max(fc.point[0], 0.0))
    )


def observed_slope(rates_rps: np.ndarray, timestamps: np.ndarray) -> float:
    """The observed rate's change per second over the latest metric interval (0 with fewer than two points
    or a missing one: no ramp is claimed from a gap)."""
    if len(rates_rps) < 2 or rates_rps[-1] <= 0 or rates_rps[-2] <= 0:
        return 0.0
    last_two = np.asarray(timestamps[-2:])
    if np.issubdtype(last_two.dtype, np.datetime64):
        last_two = last_two.astype("datetime64[ms]").astype(np.int64) / 1000.0
    interval = float(last_two[1] - last_two[0])
    if interval <= 0:
        raise ValueError(
            f"timestamps: must be strictly increasing, got {timestamps[-2]} then {timestamps[-1]}"
        )
    return float(rates_rps[-1] - rates_rps[-2]) / interval


def decide_replicas(
    observed_rps: float,
    rate_forecast: RateForecast | None,
    current_replicas: int,
    min_replicas: int,
    max_replicas: int,
    sizing: ReplicaSizing,
    settings: DecisionSettings,
    since_last_change_s: float | None = None,
    observed_slope_rps_per_s: float = 0.0,
) -> ScalingDecision:
    """The replicas a deployment should run now, from its latest observed rate and the forecast.

    ``rate_forecast`` None is the reactive (HPA-like) policy; a forecast that failed falls back to it and
    says why. ``observed_slope_rps_per_s`` (:func:`observed_slope`): a rise under way is carried on over the
    lead time by the predictive policy; the reactive rule and its fallback ignore it (HPA has no trend).
    """
    if min_replicas > max_replicas:
        raise ValueError(f"min_replicas: {min_replicas} is above max_replicas {max_replicas}")
    if not math.isfinite(observed_rps) or observed_rps < 0:
        raise ValueError(f"observed_rps: expected a finite, non-negative request rate, got {observed_rps}")
    if not math.isfinite(observed_slope_rps_per_s):
        raise ValueError(
            f"observed_slope_rps_per_s: expected a finite number, got {observed_slope_rps_per_s}"
        )
    method: Literal["predictive", "reactive_fallback", "reactive"] = "reactive"
    fallback = forecast_method = peak = trend = None
    if rate_forecast is not None:
        if rate_forecast.peak_rps is None:
            method, fallback = "reactive_fallback", rate_forecast.fallback_reason
        else:
            method, forecast_method, peak = "predictive", rate_forecast.method, rate_forecast.peak_rps
    if peak is not None:
        planned = max(observed_rps, peak)
        now = rate_forecast.now_rps if rate_forecast is not None else None
        if now is not None and now > 0 and observed_rps > now:
            # Forecast-error correction: the forecast runs behind the observed level by this much, and so
            # does its peak over the lead window (one rule for every series).
            planned = max(planned, peak + observed_rps - now)
        if observed_slope_rps_per_s > 0:
            # A ramp under way goes on while a replica ordered now boots: what it reaches by then is needed.
            trend = observed_rps + observed_slope_rps_per_s * settings.autoscaling_lead_time_s
            planned = max(planned, trend)
        needed = sizing.replicas_for(planned)
    else:
        planned = observed_rps
        needed = reactive_replicas(observed_rps, sizing, settings)
    target, held = apply_hysteresis(needed, current_replicas, since_last_change_s, settings)
    clamped = None
    if target > max_replicas:
        target, clamped = max_replicas, "max_replicas"
    elif target < min_replicas:
        target, clamped = min_replicas, "min_replicas"
    p95 = sizing.p95_ms(planned, target)
    return ScalingDecision(
        method=method,
        forecast_method=forecast_method,
        fallback_reason=fallback,
        observed_rps=observed_rps,
        forecast_peak_rps=peak,
        trend_rps=trend,
        planned_rps=planned,
        replicas_needed=needed,
        current_replicas=current_replicas,
        target_replicas=target,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        clamped=clamped,
        held=held,
        predicted_p95_ms=p95,
        slo_p95_ms=sizing.slo_p95_ms,
        slo_margin=1.0 - p95 / sizing.slo_p95_ms,
    )


# ---- the capability ------------------------------------------------------------------------------


class AutoscalingEvidence(Evidence):
    kind: Literal["autoscaling"] = KIND
    deployment_id: str
    method: str  # predictive | reactive_fallback
    forecast_method: str | None
    fallback_reason: str | None
    observed_rps: float
    forecast_peak_rps: float | None
    trend_rps: float | None = None  # the observed ramp carried on over the lead time, when rising
    planned_rps: float
    max_rps_per_replica: float
    replicas_needed: int
    current_replicas: int
    target_replicas: int
    min_replicas: int
    max_replicas: int
    clamped: str | None
    predicted_p95_ms: float
    slo_p95_ms: float
    slo_margin: float
    ondemand_usd_hour: float
    monthly_cost_change_usd: float
    risk_score: float = Field(ge=0, le=1)


def deployment_rates(snapshot: FleetSnapshot, deployment: Deployment) -> tuple[np.ndarray, np.ndarray]:
    """(hour timestamps, deployment requests/s) from the hourly performance rollup.

    The rollup holds the mean per replica; times the replicas running now, it is the deployment's rate as
    long as the replica count held over the history (an approximation after a scaling, which moves the
    per-replica mean with it)."""
    rows = snapshot.hourly_of("performance", deployment.id)
    if rows.is_empty() or LOAD not in rows.columns:
        return np.array([], dtype="datetime64[ms]"), np.array([], dtype=np.float64)
    replicas = len(snapshot.running_by_deployment.get(deployment.id, [])) or deployment.replicas
    values = rows[LOAD].fill_null(0.0).to_numpy().astype(np.float64) * replicas
    return rows["hour"].to_numpy().astype("datetime64[ms]"), values


def _since_last_change(snapshot: FleetSnapshot, running: list[Instance]) -> float | None:
    """Seconds since the newest running replica launched: the last scale-up or replacement we know of."""
    if not running or snapshot.taken_at is None:
        return None
    newest = max(i.launched_at for i in running)
    return (snapshot.taken_at - newest).total_seconds()


def scaled_config(config: DeploymentConfig, replicas: int) -> DeploymentConfig:
    """The config with ``replicas`` in all: on-demand replicas move, spot replicas stay unless fewer remain."""
    spot = min(config.spot_replicas, replicas)
    return config.model_copy(update={"on_demand_replicas": replicas - spot, "spot_replicas": spot})


def decision_text(d: ScalingDecision, deployment_id: str) -> str:
    how = (
        f"forecast ({d.forecast_method}) upper 95% peaks at {d.forecast_peak_rps:.2f} req/s over the lead time"
        if d.method == "predictive"
        else (d.fallback_reason or "reactive")
    )
    trend = "" if d.trend_rps is None else f", rising to {d.trend_rps:.2f} req/s over the lead time"
    text = (
        f"{deployment_id}: {how}; observed {d.observed_rps:.2f} req/s{trend}; sized for {d.planned_rps:.2f} req/s "
        f"-> {d.replicas_needed} replicas needed, {d.current_replicas} -> {d.target_replicas}; predicted p95 "
        f"{d.predicted_p95_ms:.0f} ms vs SLO {d.slo_p95_ms:.0f} ms (margin {d.slo_margin:.0%})"
    )
    if d.clamped:
        bound = d.max_replicas if d.clamped == "max_replicas" else d.min_replicas
        text += f"; clamped to {d.clamped}={bound} (the policy's bound; raising it needs a person's approval)"
    if d.held:
        text += f"; held: {d.held}"
    return text


class Autoscaling(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = (
        "Forecast each deployment's load and scale replicas ahead of it to hold the latency SLO, within "
        "the customer's min/max replicas (in-bounds changes approved by written policy)."
    )
    evidence_model = AutoscalingEvidence
    # The SLO is judged in the decision itself (and by the latency_within_slo stage check after applying); memory fit and quota by
    # the resource agent. Replica counts do not move quality, so the application agent is not asked.
    validators = ("resource",)
    stages = (100,)  # scaling is applied at once: capacity is the point
    stage_checks = (performance.latency_within_slo,)
    valued_by = ("latency_p95_delta_pct", "realized_monthly_savings_usd", "utilization_delta_pct")

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        if not customer.autoscaling:
            return (
                f"customer {customer.id} has no written autoscaling policy (Customer.autoscaling): "
                "replica counts are left to a person and the other capabilities"
            )
        ts, rates = deployment_rates(snapshot, deployment)
        if rates.size == 0:
            return "no request-rate history yet"
        config = deployment.config
        sizing = replica_sizing(deployment.model, config, customer.slo_p95_latency_ms, settings)
        running = snapshot.running_by_deployment.get(deployment.id, [])
        current = len(running) or config.replicas
        decision = decide_replicas(
            float(rates[-1]),
            forecast_rate(rates, ts, settings),
            current,
            config.min_replicas,
            config.max_replicas,
            sizing,
            settings,
            _since_last_change(snapshot, running),
            observed_slope(rates, ts),
        )
        text = decision_text(decision, deployment.id)
        if not decision.changes:
            return "no scaling needed: " + text
        desired = scaled_config(config, decision.target_replicas)
        itype = sizing.itype
        delta = decision.target_replicas - current
        monthly = delta * itype.ondemand_usd_hour * settings.hours_per_month
        # Risk: a scale-up only adds capacity (low); a scale-down is as risky as it is close to the SLO.
        risk = 0.1 if delta > 0 else min(1.0, 0.1 + 0.5 * max(0.0, 1.0 - decision.slo_margin / 0.5))
        p95_now = sizing.p95_ms(decision.planned_rps, current)
        evidence = AutoscalingEvidence(
            deployment_id=deployment.id,
            method=decision.method,
            forecast_method=decision.forecast_method,
            fallback_reason=decision.fallback_reason,
            observed_rps=round(decision.observed_rps, 4),
            forecast_peak_rps=None
            if decision.forecast_peak_rps is None
            else round(decision.forecast_peak_rps, 4),
            trend_rps=None if decision.trend_rps is None else round(decision.trend_rps, 4),
            planned_rps=round(decision.planned_rps, 4),
            max_rps_per_replica=round(sizing.max_rps_per_replica, 4),
            replicas_needed=decision.replicas_needed,
            current_replicas=current,
            target_replicas=decision.target_replicas,
            min_replicas=decision.min_replicas,
            max_replicas=decision.max_replicas,
            clamped=decision.clamped,
            predicted_p95_ms=round(min(decision.predicted_p95_ms, 1e9), 1),
            slo_p95_ms=decision.slo_p95_ms,
            slo_margin=round(max(decision.slo_margin, -1e6), 4),
            ondemand_usd_hour=itype.ondemand_usd_hour,
            monthly_cost_change_usd=round(monthly, 2),
            risk_score=round(risk, 4),
            reasons=[text],
        )
        latency_change = (
            100.0 * (decision.predicted_p95_ms / p95_now - 1.0) if math.isfinite(p95_now) else -100.0
        )
        verb = "Scale up" if delta > 0 else "Scale down"
        return Proposal(
            kind=KIND,
            customer_id=customer.id,
            deployment_id=deployment.id,
            current=config,
            desired=desired,
            evidence=evidence,
            estimate=Estimate(
                monthly_savings_usd=round(-monthly, 2),
                p95_latency_change_pct=round(max(min(latency_change, 1e6), -100.0), 2),
            ),
            risk_score=round(risk, 4),
            summary=(
                f"{verb} {deployment.id} from {current} to {decision.target_replicas} replicas "
                f"({decision.method}): sized for {decision.planned_rps:.2f} req/s, predicted p95 "
                f"{decision.predicted_p95_ms:.0f} ms against the {decision.slo_p95_ms:.0f} ms SLO"
                + (f", clamped to {decision.clamped}" if decision.clamped else "")
            ),
        )

    def policy_approval(self, current: DeploymentConfig, desired: DeploymentConfig) -> str | None:
        """The written policy: a change of replica counts within the deployment's approved min/max replicas
        is applied without a person; anything else (the bounds themselves) goes through the approval gate."""
        changed = set(current.changes(desired))
        if not changed <= {"on_demand_replicas", "spot_replicas"}:
            return None
        if not desired.min_replicas <= desired.replicas <= desired.max_replicas:
            return None
        return (
            f"autoscaling policy: replicas {current.replicas} -> {desired.replicas} within the approved bounds "
            f"[{desired.min_replicas}, {desired.max_replicas}]"
        )

    def features(self, proposal: Proposal) -> dict[str, float]:
        ev = proposal.evidence
        assert isinstance(ev, AutoscalingEvidence)
        ratio = ev.target_replicas / max(ev.current_replicas, 1)
        return {
            "scale_ratio": min(1.0, ratio / 4.0),
            "slo_margin": min(1.0, max(0.0, ev.slo_margin)),
            "predictive": 1.0 if ev.method == "predictive" else 0.0,
            "clamped": 1.0 if ev.clamped else 0.0,
            "replicas_log": min(1.0, math.log10(1.0 + ev.target_replicas) / 3.0),
            "risk_score": ev.risk_score,
        }
