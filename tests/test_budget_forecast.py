"""Budget forecasts: month-end spend per customer with intervals, the budget in the policy, the alert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import sqlalchemy as sa
from factories import deployment

from optiinfra_assets import sandbox
from optiinfra_assets.agents.cost.budget_forecast import (
    BudgetForecasts,
    budget_forecasts,
    forecast_month_end,
    month_bounds,
)
from optiinfra_assets.assets.budget import WITHIN_BUDGET_CHECK, budget_forecasts_asset
from optiinfra_assets.cli import main
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import Customer, Risk
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import Services, load_snapshot
from resources.dagster_resources import MetricStoreResource, StateStoreResource
from resources.metric_store import open_metric_store
from resources.state_store import StateStore, schema_migrations

NOW = datetime(2026, 6, 11, 0, 30, tzinfo=UTC)  # ten whole days of June spent, 20 left


def customer(budget: float | None) -> Customer:
    return Customer(
        id="cust-a",
        name="A",
        slo_p95_latency_ms=20_000.0,
        min_monthly_savings_usd=0.0,
        monthly_budget_usd=budget,
    )


def hourly(days: int, per_hour: float, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hourly spend ending at NOW's hour: a daily cycle (+-20%) around ``per_hour``."""
    n = days * 24
    end = np.datetime64(NOW.replace(minute=0, tzinfo=None), "ms")
    hours = end - np.arange(n, 0, -1).astype("timedelta64[h]")
    h = np.arange(n)
    rng = np.random.default_rng(seed)
    spend = per_hour * (1.0 + 0.2 * np.sin(2 * np.pi * (h % 24) / 24)) + noise * rng.standard_normal(n)
    return hours, spend


def test_month_bounds() -> None:
    assert month_bounds(datetime(2026, 2, 14, 5, tzinfo=UTC)) == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert month_bounds(datetime(2026, 12, 31, 23, tzinfo=UTC))[1] == datetime(2027, 1, 1, tzinfo=UTC)


def test_a_steady_spend_forecasts_its_rate_and_the_intervals_nest() -> None:
    hours, spend = hourly(30, 100.0, noise=5.0)
    f = forecast_month_end(hours, spend, NOW, customer(None))
    assert f.month == "2026-06" and f.remaining_hours == 20 * 24 and f.estimated_hours == 0
    assert f.method.endswith("last week repeated for 312 h")  # a week forecast, repeated to the month's end
    assert f.spent_usd == pytest.approx(spend[-240:].sum(), rel=1e-6)
    assert f.month_end_usd == pytest.approx(100.0 * 24 * 30, rel=0.02)
    assert f.lower_95_usd <= f.lower_80_usd < f.month_end_usd < f.upper_80_usd <= f.upper_95_usd
    assert not f.crosses_budget(80)


def test_the_budget_alert_follows_the_upper_bound() -> None:
    hours, spend = hourly(30, 100.0, noise=5.0)
    central = forecast_month_end(hours, spend, NOW, customer(None))
    # Between the point forecast and the 80% upper bound: a medium finding; under the point: high.
    near = (central.month_end_usd + central.upper_80_usd) / 2
    assert forecast_month_end(hours, spend, NOW, customer(near)).crosses_budget(80)
    assert not forecast_month_end(hours, spend, NOW, customer(central.upper_95_usd + 1)).crosses_budget(95)

    def snap(budget: float) -> FleetSnapshot:
        dep = deployment()
        frame = pl.DataFrame(
            {
                "customer_id": "cust-a",
                "deployment_id": dep.id,
                "lifecycle": "on_demand",
                "hour": hours.astype("datetime64[ms]"),
                "cost_usd": spend,
                "samples": np.full(len(spend), 240),
            }
        ).with_columns(pl.col("hour").dt.replace_time_zone("UTC"))
        return FleetSnapshot(
            customers=[customer(budget)],
            deployments=[dep],
            instances=[],
            taken_at=NOW,
            hourly={"cost": frame},
        )

    (medium,) = BudgetForecasts().detect(snap(near), DecisionSettings())
    assert medium.severity is Risk.MEDIUM and medium.deployment_id == "dep-1"
    assert medium.expected == near and medium.value == pytest.approx(central.month_end_usd)
    assert "80% upper bound" in medium.explanation and "100% of the month" in medium.explanation
    (high,) = BudgetForecasts().detect(snap(central.month_end_usd * 0.9), DecisionSettings())
    assert high.severity is Risk.HIGH and "the forecast itself" in high.explanation
    assert BudgetForecasts().detect(snap(central.upper_80_usd * 1.5), DecisionSettings()) == []
    only_95 = DecisionSettings(budget_interval_pct=95)
    between = (central.upper_80_usd + central.upper_95_usd) / 2
    if central.upper_95_usd > central.upper_80_usd:
        assert BudgetForecasts().detect(snap(between), DecisionSettings()) == []
        assert len(BudgetForecasts().detect(snap(between), only_95)) == 1


def test_a_short_history_is_estimated_and_extended_and_says_so() -> None:
    hours, spend = hourly(3, 50.0)  # three days only: June 8-10
    spend[10] = np.nan  # an hour the collector missed
    f = forecast_month_end(hours, spend, NOW, customer(None))
    assert f.estimated_hours == 7 * 24 + 1  # June 1-7 before the first stored hour, plus the gap
    assert "last day repeated" in f.method  # 36 hours of horizon from 72 of history; 480 needed
    assert f.month_end_usd == pytest.approx(50.0 * 24 * 30, rel=0.02)
    with pytest.raises(ValueError, match="too few"):
        forecast_month_end(hours[:10], spend[:10], NOW, customer(None))
    with pytest.raises(ValueError, match="no stored spend"):
        forecast_month_end(hours[:3], np.full(3, np.nan), NOW, customer(None))


def test_on_the_real_engines_a_customer_near_budget_is_alerted(state: StateStore, tmp_path: Path) -> None:
    """Sandbox cost rows in chdb and the budget read back from the state store (SQLite and PostgreSQL)."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    customers, deployments, instances = sandbox.initial_fleet(3, now)
    for c in customers:
        state.upsert_customer(c)
    for d in deployments:
        state.upsert_deployment(d)
    state.add_instances(instances)
    frames = sandbox.generate(
        customers, deployments, instances, [], now - timedelta(days=4), now, seed=3, step_s=3600
    )
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    with metrics.session():
        ingest(metrics, Domain.COST, frames[Domain.COST], state.instance_index())
    forecasts, _ = budget_forecasts(load_snapshot(state, metrics, now))
    acme = next(f for f in forecasts if f.customer_id == "acme")
    # The sandbox's spend is its instances' prices: the month-end is their hourly price times the month.
    start, end = month_bounds(now)
    per_hour = frames[Domain.COST].filter(pl.col("customer_id") == "acme")["cost_usd"].sum() / (4 * 24)
    assert acme.month_end_usd == pytest.approx(per_hour * (end - start) / timedelta(hours=1), rel=0.02)
    state.upsert_customer(
        state.get_customer("acme").model_copy(update={"monthly_budget_usd": acme.month_end_usd * 0.98})
    )
    findings = BudgetForecasts().detect(load_snapshot(state, metrics, now), DecisionSettings())
    # hooli is the sandbox's own near-budget customer; acme crosses now that its budget is under its spend.
    assert [(f.customer_id, f.severity) for f in findings] == [("acme", Risk.HIGH), ("hooli", Risk.HIGH)]


def test_the_budget_is_set_and_cleared_through_the_policy_command(
    state: StateStore, state_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", state_url)
    state.upsert_customer(customer(None))
    assert main(["policy", "set", "cust-a", "--budget-usd", "25000", "--by", "cfo"]) == 0
    assert state.get_customer("cust-a").monthly_budget_usd == 25_000.0
    assert state.get_customer("cust-a").auto_approve_max_risk is None  # untouched
    assert main(["policy", "show"]) == 0
    assert "25000.0" in capsys.readouterr().out
    assert main(["policy", "set", "cust-a", "--budget-usd", "off", "--by", "cfo"]) == 0
    assert state.get_customer("cust-a").monthly_budget_usd is None
    assert main(["policy", "set", "cust-a", "--by", "cfo"]) == 2
    assert "--budget-usd" in capsys.readouterr().err
    for bad in ("-5", "lots", "0"):
        with pytest.raises(SystemExit) as exc:
            main(["policy", "set", "cust-a", "--budget-usd", bad, "--by", "cfo"])
        assert exc.value.code == 2
        assert f"got '{bad}'" in capsys.readouterr().err


def test_migration_4_adds_the_budget_to_an_older_database(state: StateStore) -> None:
    """A database migrated before the budget existed: migration 4 adds the column, budgets then persist."""
    with state.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE customers DROP COLUMN monthly_budget_usd")
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version == 4))
    assert "monthly_budget_usd" not in {c["name"] for c in sa.inspect(state.engine).get_columns("customers")}
    state.migrate()
    state.migrate()  # idempotent
    state.upsert_customer(customer(1234.5))
    assert state.get_customer("cust-a").monthly_budget_usd == 1234.5


def test_the_asset_plots_each_customers_month_and_warns_over_budget(
    svc: Services, state_url: str, tmp_path: Path
) -> None:
    """A day of sandbox history in chdb (workflow_fixtures): the sandbox's hooli is near its budget."""
    result = dg.materialize(
        [budget_forecasts_asset],
        resources={
            "state_store": StateStoreResource(home=str(tmp_path), database_url=state_url),
            "metric_store": MetricStoreResource(home=str(tmp_path)),
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    for customer in svc.state.list_customers():
        low, mid, high = (
            metadata[f"{customer.id}/{n}"] for n in ("lower_80_usd", "month_end_usd", "upper_80_usd")
        )
        assert isinstance(mid, float) and 0 < low <= mid <= high <= metadata[f"{customer.id}/upper_95_usd"]
    assert metadata["hooli/budget_usd"] == svc.state.get_customer("hooli").monthly_budget_usd
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == WITHIN_BUDGET_CHECK and not check.passed
    assert check.description is not None and check.description.startswith("hooli: 80% upper bound")
