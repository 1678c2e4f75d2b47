"""Reserved capacity: the commitment MILP on cases whose optimum is known by hand, break-even and the
usage-variance label, and the advice capability on the real engines (approved through the gate, nothing
applied to the fleet)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from workflow_fixtures import NOW, Clock, run_rollout

from optiinfra_assets.agents.cost.reserved_capacity import (
    Commitment,
    ReservedCapacity,
    ReservedCapacityEvidence,
    analyze_reserved_capacity,
    break_even_month,
    hourly_cost,
    optimize_commitment,
    usage_history,
)
from optiinfra_assets.catalog import instance_type, reserved_offers
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, ExecutionStatus, RecommendationStatus
from optiinfra_assets.workflow import Services, decide, run_analysis_pass

G5 = "g5.xlarge"  # on-demand $1.006/h
G6 = "g6.xlarge"  # on-demand $0.8048/h
STEADY = "umbrella-steady-mistral7b"  # the sandbox's steady 24/7 deployment
YEAR_H = 12 * 730.0


def _offer(itype: str, name: str):
    return next(o for o in reserved_offers(instance_type(itype)) if o.option.name == name)


def test_steady_usage_buys_the_cheapest_effective_rate_for_every_instance() -> None:
    usage = np.full((720, 1), 3.0)
    # Over three years every option's whole term is used: 3-year all upfront has the lowest effective rate.
    commitment, cost = optimize_commitment(usage, [G5], 3 * YEAR_H)
    assert commitment.reserved == {(G5, "ri-3y-all-upfront"): 3} and not commitment.savings_plans
    assert cost == pytest.approx(3 * _offer(G5, "ri-3y-all-upfront").effective_usd_hour)


def test_half_used_instances_stay_on_demand() -> None:
    # 2 instances half of the hours and 4 the other half, usage lasting one year: a 3-year term costs three
    # times its rate per used year (over on-demand), and a reserved instance used half the time saves
    # 0.5 x $1.006 < its $0.59 rate. So by hand: 2 x 1-year all upfront, the rest on demand.
    usage = np.array([[2.0], [4.0]] * 360)
    commitment, cost = optimize_commitment(usage, [G5], YEAR_H)
    assert commitment.reserved == {(G5, "ri-1y-all-upfront"): 2} and not commitment.savings_plans
    expected = 2 * _offer(G5, "ri-1y-all-upfront").effective_usd_hour + 0.5 * 2 * 1.006
    assert cost == pytest.approx(expected)
    assert hourly_cost(commitment, usage, [G5], YEAR_H) == pytest.approx(expected)


def test_usage_moving_between_types_is_covered_by_a_savings_plan_in_dollars_per_hour() -> None:
    # One instance, on g5 in even hours and on g6 in odd ones: a reserved instance of either type idles half
    # the time (0.5 x on-demand < its rate), while a 1-year compute savings plan of $0.65491/h (AWS's rate
    # for an hour of g6.xlarge) covers all of the g6 hours and, at g5.xlarge's rate of $0.79223 for $1.006 of
    # on-demand, most of the g5 ones; committing more would only pay in g5 hours (0.5 / 0.7875 < 1).
    usage = np.array([[1.0, 0.0], [0.0, 1.0]] * 360)
    commitment, cost = optimize_commitment(usage, [G5, G6], YEAR_H)
    assert not commitment.reserved
    assert commitment.savings_plans == {"sp-1y-no-upfront": pytest.approx(0.65491, abs=1e-4)}
    g5_hours_covered = 0.65491 / 0.79223  # of a g5.xlarge hour
    assert cost == pytest.approx(0.65491 + 0.5 * 1.006 * (1 - g5_hours_covered))
    assert hourly_cost(commitment, usage, [G5, G6], YEAR_H) == pytest.approx(cost, rel=1e-4)


def test_bad_usage_names_the_field() -> None:
    with pytest.raises(ValueError, match="usage"):
        optimize_commitment(np.full((10, 1), -1.0), [G5], YEAR_H)
    with pytest.raises(ValueError, match="usage"):
        optimize_commitment(np.ones((10, 2)), [G5], YEAR_H)


def test_break_even_month_of_an_all_upfront_commitment() -> None:
    usage = np.full((720, 1), 3.0)
    commitment = Commitment({(G5, "ri-1y-all-upfront"): 3}, {})
    # upfront 3 x $5,182.00 (AWS: $0.591553/h x 8760) against 3 x $1.006 x 730 avoided a month: month 8.
    assert break_even_month(commitment, usage, [G5], 730.0) == 8
    no_upfront = Commitment({(G5, "ri-1y-no-upfront"): 3}, {})
    assert break_even_month(no_upfront, usage, [G5], 730.0) == 1
    idle = Commitment({(G5, "ri-1y-no-upfront"): 3}, {})
    assert break_even_month(idle, np.zeros((720, 1)), [G5], 730.0) is None


def _frame(daily_levels: list[float], itype: str = G5, start: datetime = datetime(2026, 1, 5, tzinfo=UTC)):
    hours = [start + timedelta(hours=h) for h in range(24 * len(daily_levels))]
    levels = [level for level in daily_levels for _ in range(24)]
    return pl.DataFrame(
        {
            "customer_id": "c",
            "deployment_id": "d",
            "instance_type": itype,
            "lifecycle": "on_demand",
            "hour": pl.Series(hours, dtype=pl.Datetime("ms", "UTC")),
            "instance_hours": levels,
            "usd": [level * 1.006 for level in levels],
        }
    )


def _deployment(replicas: int) -> Deployment:
    return Deployment(
        id="d",
        customer_id="c",
        model="Llama-3.1-8B",
        instance_type=G5,
        replicas=replicas,
        base_requests_per_s=1,
    )


CUSTOMER = Customer(id="c", name="c", slo_p95_latency_ms=30_000, min_monthly_savings_usd=0)
YEARLY = DecisionSettings(reserved_horizon_months=12, reserved_min_history_days=5)


def test_a_commitment_only_worth_it_at_the_90th_percentile_is_labelled_so() -> None:
    # Days at 0, 1 and 3 instances: one reserved instance is used 60% of hours, which pays at the mean usage,
    # but at the median day (1 instance, scaled) it idles too often and at the 90th percentile it pays.
    levels = [0, 0, 0, 0, 1, 1, 3, 3, 3, 3] * 3
    frame = _frame([float(x) for x in levels])
    ev = analyze_reserved_capacity(CUSTOMER, _deployment(3), frame, None, YEARLY)
    assert isinstance(ev, ReservedCapacityEvidence), ev
    assert ev.reserved_instances == {"ri-1y-all-upfront": 1}
    assert ev.savings_at_p50_usd_month < 0 < ev.savings_at_p90_usd_month
    assert ev.worth_it_at == "p90"
    assert any("only worth it at the 90th percentile" in r for r in ev.reasons)
    # every option is shown on its own, with its quantity and savings
    assert {o.option for o in ev.options} >= {"ri-3y-all-upfront", "sp-1y-no-upfront", "sp-3y-no-upfront"}


def test_steady_usage_is_worth_it_even_at_the_10th_percentile() -> None:
    ev = analyze_reserved_capacity(CUSTOMER, _deployment(2), _frame([2.0] * 10), None, YEARLY)
    assert isinstance(ev, ReservedCapacityEvidence), ev
    assert ev.worth_it_at == "p10" and ev.break_even_month is not None
    assert ev.monthly_savings_usd == pytest.approx(ev.on_demand_usd_month - ev.committed_usd_month, abs=0.02)
    assert any("30-90 days" in r for r in ev.reasons)  # 10 days: said to be short


def test_too_short_a_history_or_no_on_demand_usage_advises_nothing() -> None:
    short = analyze_reserved_capacity(CUSTOMER, _deployment(2), _frame([2.0] * 3), None, YEARLY)
    assert isinstance(short, str) and "usage history; 5 needed" in short
    other_type = analyze_reserved_capacity(CUSTOMER, _deployment(2), _frame([2.0] * 10, G6), None, YEARLY)
    assert isinstance(other_type, str) and "0.0 days of on-demand g5.xlarge usage" in other_type
    # Moved from g6 to g5 two days ago: only those two days are g5's history.
    moved = pl.concat(
        [_frame([2.0] * 10, G6), _frame([2.0] * 2, G5, start=datetime(2026, 1, 15, tzinfo=UTC))]
    )
    result = analyze_reserved_capacity(CUSTOMER, _deployment(2), moved, None, YEARLY)
    assert isinstance(result, str) and result.startswith("2.0 days of on-demand g5.xlarge")
    stopped = pl.concat([_frame([2.0] * 8), _frame([2.0] * 2, G6, start=datetime(2026, 1, 13, tzinfo=UTC))])
    result = analyze_reserved_capacity(CUSTOMER, _deployment(2), stopped, None, YEARLY)
    assert isinstance(result, str) and "no on-demand g5.xlarge usage in the last day" in result


def test_usage_history_fills_missing_hours_and_drops_the_hour_in_progress() -> None:
    frame = _frame([1.0, 0.0, 1.0]).filter(pl.col("instance_hours") > 0)
    taken = datetime(2026, 1, 7, 12, 30, tzinfo=UTC)
    _, values = usage_history(frame, G5, taken)
    assert len(values) == 24 * 2 + 12 - 1  # oldest hour dropped; hours 00:00-11:00 of the third day
    assert values[:23].tolist() == [1.0] * 23 and values[23:47].tolist() == [0.0] * 24


def test_reserved_capacity_is_advice_through_the_same_gate(svc: Services, clock: Clock) -> None:
    svc.decisions = DecisionSettings(reserved_min_history_days=0.5)
    cap = ReservedCapacity()
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    mine = report.capabilities[cap.kind]
    assert mine.error is None
    rec = next(r for r in mine.created if r.deployment_id == STEADY)
    assert rec.status is RecommendationStatus.PENDING
    assert rec.desired == rec.current and rec.stages == [] and rec.validations == []
    stored = svc.state.get_recommendation(rec.id)
    assert isinstance(stored.evidence, ReservedCapacityEvidence) and stored.evidence == rec.evidence
    ev = stored.evidence
    # two steady on-demand g5.xlarge replicas for a day: every instance committed, savings stated
    assert ev.instance_type == "g5.xlarge" and ev.usage_mean_instances == pytest.approx(2.0, abs=0.01)
    assert sum(ev.reserved_instances.values()) == 2 and ev.worth_it_at == "p10"
    assert ev.monthly_savings_usd > 0 and ev.savings_pct > 30

    before = {i.id for i in svc.state.list_instances(STEADY)}
    decide(svc.state, rec.id, "approve", "alice", "buy them", "cli", now=clock())
    execution = run_rollout(svc, clock, rec.id, capabilities=(cap,))
    assert execution.status is ExecutionStatus.SUCCEEDED and execution.stages == []
    assert "advice only" in execution.reason
    assert svc.state.get_recommendation(rec.id).status is RecommendationStatus.EXECUTED
    assert {i.id for i in svc.state.list_instances(STEADY)} == before  # the fleet was not touched
    assert svc.state.get_deployment(STEADY).config == rec.current
    assert svc.state.get_outcome(rec.id) is None
    # Run again (a retried executor run): still nothing applied, nothing remembered.
    again = run_rollout(svc, clock, rec.id, capabilities=(cap,))
    assert again.status is ExecutionStatus.SUCCEEDED and svc.state.get_outcome(rec.id) is None

    # Dismissing is the same gate's other answer.
    other = next(r for r in mine.created if r.deployment_id != STEADY)
    decide(svc.state, other.id, "reject", "bob", "not now", "cli", now=clock())
    assert svc.state.get_recommendation(other.id).status is RecommendationStatus.REJECTED


def test_a_fleet_change_goes_before_advice_on_the_same_deployment(svc: Services, clock: Clock) -> None:
    from optiinfra_assets.agents.cost.spot_migration import SpotMigration

    svc.decisions = DecisionSettings(reserved_min_history_days=0.5)
    report = run_analysis_pass(svc, NOW, capabilities=(SpotMigration(), ReservedCapacity()), detectors=())
    spot_deps = {
        r.deployment_id
        for r in report.capabilities["spot_migration"].created
        if r.status is RecommendationStatus.PENDING  # a blocked change takes no part in conflicts
    }
    assert spot_deps
    for dep in spot_deps:
        # all replicas go to spot: re-evaluated on that config, no on-demand usage is left to commit
        why = report.capabilities["reserved_capacity"].skipped[dep]
        assert "a change to the fleet goes before advice" in why and "nothing left to do" in why
