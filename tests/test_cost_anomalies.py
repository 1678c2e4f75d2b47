"""Cost anomalies: hourly spend through the shared detector, explained by what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from factories import deployment

from optiinfra_assets import sandbox
from optiinfra_assets.agents.cost.budget_forecast import BudgetForecasts
from optiinfra_assets.agents.cost.cost_anomalies import CostAnomalies, cost_hours, seasonal_expectation
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import Customer, Instance, Lifecycle, Risk
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import ensure_sandbox_fleet, load_snapshot
from resources.metric_store import open_metric_store
from resources.state_store import StateStore

START = datetime(2026, 6, 1, tzinfo=UTC)
CUSTOMER = Customer(id="cust-a", name="A", slo_p95_latency_ms=20_000.0, min_monthly_savings_usd=0.0)
PRICE = {"on_demand": 10.0, "spot": 4.0}


def cost_frame(instances: list[dict[str, float]], hours: int = 240) -> pl.DataFrame:
    """Hourly cost rows (MetricStore.hourly_cost's columns) of dep-1: per hour, instances per lifecycle
    and the price of one instance-hour; ``instances[h]`` overrides hour h (else the first entry)."""
    rows = []
    for h in range(hours):
        spec = instances[h] if h < len(instances) else instances[0]
        for lifecycle in ("on_demand", "spot"):
            n = spec.get(lifecycle, 0.0)
            if n:
                price = spec.get(f"{lifecycle}_price", PRICE[lifecycle])
                rows.append(
                    {
                        "customer_id": "cust-a",
                        "deployment_id": "dep-1",
                        "lifecycle": lifecycle,
                        "hour": START + timedelta(hours=h),
                        "cost_usd": n * price,
                        "samples": int(n * 60),
                    }
                )
    return pl.DataFrame(rows).with_columns(pl.col("hour").dt.cast_time_unit("ms"))


def snap(frame: pl.DataFrame, hours: int, instances: list[Instance] | None = None) -> FleetSnapshot:
    return FleetSnapshot(
        customers=[CUSTOMER],
        deployments=[deployment()],
        instances=instances or [],
        taken_at=START + timedelta(hours=hours, minutes=20),  # the current hour is incomplete
        hourly={"cost": frame},
    )


def test_steady_spend_is_no_finding() -> None:
    frame = cost_frame([{"on_demand": 4}])
    assert CostAnomalies().detect(snap(frame, 240), DecisionSettings()) == []


def test_a_scale_up_is_found_explained_and_dated() -> None:
    hours = 240
    spec = [{"on_demand": 4}] * (hours - 5) + [{"on_demand": 7}] * 5
    launched = [
        Instance(
            id=f"i-new{k}",
            deployment_id="dep-1",
            instance_type="p4de.24xlarge",
            lifecycle=Lifecycle.ON_DEMAND,
            launched_at=START + timedelta(hours=hours - 5, minutes=1),
        )
        for k in range(3)
    ]
    (finding,) = CostAnomalies().detect(snap(cost_frame(spec, hours), hours, launched), DecisionSettings())
    assert finding.deployment_id == "dep-1" and finding.metric == "cost_usd_per_hour"
    assert finding.value == 70.0 and finding.expected == 40.0
    assert finding.severity is Risk.HIGH  # +75% is over the 50% line
    assert finding.since == (START + timedelta(hours=hours - 5)).isoformat()
    assert finding.explanation.startswith("scale-up: 4.0 -> 7.0 instances")
    assert "i-new0" in finding.explanation and "price change" not in finding.explanation
    assert "100% of customer cust-a's rise" in finding.summary


def test_a_price_change_and_a_lifecycle_change_are_named() -> None:
    hours = 240
    pricier = [{"on_demand": 4}] * (hours - 3) + [{"on_demand": 4, "on_demand_price": 13.0}] * 3
    (price,) = CostAnomalies().detect(snap(cost_frame(pricier, hours), hours), DecisionSettings())
    assert price.explanation.startswith("price change: on_demand $10.000 -> $13.000")
    assert price.severity is Risk.MEDIUM  # +30%
    back_on_demand = [{"spot": 4}] * (hours - 3) + [{"on_demand": 4}] * 3
    (lifecycle,) = CostAnomalies().detect(snap(cost_frame(back_on_demand, hours), hours), DecisionSettings())
    assert "lifecycle change: spot share 100% -> 0%" in lifecycle.explanation


def test_a_spike_that_ended_or_a_drop_is_no_finding() -> None:
    hours = 240
    ended = [{"on_demand": 4}] * (hours - 6) + [{"on_demand": 8}] * 2 + [{"on_demand": 4}] * 4
    assert CostAnomalies().detect(snap(cost_frame(ended, hours), hours), DecisionSettings()) == []
    drop = [{"on_demand": 4}] * (hours - 3) + [{"on_demand": 2}] * 3
    assert CostAnomalies().detect(snap(cost_frame(drop, hours), hours), DecisionSettings()) == []


def test_the_incomplete_current_hour_is_left_out() -> None:
    frame = cost_frame([{"on_demand": 4}], hours=241)
    partial = frame.with_columns(
        pl.when(pl.col("hour") == pl.col("hour").max()).then(pl.col("cost_usd") / 3).otherwise("cost_usd")
    )
    series = cost_hours(partial, START + timedelta(hours=240, minutes=20))
    # The first stored hour (maybe collected from part-way through) is left out too.
    assert series is not None and len(series.cost_usd) == 239 and np.all(series.cost_usd == 40.0)


def test_expectation_is_the_same_hour_of_the_week_then_of_the_day() -> None:
    week = np.tile(np.r_[np.full(12, 1.0), np.full(12, 3.0)], 14)
    week[168 + 5] = 9.0
    assert seasonal_expectation(week, 168 * 2 + 5, 168 * 2) == 5.0  # median of the two weeks before: 9, 1
    assert seasonal_expectation(week[:48], 47, 47) == 3.0  # no week behind: the same hour of the day
    assert np.isnan(seasonal_expectation(np.array([np.nan, 1.0]), 1, 0))


def test_on_the_real_engines_a_sandbox_scale_up_is_found(state: StateStore, tmp_path: Path) -> None:
    """A week of sandbox cost rows in chdb, with a deployment scaled up three hours ago."""
    now = datetime.now(UTC).replace(minute=20, second=0, microsecond=0)
    customers, deployments, instances = sandbox.initial_fleet(7, now)
    target = deployments[0]
    extra = [
        Instance(
            id=f"i-scaleup{k}",
            deployment_id=target.id,
            instance_type=target.instance_type,
            lifecycle=Lifecycle.ON_DEMAND,
            launched_at=now.replace(minute=0) - timedelta(hours=3),
        )
        for k in range(target.replicas)
    ]
    for customer in customers:
        state.upsert_customer(customer)
    for dep in deployments:
        state.upsert_deployment(dep)
    state.add_instances(instances + extra)
    frames = sandbox.generate(
        customers, deployments, instances + extra, [], now - timedelta(days=7), now, seed=7, step_s=3600
    )
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    with metrics.session():
        ingest(metrics, Domain.COST, frames[Domain.COST], state.instance_index())
    snapshot = load_snapshot(state, metrics, now)
    findings = [
        f for f in CostAnomalies().detect(snapshot, DecisionSettings()) if f.deployment_id == target.id
    ]
    assert len(findings) == 1
    assert findings[0].value == pytest.approx(2 * findings[0].expected, abs=0.02)
    assert findings[0].explanation.startswith("scale-up")
    assert "i-scaleup0" in findings[0].explanation


def test_the_sandbox_shows_a_cost_spike_and_a_customer_over_budget(state: StateStore, tmp_path: Path) -> None:
    """The situations `make run` shows: the fleet as seeded, with the default week of backfilled cost."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    assert ensure_sandbox_fleet(state, 42, now)
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(),
        [],
        now - timedelta(days=7),
        now,
        seed=42,
        step_s=3600,
    )
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    with metrics.session():
        ingest(metrics, Domain.COST, frames[Domain.COST], state.instance_index())
    snapshot = load_snapshot(state, metrics, now + timedelta(minutes=1))
    spikes = {f.deployment_id: f for f in CostAnomalies().detect(snapshot, DecisionSettings())}
    assert list(spikes) == ["initech-spike-llama8b"]
    assert spikes["initech-spike-llama8b"].explanation.startswith("scale-up: 2.0 -> 4.0 instances")
    alerts = BudgetForecasts().detect(snapshot, DecisionSettings())
    assert [(f.customer_id, f.deployment_id) for f in alerts] == [("hooli", "hooli-support-qwen7b")]


def test_a_customer_whose_total_rises_is_found_when_no_deployment_alone_is() -> None:
    """Two deployments whose spend swings against each other (the total is flat) both rise by 20%: inside
    each one's usual swings, a clear break of the customer's total."""
    hours = 240
    swing = np.random.default_rng(5).uniform(-5.0, 5.0, hours)
    swing[-3:] = 0.0
    rise = np.where(np.arange(hours) >= hours - 3, 2.0, 0.0)
    rows = [
        {
            "customer_id": "cust-a",
            "deployment_id": did,
            "lifecycle": "on_demand",
            "hour": START + timedelta(hours=h),
            "cost_usd": 10.0 + sign * swing[h] + rise[h],
            "samples": 60,
        }
        for did, sign in (("dep-1", 1.0), ("dep-2", -1.0))
        for h in range(hours)
    ]
    frame = pl.DataFrame(rows).with_columns(pl.col("hour").dt.cast_time_unit("ms"))
    snapshot = FleetSnapshot(
        customers=[CUSTOMER],
        deployments=[deployment(), deployment().model_copy(update={"id": "dep-2"})],
        instances=[],
        taken_at=START + timedelta(hours=hours, minutes=20),
        hourly={"cost": frame},
    )
    (finding,) = CostAnomalies().detect(snapshot, DecisionSettings())
    assert finding.metric == "customer_cost_usd_per_hour" and finding.customer_id == "cust-a"
    assert finding.summary.startswith("spend of customer cust-a is anomalous")
    assert finding.value == 24.0 and finding.expected == 20.0
    assert finding.deployment_id in {"dep-1", "dep-2"} and "rose most" in finding.explanation
