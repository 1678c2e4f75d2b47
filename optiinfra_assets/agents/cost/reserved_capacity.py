"""Reserved capacity: the commitment (reserved instances per type, term and payment option, and compute
savings plans in $/h) that minimizes the expected cost of a deployment's on-demand usage, as a mixed-integer
program solved by HiGHS (scipy.optimize.milp). Advice only: buying a commitment is a person's act, so the
recommendation changes no config and the executor only records the decision.

The model, per hour of usage history (identical hours merged, with their count as a weight):

    minimize   sum_o  n_o x rate_o x F_o  +  sum_p  c_p x F_p  +  mean_t  sum_k  od_k x z_kt
    subject to sum_{o of k} n_o + sum_p y_kpt + z_kt >= u_kt        (every instance-hour is paid for)
               sum_k od_k x f_kp x y_kpt <= c_p                     (a plan covers spend up to its $/h)
               n_o integer >= 0, c_p, y, z >= 0

with u the on-demand instance-hours of type k in hour t, n_o reserved instances of option o (its effective
$/h rate, upfront amortized), c_p the $/h commitment of savings plan p at its rate f_kp of type k's on-demand
price, z the hours left on-demand. F = max(term, horizon) / horizon charges a commitment longer than the
horizon the usage is assumed to last for its whole term, so a 3-year term must save enough within the horizon
to pay for it. Rates are the catalog's (catalog.py: published per type, or estimates labelled as such); the
evidence names the source of each option's rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, Field
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

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
    SAVINGS_PLAN_OPTIONS,
    CommitmentOption,
    ReservedOffer,
    instance_type,
    reserved_offers,
    savings_plan_rate,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, Lifecycle
from optiinfra_assets.snapshot import USAGE, FleetSnapshot

KIND = "reserved_capacity"
# Usage figures are rounded to this many instance-hours before identical hours are merged: it bounds the
# program's size by the usage range rather than the history's length (an error of at most half of it in an
# hour's on-demand spend, unbiased).
USAGE_RESOLUTION = 0.05
MS_PER_HOUR = 3_600_000
# Daily usage quantiles the commitment is also judged at (its risk from usage variance).
LOW_Q, HIGH_Q = 0.10, 0.90


# ---- the optimization (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Commitment:
    """Reserved instances per (type, option name) and savings-plan $/h per plan name."""

    reserved: dict[tuple[str, str], int]
    savings_plans: dict[str, float]

    @property
    def empty(self) -> bool:
        return not any(self.reserved.values()) and not any(v > 1e-9 for v in self.savings_plans.values())


def horizon_factor(option: CommitmentOption, horizon_hours: float) -> float:
    """What a commitment costs per hour of the horizon, relative to its rate: its whole term is paid."""
    return max(option.term_hours, horizon_hours) / horizon_hours


def _merge_hours(usage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows of the (T, K) usage matrix, how many hours each stands for)."""
    rounded = np.round(usage / USAGE_RESOLUTION) * USAGE_RESOLUTION
    rows, counts = np.unique(rounded, axis=0, return_counts=True)
    return rows, counts.astype(np.float64)


def optimize_commitment(
    usage: np.ndarray,
    types: Sequence[str],
    horizon_hours: float,
    offers: Sequence[ReservedOffer] | None = None,
    plans: Sequence[CommitmentOption] = SAVINGS_PLAN_OPTIONS,
) -> tuple[Commitment, float]:
    """The commitment minimizing the expected cost per hour of ``usage`` ((T hours, K types) on-demand
    instance-hours), and that cost. ``offers`` defaults to every reserved offer of the types."""
    usage = np.atleast_2d(np.asarray(usage, dtype=np.float64))
    if usage.shape[1] != len(types) or (usage < 0).any():
        raise ValueError(
            f"usage: expected (hours, {len(types)}) non-negative instance-hours, got {usage.shape}"
        )
    if offers is None:
        offers = [o for t in types for o in reserved_offers(instance_type(t))]
    rows, weights = _merge_hours(usage)
    # Deployments with the same usage pattern on the same type (a steady fleet has many) share one solve.
    return _solve(
        tuple(types),
        rows.tobytes(),
        rows.shape,
        weights.tobytes(),
        horizon_hours,
        tuple(offers),
        tuple(plans),
    )


@lru_cache(maxsize=4096)
def _solve(
    types: tuple[str, ...],
    rows_bytes: bytes,
    shape: tuple[int, ...],
    weights_bytes: bytes,
    horizon_hours: float,
    offers: tuple[ReservedOffer, ...],
    plans: tuple[CommitmentOption, ...],
) -> tuple[Commitment, float]:
    """The program of :func:`optimize_commitment` on merged hours (arrays passed as bytes, to be hashable)."""
    rows = np.frombuffer(rows_bytes).reshape(shape)
    weights = np.frombuffer(weights_bytes)
    od = np.array([instance_type(t).ondemand_usd_hour for t in types])
    plan_fraction = [
        [savings_plan_rate(p, instance_type(t)).fraction_of_on_demand for p in plans] for t in types
    ]
    n_rows, n_types, n_plans, n_offers = rows.shape[0], len(types), len(plans), len(offers)
    weights = weights / weights.sum()
    # variable layout: [n_o (offers) | c_p (plans) | y_kpt (types x plans x rows) | z_kt (types x rows)]
    y0 = n_offers + n_plans
    z0 = y0 + n_types * n_plans * n_rows

    def y(k: int, p: int, t: int) -> int:
        return y0 + (k * n_plans + p) * n_rows + t

    def z(k: int, t: int) -> int:
        return z0 + k * n_rows + t

    n_vars = z0 + n_types * n_rows
    cost = np.zeros(n_vars)
    for i, offer in enumerate(offers):
        cost[i] = offer.effective_usd_hour * horizon_factor(offer.option, horizon_hours)
    for p, plan in enumerate(plans):
        cost[n_offers + p] = horizon_factor(plan, horizon_hours)
    for k in range(n_types):
        cost[z(k, 0) : z(k, 0) + n_rows] = od[k] * weights
    type_index = {t: k for k, t in enumerate(types)}
    rows_i, cols_i, vals = [], [], []
    lower: list[float] = []
    upper: list[float] = []
    r = 0
    for k in range(n_types):  # coverage of every (type, hour)
        mine = [i for i, o in enumerate(offers) if type_index.get(o.instance_type) == k]
        for t in range(n_rows):
            cols = mine + [y(k, p, t) for p in range(n_plans)] + [z(k, t)]
            rows_i += [r] * len(cols)
            cols_i += cols
            vals += [1.0] * len(cols)
            lower.append(rows[t, k])
            upper.append(np.inf)
            r += 1
    for p in range(n_plans):  # a plan covers on-demand spend at its rate for the type up to its $/h
        for t in range(n_rows):
            cols = [y(k, p, t) for k in range(n_types)] + [n_offers + p]
            rows_i += [r] * len(cols)
            cols_i += cols
            vals += [float(od[k] * plan_fraction[k][p]) for k in range(n_types)] + [-1.0]
            lower.append(-np.inf)
            upper.append(0.0)
            r += 1
    matrix = coo_array((vals, (rows_i, cols_i)), shape=(r, n_vars)).tocsr()
    integrality = np.zeros(n_vars)
    integrality[:n_offers] = 1
    result = milp(
        cost,
        constraints=LinearConstraint(matrix, np.array(lower), np.array(upper)),
        integrality=integrality,
        bounds=Bounds(np.zeros(n_vars), np.full(n_vars, np.inf)),
    )
    if not result.success or result.x is None:
        raise RuntimeError(f"the commitment MILP failed: {result.message}")
    x = result.x
    reserved = {
        (o.instance_type, o.option.name): round(float(x[i])) for i, o in enumerate(offers) if round(x[i]) > 0
    }
    plans_usd = {plan.name: round(float(x[n_offers + p]), 4) for p, plan in enumerate(plans)}
    return Commitment(reserved, {k: v for k, v in plans_usd.items() if v > 1e-6}), float(result.fun)


def _offers_of(types: Sequence[str]) -> dict[tuple[str, str], ReservedOffer]:
    return _offers_by_key(tuple(types))


@lru_cache(maxsize=1024)
def _offers_by_key(types: tuple[str, ...]) -> dict[tuple[str, str], ReservedOffer]:
    return {(o.instance_type, o.option.name): o for t in types for o in reserved_offers(instance_type(t))}


def commitment_usd_hour(commitment: Commitment, types: Sequence[str], horizon_hours: float | None) -> float:
    """The commitment's own cost per hour: its effective rates, times the horizon factor when given."""
    offers = _offers_of(types)
    plans = {p.name: p for p in SAVINGS_PLAN_OPTIONS}

    def factor(option: CommitmentOption) -> float:
        return 1.0 if horizon_hours is None else horizon_factor(option, horizon_hours)

    total = 0.0
    for key, count in commitment.reserved.items():
        total += count * offers[key].effective_usd_hour * factor(offers[key].option)
    for name, usd in commitment.savings_plans.items():
        total += usd * factor(plans[name])
    return total


def remaining_on_demand(commitment: Commitment, usage: np.ndarray, types: Sequence[str]) -> float:
    """Expected on-demand $/h left as billed: reserved instances cover their type first, then savings plans
    the remaining on-demand spend, the deepest discount (of any plan on any type) first, as AWS bills them."""
    usage = np.atleast_2d(np.asarray(usage, dtype=np.float64))
    od = np.array([instance_type(t).ondemand_usd_hour for t in types])
    reserved_per_type = np.zeros(len(types))
    for (itype, _), count in commitment.reserved.items():
        reserved_per_type[list(types).index(itype)] += count
    left = np.maximum(usage - reserved_per_type, 0.0) * od  # (hours, types) on-demand $ still to pay
    commit = {name: np.full(left.shape[0], usd) for name, usd in commitment.savings_plans.items()}
    rates = sorted(
        (savings_plan_rate(plan, instance_type(t)).fraction_of_on_demand, plan.name, k)
        for plan in SAVINGS_PLAN_OPTIONS
        if plan.name in commit
        for k, t in enumerate(types)
    )
    for fraction, name, k in rates:
        covered = np.minimum(left[:, k], commit[name] / fraction)
        left[:, k] -= covered
        commit[name] -= covered * fraction
    return float(left.sum(axis=1).mean())


def hourly_cost(
    commitment: Commitment, usage: np.ndarray, types: Sequence[str], horizon_hours: float
) -> float:
    """Expected cost per hour of ``usage`` under a commitment over the horizon (the MILP's objective)."""
    return commitment_usd_hour(commitment, types, horizon_hours) + remaining_on_demand(
        commitment, usage, types
    )


def on_demand_cost(usage: np.ndarray, types: Sequence[str]) -> float:
    od = np.array([instance_type(t).ondemand_usd_hour for t in types])
    return float((np.atleast_2d(usage) @ od).mean())


def break_even_month(
    commitment: Commitment, usage: np.ndarray, types: Sequence[str], hours_per_month: float
) -> int | None:
    """The first month whose end sees the commitment's cumulative savings reach zero (upfront paid at month
    0, on-demand spend avoided and recurring fees accruing monthly at the expected usage), or None if it
    does not pay back within its longest term."""
    offers = _offers_of(types)
    upfront = sum(offers[key].upfront_usd * n for key, n in commitment.reserved.items())
    recurring = sum(offers[key].recurring_usd_hour * n for key, n in commitment.reserved.items())
    recurring += sum(commitment.savings_plans.values())
    avoided = on_demand_cost(usage, types) - remaining_on_demand(commitment, usage, types)
    monthly_net = (avoided - recurring) * hours_per_month
    if monthly_net <= 0:
        return None
    plans = {p.name: p for p in SAVINGS_PLAN_OPTIONS}
    terms = [offers[key].option.term_years for key in commitment.reserved]
    terms += [plans[name].term_years for name in commitment.savings_plans]
    month = max(1, math.ceil(upfront / monthly_net - 1e-9))
    return month if month <= 12 * max(terms) else None


# ---- the capability -------------------------------------------------------------------------------


class OptionFigures(BaseModel):
    """One commitment option on its own: the best count or $/h of it alone, and what it would save."""

    option: str
    quantity: float  # instances (reserved) or $/h (savings plan)
    monthly_savings_usd: float
    upfront_usd: float
    # where the option's rate for the type comes from (catalog.py), or that it is estimated; evidence
    # recorded before rates were sourced has none
    rate_source: str = "not recorded"


class ReservedCapacityEvidence(Evidence):
    kind: Literal["reserved_capacity"] = KIND
    customer_id: str
    deployment_id: str
    instance_type: str
    history_days: float
    usage_mean_instances: float
    usage_p10_instances: float  # daily mean instance count, 10th percentile over the history
    usage_p50_instances: float
    usage_p90_instances: float
    horizon_months: float
    reserved_instances: dict[str, int]  # option name -> instances of the type
    savings_plans_usd_hour: dict[str, float]
    rate_sources: dict[str, str] = Field(default_factory=dict)  # each recommended option -> its rate's source
    on_demand_usd_month: float
    committed_usd_month: float  # expected, with the commitment (its term's cost spread over the horizon)
    monthly_savings_usd: float
    savings_pct: float
    upfront_usd: float
    break_even_month: int | None
    savings_at_p10_usd_month: float
    savings_at_p50_usd_month: float
    savings_at_p90_usd_month: float
    worth_it_at: Literal["p10", "p50", "p90", "never"]  # the lowest usage quantile at which it saves
    options: list[OptionFigures] = Field(default_factory=list)
    solver: str = "scipy.optimize.milp (HiGHS)"


def usage_history(
    frame: pl.DataFrame, instance_type_name: str, taken_at: datetime | None
) -> tuple[np.ndarray, np.ndarray]:
    """(hour starts, on-demand instance-hours of one type per hour) from the type's first hour of on-demand
    use to the frame's last, missing hours as zero; that first hour and the one in progress at ``taken_at``
    are left out."""
    if frame.is_empty():
        return np.array([], dtype="datetime64[h]"), np.array([])
    # Plain arrays, not polars expressions: this runs once per deployment on a few hundred rows.
    hours = frame["hour"].dt.cast_time_unit("ms").to_physical().to_numpy() // MS_PER_HOUR  # epoch hours
    mine = (frame["instance_type"].to_numpy() == instance_type_name) & (
        frame["lifecycle"].to_numpy() == str(Lifecycle.ON_DEMAND)
    )
    if not mine.any():
        return np.array([], dtype="datetime64[h]"), np.array([])
    # From the type's first hour of use (a deployment moved to it has no history of it before), less that
    # hour, which usually started mid-hour (a backfill, a launch): whole hours only.
    first, last = int(hours[mine].min()) + 1, int(hours.max())
    if taken_at is not None:
        now_hour = int(taken_at.astimezone(UTC).timestamp() * 1000) // MS_PER_HOUR
        last = min(last, now_hour - 1)
    values = np.zeros(max(0, last - first + 1))
    idx = hours[mine] - first
    keep = (idx >= 0) & (idx < values.size)
    np.add.at(values, idx[keep], frame["instance_hours"].to_numpy()[mine][keep])
    grid = (
        (np.arange(first, first + values.size) * MS_PER_HOUR).astype("datetime64[ms]").astype("datetime64[h]")
    )
    return grid, values


def daily_quantiles(values: np.ndarray) -> tuple[float, float, float]:
    """10th, 50th and 90th percentile of the daily mean instance count (whole days, newest last)."""
    days = values[len(values) % 24 :].reshape(-1, 24).mean(axis=1) if len(values) >= 24 else values
    low, mid, high = np.quantile(days, [LOW_Q, 0.5, HIGH_Q])
    return float(low), float(mid), float(high)


def analyze_reserved_capacity(
    customer: Customer,
    deployment: Deployment,
    usage: pl.DataFrame,
    taken_at: datetime | None,
    settings: DecisionSettings,
) -> ReservedCapacityEvidence | str:
    """The cost-minimizing commitment for the deployment's on-demand usage of its instance type, or why
    none is advised."""
    config = deployment.config
    itype = instance_type(config.instance_type)
    if config.on_demand_replicas == 0:
        return "no on-demand replicas: nothing a commitment could cover"
    _, values = usage_history(usage, itype.name, taken_at)
    days = len(values) / 24.0
    if days < settings.reserved_min_history_days:
        return (
            f"{days:.1f} days of on-demand {itype.name} usage history; "
            f"{settings.reserved_min_history_days:g} needed before advising a commitment"
        )
    recent = values[-24:].mean()
    if recent <= 0:
        return f"no on-demand {itype.name} usage in the last day: the commitment would cover nothing"
    notes: list[str] = []
    if abs(recent - config.on_demand_replicas) > 0.5:
        # The config moved since (another change applied, or re-evaluated on one): plan for its count.
        values = values * (config.on_demand_replicas / recent)
        notes.append(
            f"usage profile scaled from {recent:.1f} to the {config.on_demand_replicas} on-demand replicas "
            "the config runs"
        )
    horizon_h = settings.reserved_horizon_months * settings.hours_per_month
    types = [itype.name]
    matrix = values[:, None]
    commitment, _ = optimize_commitment(matrix, types, horizon_h)
    # Priced as billed on the exact usage (the program sees it rounded to USAGE_RESOLUTION).
    cost_h = hourly_cost(commitment, matrix, types, horizon_h)
    od_h = on_demand_cost(matrix, types)
    hpm = settings.hours_per_month
    savings_month = (od_h - cost_h) * hpm
    if commitment.empty or savings_month <= 0:
        return (
            f"no commitment lowers the expected cost of {values.mean():.2f} on-demand {itype.name} on average"
        )
    if savings_month < customer.min_monthly_savings_usd:
        return (
            f"the best commitment saves ${savings_month:,.0f}/month, below the customer's minimum of "
            f"${customer.min_monthly_savings_usd:,.0f}/month"
        )
    mean = float(values.mean())
    q10, q50, q90 = daily_quantiles(values)

    def savings_at(level: float) -> float:
        scaled = matrix * (level / mean)
        return (on_demand_cost(scaled, types) - hourly_cost(commitment, scaled, types, horizon_h)) * hpm

    at = {"p10": savings_at(q10), "p50": savings_at(q50), "p90": savings_at(q90)}
    worth = next((k for k in ("p10", "p50", "p90") if at[k] > 0), "never")
    offers = {o.option.name: o for o in reserved_offers(itype)}
    upfront = sum(offers[name].upfront_usd * n for (_, name), n in commitment.reserved.items())
    sources = {name: offers[name].rate_source for (_, name) in commitment.reserved} | {
        plan.name: savings_plan_rate(plan, itype).rate_source
        for plan in SAVINGS_PLAN_OPTIONS
        if plan.name in commitment.savings_plans
    }
    payback = break_even_month(commitment, matrix, types, hpm)
    options = _each_option(matrix, types, horizon_h, od_h, hpm)
    bought = [f"{n} x {itype.name} {name}" for (_, name), n in commitment.reserved.items()] + [
        f"{name} at ${usd:.3f}/h" for name, usd in commitment.savings_plans.items()
    ]
    worth_text = {
        "p10": "worth it even at the 10th percentile of daily usage",
        "p50": "worth it at the median daily usage, not at the 10th percentile",
        "p90": "only worth it at the 90th percentile of daily usage",
        "never": "not worth it at any of the 10th/50th/90th percentiles of daily usage",
    }[worth]
    reasons = [
        f"{days:.0f} days of {itype.name} on-demand usage: {mean:.2f} instances on average, daily p10/p50/p90 "
        f"{q10:.2f}/{q50:.2f}/{q90:.2f}",
        *notes,
        f"commit to {', '.join(bought)}: ${od_h * hpm:,.0f}/month on demand -> ${cost_h * hpm:,.0f}/month "
        f"expected (usage assumed to last {settings.reserved_horizon_months:g} months; longer terms paid in full)",
        f"saves ${savings_month:,.0f}/month; upfront ${upfront:,.0f}; break-even "
        + (f"in month {payback}" if payback else "not within the term"),
        f"risk from usage variance: {worth_text} (${at['p10']:,.0f} / ${at['p50']:,.0f} / ${at['p90']:,.0f} "
        "a month at p10/p50/p90)",
        "advice only: a purchase is a person's act; approving records the decision, nothing is changed",
        *(f"rates of {', '.join(names)}: {source}" for source, names in _by_source(sources).items()),
    ]
    if days < 30:
        reasons.insert(1, f"only {days:.0f} days of history: 30-90 days make a firmer case")
    return ReservedCapacityEvidence(
        customer_id=customer.id,
        deployment_id=deployment.id,
        instance_type=itype.name,
        history_days=round(days, 2),
        usage_mean_instances=round(mean, 3),
        usage_p10_instances=round(q10, 3),
        usage_p50_instances=round(q50, 3),
        usage_p90_instances=round(q90, 3),
        horizon_months=settings.reserved_horizon_months,
        reserved_instances={name: n for (_, name), n in commitment.reserved.items()},
        savings_plans_usd_hour=commitment.savings_plans,
        rate_sources=sources,
        on_demand_usd_month=round(od_h * hpm, 2),
        committed_usd_month=round(cost_h * hpm, 2),
        monthly_savings_usd=round(savings_month, 2),
        savings_pct=round(100.0 * savings_month / (od_h * hpm), 2),
        upfront_usd=round(upfront, 2),
        break_even_month=payback,
        savings_at_p10_usd_month=round(at["p10"], 2),
        savings_at_p50_usd_month=round(at["p50"], 2),
        savings_at_p90_usd_month=round(at["p90"], 2),
        worth_it_at=worth,
        options=options,
        reasons=reasons,
    )


def _by_source(sources: dict[str, str]) -> dict[str, list[str]]:
    """Option names grouped by their rates' source, in the order first met."""
    grouped: dict[str, list[str]] = {}
    for name, source in sources.items():
        grouped.setdefault(source, []).append(name)
    return grouped


def _each_option(
    matrix: np.ndarray, types: list[str], horizon_h: float, od_h: float, hpm: float
) -> list[OptionFigures]:
    """Every option alone at its best quantity, for the evidence. One option on one type is a
    one-dimensional convex problem: its optimum is at a whole instance (reserved) or at an hour's spend
    level (savings plan), so each is found by evaluating all of those points at once."""
    itype = instance_type(types[0])
    od = itype.ondemand_usd_hour
    levels, weights = _merge_hours(matrix)
    level, weights = levels[:, 0], weights / weights.sum()
    out = []
    counts = np.arange(int(np.ceil(level.max())) + 1, dtype=np.float64)
    left_after = (np.maximum(level[None, :] - counts[:, None], 0.0) * weights).sum(axis=1) * od
    for offer in reserved_offers(itype):
        costs = counts * offer.effective_usd_hour * horizon_factor(offer.option, horizon_h) + left_after
        n = int(np.argmin(costs))
        out.append(
            OptionFigures(
                option=offer.option.name,
                quantity=float(n),
                monthly_savings_usd=round((od_h - costs[n]) * hpm, 2),
                upfront_usd=round(offer.upfront_usd * n, 2),
                rate_source=offer.rate_source,
            )
        )
    spend = level * od
    for plan in SAVINGS_PLAN_OPTIONS:
        rate = savings_plan_rate(plan, itype)
        commits = np.concatenate([[0.0], np.unique(spend) * rate.fraction_of_on_demand])
        covered = commits / rate.fraction_of_on_demand
        left = (np.maximum(spend[None, :] - covered[:, None], 0.0) * weights).sum(axis=1)
        costs = commits * horizon_factor(plan, horizon_h) + left
        k = int(np.argmin(costs))
        out.append(
            OptionFigures(
                option=plan.name,
                quantity=round(float(commits[k]), 4),
                monthly_savings_usd=round((od_h - costs[k]) * hpm, 2),
                upfront_usd=0.0,
                rate_source=rate.rate_source,
            )
        )
    return out


def risk_of(evidence: ReservedCapacityEvidence) -> float:
    """0..1 from usage variance: 0.2 when it pays even at the 10th percentile, 0.45 at the median only,
    0.8 when only the 90th percentile makes it pay; +0.1 when under 30 days of history back it."""
    base = {"p10": 0.2, "p50": 0.45, "p90": 0.8, "never": 1.0}[evidence.worth_it_at]
    return min(1.0, base + (0.1 if evidence.history_days < 30 else 0.0))


class ReservedCapacity(PerDeploymentCapability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = (
        "Advice: the reserved instances and savings plans that minimize the expected cost of steady "
        "on-demand usage (a MILP on 30-90 days of usage), with break-even and usage-variance risk."
    )
    evidence_model = ReservedCapacityEvidence
    validators: ClassVar[tuple[str, ...]] = ()  # nothing in the fleet changes: nothing to validate
    advice_only: ClassVar[bool] = True
    valued_by = ("realized_monthly_savings_usd",)

    change_under_way = "a change is under way: wait for it to settle"

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | str:
        usage = snapshot.hourly_of(USAGE, deployment.id)
        result = analyze_reserved_capacity(customer, deployment, usage, snapshot.taken_at, settings)
        if isinstance(result, str):
            return result
        score = risk_of(result)
        risk = risk_level(score, settings)
        bought = ", ".join(
            [f"{n} x {result.instance_type} {name}" for name, n in result.reserved_instances.items()]
            + [f"{name} ${usd:.2f}/h" for name, usd in result.savings_plans_usd_hour.items()]
        )
        summary = (
            f"Commit to {bought} for {deployment.id}: saves ${result.monthly_savings_usd:,.0f}/month "
            f"({result.savings_pct:.0f}%), break-even "
            + (f"month {result.break_even_month}" if result.break_even_month else "beyond the term")
            + f"; {risk.value} risk ({result.worth_it_at} usage). Advice only."
        )
        return Proposal(
            kind=KIND,
            customer_id=customer.id,
            deployment_id=deployment.id,
            current=deployment.config,
            desired=deployment.config,
            evidence=result,
            estimate=Estimate(monthly_savings_usd=result.monthly_savings_usd),
            risk_score=round(score, 4),
            summary=summary,
        )


__all__ = [
    "Commitment",
    "ReservedCapacity",
    "ReservedCapacityEvidence",
    "analyze_reserved_capacity",
    "break_even_month",
    "hourly_cost",
    "optimize_commitment",
]
