"""Budget forecasts: each customer's month-end spend with 80% and 95% intervals, against its budget.

Month-end spend = what the month's complete hours cost (stored cost rows; hours before the first stored
row or missing in between are estimated and counted as such) + the shared forecaster's forecast of the
customer's hourly spend over the hours left (agents/forecast.py). The forecaster's horizon is bounded by
the history it has (at most ``max_horizon_fraction`` of it) and to a week; beyond that the last forecast
week (or day, with less than a week forecast) is repeated, which is what the forecaster itself would give:
it has no trend term, so its forecast is a level plus a daily or weekly profile. The interval of the month's sum adds the hourly bounds, which is exact
when the forecast errors of the hours move together (a level that is off is off for every hour) and
conservative otherwise: for a budget alert, too wide is the safe side.

A customer whose upper bound (``DecisionSettings.budget_interval_pct``, 80% by default) crosses its
monthly budget gets a finding: high severity when the point forecast crosses it too.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel

from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.cost.cost_anomalies import AGENT, cost_hours
from optiinfra_assets.agents.forecast import DEFAULT_SETTINGS, ForecastSettings, forecast
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import Customer, Risk
from optiinfra_assets.snapshot import FleetSnapshot

HOURS_PER_DAY = 24
HOURS_PER_WEEK = 168
# The forecaster is asked for at most a week (its backtest costs grow with the horizon); the month's further
# hours repeat that week, or the last forecast day when less than a week is forecast.
MAX_FORECAST_HOURS = HOURS_PER_WEEK


class BudgetForecast(BaseModel):
    """One customer's month: spent so far, the month-end forecast with its intervals, and the budget."""

    customer_id: str
    month: str  # "2026-12"
    as_of: datetime  # the end of the last complete hour counted as spent
    spent_usd: float  # the month's complete hours (observed plus estimated)
    estimated_hours: int  # hours of the month so far with no stored cost row, estimated
    remaining_hours: int
    month_end_usd: float
    lower_80_usd: float
    upper_80_usd: float
    lower_95_usd: float
    upper_95_usd: float
    method: str  # the forecaster's chosen method
    budget_usd: float | None = None
    top_deployment: str = ""  # the deployment that spent the most this month
    top_deployment_share: float = 0.0

    def upper(self, pct: int) -> float:
        return self.upper_80_usd if pct == 80 else self.upper_95_usd

    def crosses_budget(self, pct: int) -> bool:
        return self.budget_usd is not None and self.upper(pct) > self.budget_usd


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the calendar month (UTC) holding ``at``."""
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def _hours(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[ms]")


def customer_hourly_spend(snapshot: FleetSnapshot, customer_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(hours, spend per hour with NaN where nothing was stored, spend per deployment over those hours) of
    a customer's deployments, complete hours only, on one regular hourly grid."""
    frames = [
        snapshot.hourly_of(str(Domain.COST), d.id)
        for d in snapshot.deployments
        if d.customer_id == customer_id
    ]
    frames = [f for f in frames if not f.is_empty()]
    if not frames:
        return np.array([], dtype="datetime64[ms]"), np.array([]), {}
    rows = pl.concat(frames, how="vertical_relaxed")
    series = cost_hours(rows, snapshot.taken_at)
    if series is None:
        return np.array([], dtype="datetime64[ms]"), np.array([]), {}
    per_deployment = {
        key[0]: part
        for key, part in rows.with_columns(pl.col("hour").dt.replace_time_zone(None).cast(pl.Datetime("ms")))
        .partition_by("deployment_id", as_dict=True)
        .items()
    }
    return series.hours, series.cost_usd, per_deployment


def _fill_forward(values: np.ndarray) -> np.ndarray:
    """NaN hours take the last stored hour's spend (the first ones the first stored hour's)."""
    out = values.copy()
    ok = np.isfinite(out)
    idx = np.where(ok, np.arange(len(out)), 0)
    np.maximum.accumulate(idx, out=idx)
    out = out[idx]
    out[: int(np.argmax(ok))] = values[ok][0]
    return out


def forecast_sum(
    hours: np.ndarray, values: np.ndarray, steps: int, settings: ForecastSettings = DEFAULT_SETTINGS
) -> tuple[dict[str, float], str]:
    """The sum of an hourly series over its next ``steps`` hours from the shared forecaster: "point",
    "lower_80", "upper_80", "lower_95", "upper_95" (spend is never negative: each hour's bound is floored
    at 0), and the method. Raises ValueError when the history is too short."""
    horizon = min(steps, int(len(values) * settings.max_horizon_fraction), MAX_FORECAST_HOURS)
    if horizon < 1:
        raise ValueError(f"{len(values)} hours of history are too few to forecast from")
    fc = forecast(values, hours, horizon, settings)
    # The repeated stretch is one period long and ends at the horizon, so the repeat keeps its phase.
    tile = HOURS_PER_WEEK if horizon >= HOURS_PER_WEEK else min(HOURS_PER_DAY, horizon)

    def total(per_hour: np.ndarray) -> float:
        extended = np.concatenate([per_hour, np.resize(per_hour[-tile:], steps - horizon)])
        return float(np.maximum(extended, 0.0).sum())

    sums = {
        "point": total(fc.point),
        "lower_80": total(fc.lower_80),
        "upper_80": total(fc.upper_80),
        "lower_95": total(fc.lower_95),
        "upper_95": total(fc.upper_95),
    }
    repeated = "last week" if tile == HOURS_PER_WEEK else "last day"
    return sums, fc.method + (f", {repeated} repeated for {steps - horizon} h" if steps > horizon else "")


def forecast_month_end(
    hours: np.ndarray,
    spend: np.ndarray,
    now: datetime,
    customer: Customer,
    settings: ForecastSettings = DEFAULT_SETTINGS,
) -> BudgetForecast:
    """The month-end forecast of one customer's hourly spend series (complete hours, oldest first, NaN
    where unknown). Raises ValueError when the history is too short to forecast from."""
    finite = np.isfinite(spend)
    if not finite.any():
        raise ValueError(f"customer {customer.id!r}: no stored spend to forecast from")
    start, end = month_bounds(now)
    filled = _fill_forward(spend)
    last_hour = hours[-1].astype(datetime).replace(tzinfo=UTC)
    as_of = last_hour + timedelta(hours=1)
    in_month = hours >= np.datetime64(start.replace(tzinfo=None), "ms")
    # Hours of the month before the first stored hour: estimated at the first stored day's median spend.
    first_hour = hours[0].astype(datetime).replace(tzinfo=UTC)
    before = max(0, int((min(first_hour, as_of) - start) / timedelta(hours=1)))
    first_day = spend[:HOURS_PER_DAY][np.isfinite(spend[:HOURS_PER_DAY])]
    estimated_before = before * float(np.median(first_day))
    spent = float(filled[in_month].sum()) + estimated_before
    estimated = before + int((in_month & ~finite).sum())
    remaining = max(0, int((end - as_of) / timedelta(hours=1)))

    if remaining == 0:
        sums, method = (
            dict.fromkeys(("point", "lower_80", "upper_80", "lower_95", "upper_95"), 0.0),
            "none (the month is over)",
        )
    else:
        try:
            sums, method = forecast_sum(hours, filled, remaining, settings)
        except ValueError as exc:
            raise ValueError(f"customer {customer.id!r}: {exc}") from None

    def total(name: str) -> float:
        return round(spent + sums[name], 2)

    return BudgetForecast(
        customer_id=customer.id,
        month=start.strftime("%Y-%m"),
        as_of=as_of,
        spent_usd=round(spent, 2),
        estimated_hours=estimated,
        remaining_hours=remaining,
        month_end_usd=total("point"),
        lower_80_usd=total("lower_80"),
        upper_80_usd=total("upper_80"),
        lower_95_usd=total("lower_95"),
        upper_95_usd=total("upper_95"),
        method=method,
        budget_usd=customer.monthly_budget_usd,
    )


def budget_forecasts(
    snapshot: FleetSnapshot, only_budgeted: bool = False
) -> tuple[list[BudgetForecast], dict[str, str]]:
    """(a forecast per customer with stored spend, customer -> why there is none for the others); with
    ``only_budgeted``, of the customers with a monthly budget only."""
    now = snapshot.taken_at or datetime.now(UTC)
    start, _ = month_bounds(now)
    out: list[BudgetForecast] = []
    skipped: dict[str, str] = {}
    for customer in snapshot.customers:
        if only_budgeted and customer.monthly_budget_usd is None:
            continue
        hours, spend, per_deployment = customer_hourly_spend(snapshot, customer.id)
        if not len(hours):
            skipped[customer.id] = "no complete hour of stored spend"
            continue
        try:
            result = forecast_month_end(hours, spend, now, customer)
        except ValueError as exc:
            skipped[customer.id] = str(exc)
            continue
        month_start = np.datetime64(start.replace(tzinfo=None), "ms")
        spent_by = {
            did: float(part.filter(pl.col("hour") >= month_start)["cost_usd"].sum())
            for did, part in per_deployment.items()
        }
        total = sum(spent_by.values())
        if total > 0:
            top = max(spent_by, key=lambda did: spent_by[did])
            result = result.model_copy(
                update={"top_deployment": top, "top_deployment_share": round(spent_by[top] / total, 3)}
            )
        out.append(result)
    return out, skipped


class BudgetForecasts(Detector):
    name: ClassVar[str] = "budget_alerts"
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Month-end spend per customer from the shared forecaster (80% and 95% intervals) against the "
        "customer's monthly budget: a finding when the upper bound crosses it."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        pct = settings.budget_interval_pct
        findings = []
        for f in budget_forecasts(snapshot, only_budgeted=True)[0]:
            if not f.crosses_budget(pct) or f.budget_usd is None:
                continue
            over = f.month_end_usd > f.budget_usd
            findings.append(
                Finding(
                    detector=self.name,
                    customer_id=f.customer_id,
                    deployment_id=f.top_deployment,
                    severity=Risk.HIGH if over else Risk.MEDIUM,
                    metric="month_end_spend_usd",
                    value=f.month_end_usd,
                    expected=f.budget_usd,
                    since=f.as_of.isoformat(),
                    summary=(
                        f"customer {f.customer_id} may exceed its {f.month} budget of ${f.budget_usd:,.0f}: "
                        f"month-end spend ${f.month_end_usd:,.0f} (80% ${f.lower_80_usd:,.0f}-"
                        f"${f.upper_80_usd:,.0f}, 95% up to ${f.upper_95_usd:,.0f}); "
                        f"${f.spent_usd:,.0f} spent so far"
                    ),
                    explanation=(
                        f"{'the forecast itself' if over else f'the {pct}% upper bound'} is over the budget; "
                        f"{f.top_deployment} spent {f.top_deployment_share:.0%} of the month so far; "
                        f"{f.remaining_hours} h left, forecast by {f.method}"
                    ),
                )
            )
        return findings
