"""The reconciler (issue 12, "Changes that never finish"): every change a fault can leave half-way reaches a
final state, and the fleet its recorded config. On the sandbox fleet, SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
import test_rollout
from test_rollout import DEP, Killed, lifecycles, make_context, recommend

from optiinfra_assets.agents.rollout import execute
from optiinfra_assets.models import ExecutionStatus, Lifecycle, RecommendationStatus
from optiinfra_assets.reconcile import (
    EXECUTOR_MAX_RUNTIME,
    Action,
    RunFacts,
    reconcile,
    roll_back_by_person,
)
from resources.state_store import RecommendationError, StateStore
from resources.targets import interrupt_spot_instance

# The executor tests' fleet (4 on-demand g6e.xlarge on DEP), memory and clock.
clock, fleet, memory = test_rollout.clock, test_rollout.fleet, test_rollout.memory
ALL_ON_DEMAND = Counter({Lifecycle.ON_DEMAND: 4})


def die_at_the_50pct_soak(clock):
    soaks: list[float] = []

    def sleep(seconds: float) -> None:
        soaks.append(seconds)
        if len(soaks) == 2:
            raise Killed
        clock.advance(seconds)

    return sleep


def half_migrated(state: StateStore, fleet, memory, clock) -> str:
    """An approved spot migration whose executor was killed during the 50% stage's soak."""
    rec_id = recommend(state, clock)
    with pytest.raises(Killed):
        execute(
            make_context(state, fleet, memory, clock, sleep=die_at_the_50pct_soak(clock)), rec_id, "run-1"
        )
    assert lifecycles(state) == Counter({Lifecycle.SPOT: 2, Lifecycle.ON_DEMAND: 2})
    return rec_id


def acted(report) -> list[tuple[str, Action]]:
    return [(f.subject, f.action) for f in report.acted]


def test_failed_after_repeated_deaths_is_rolled_back_and_both_final(state, fleet, memory, clock) -> None:
    rec_id = half_migrated(state, fleet, memory, clock)
    # What execution_failure_sensor left after the third death: execution failed, recommendation executing.
    execution = state.get_execution(rec_id)
    execution.status, execution.reason = ExecutionStatus.FAILED, "executor died 3 times; left at stage 50%"
    state.save_execution(execution)
    before = execution.before
    assert state.get_recommendation(rec_id).status is RecommendationStatus.EXECUTING

    clock.advance(600)
    report = reconcile(
        state, fleet, clock(), {rec_id: RunFacts(failed=3, last_ended_at=clock() - timedelta(minutes=8))}
    )

    assert acted(report) == [(rec_id, Action.ROLL_BACK)]
    assert lifecycles(state) == ALL_ON_DEMAND
    deployment = state.get_deployment(DEP)
    assert deployment.config == before and deployment.rollout_to is None
    rec, done = state.get_recommendation(rec_id), state.get_execution(rec_id)
    assert rec.status is RecommendationStatus.FAILED and "restored acme-chat-8b" in rec.status_reason
    assert done.status is ExecutionStatus.FAILED and "executor died 3 times" in done.reason
    assert "restored" in done.reason and done.finished_at is not None
    assert state.open_recommendation(rec.kind, DEP) is None  # the deployment's slot is free again
    assert "rolled_back_and_failed" in [e.action for e in state.list_audit(rec_id)]
    assert reconcile(state, fleet, clock(), {}).acted == []  # final: nothing left to do


def test_a_running_execution_no_run_applies_is_rolled_back(state, fleet, memory, clock) -> None:
    rec_id = half_migrated(state, fleet, memory, clock)

    in_flight = reconcile(state, fleet, clock() + timedelta(hours=2), {rec_id: RunFacts(in_flight=True)})
    assert acted(in_flight) == [] and [f.action for f in in_flight.findings] == [Action.WAIT]
    just_died = RunFacts(failed=1, last_ended_at=clock())
    assert reconcile(state, fleet, clock() + timedelta(minutes=1), {rec_id: just_died}).acted == []
    # Without Dagster's word (the CLI), recent activity means it may still run...
    assert reconcile(state, fleet, clock() + timedelta(minutes=5)).acted == []
    assert lifecycles(state) == Counter({Lifecycle.SPOT: 2, Lifecycle.ON_DEMAND: 2})

    # ...and past the executor's max runtime it cannot.
    report = reconcile(state, fleet, clock() + EXECUTOR_MAX_RUNTIME + timedelta(minutes=1))

    assert acted(report) == [(rec_id, Action.ROLL_BACK)]
    assert "no executor run is applying it" in report.findings[0].found
    assert lifecycles(state) == ALL_ON_DEMAND
    assert state.get_recommendation(rec_id).status is RecommendationStatus.FAILED
    assert state.get_execution(rec_id).status is ExecutionStatus.FAILED


def _delete_deployment(state: StateStore, deployment_id: str) -> None:
    with state.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM instances WHERE deployment_id = :d"), {"d": deployment_id})
        conn.execute(sa.text("DELETE FROM deployments WHERE id = :d"), {"d": deployment_id})


def test_an_error_before_the_execution_exists_is_marked_failed(state, fleet, memory, clock) -> None:
    rec_id = recommend(state, clock)
    ctx = make_context(state, fleet, memory, clock)
    _delete_deployment(state, DEP)
    with pytest.raises(KeyError, match="unknown deployment"):
        execute(ctx, rec_id, "run-1")
    # The run died after the recommendation was marked executing, before its execution record.
    state.set_recommendation_status(
        rec_id, RecommendationStatus.EXECUTING, expected=[RecommendationStatus.APPROVED]
    )
    assert state.get_execution(rec_id) is None

    report = reconcile(
        state, fleet, clock(), {rec_id: RunFacts(failed=1, last_ended_at=clock() - timedelta(hours=1))}
    )

    assert acted(report) == [(rec_id, Action.MARK_FAILED)]
    rec = state.get_recommendation(rec_id)
    assert rec.status is RecommendationStatus.FAILED
    assert rec.status_reason == "deployment 'acme-chat-8b' no longer exists"
    assert state.open_recommendation(rec.kind, DEP) is None


def test_an_approved_change_whose_run_failed_before_starting_is_marked_failed(
    state, fleet, memory, clock
) -> None:
    rec_id = recommend(state, clock)
    assert reconcile(state, fleet, clock(), {}).acted == []  # approved, no run yet: the sensor's turn
    state.audit(
        "dagster",
        "executor_run_failed",
        "recommendation",
        rec_id,
        {"run_id": "r1", "message": "boom:\n  store down"},
    )
    facts = {rec_id: RunFacts(failed=1, last_ended_at=clock() - timedelta(minutes=10))}

    report = reconcile(state, fleet, clock(), facts)

    assert acted(report) == [(rec_id, Action.MARK_FAILED)]
    rec = state.get_recommendation(rec_id)
    assert rec.status is RecommendationStatus.FAILED and rec.status_reason.endswith(
        "its run failed: boom: store down"
    )
    assert lifecycles(state) == ALL_ON_DEMAND


def test_a_spot_loss_after_the_rollout_is_replaced(state, fleet, memory, clock) -> None:
    rec_id = recommend(state, clock)
    assert (
        execute(make_context(state, fleet, memory, clock), rec_id, "run-1").status
        is ExecutionStatus.SUCCEEDED
    )
    lost = interrupt_spot_instance(state, DEP, clock())
    assert lost is not None and lifecycles(state) == Counter({Lifecycle.SPOT: 3})

    report = reconcile(state, fleet, clock(), {})

    assert acted(report) == [(DEP, Action.HEAL)]
    assert report.findings[0].found == "short of its recorded config: 1 x g6e.xlarge/spot"
    assert lifecycles(state) == Counter({Lifecycle.SPOT: 4})
    assert lost not in {i.id for i in state.list_instances(DEP)}
    assert reconcile(state, fleet, clock(), {}).acted == []


def test_no_healing_while_a_change_is_under_way(state, fleet, memory, clock) -> None:
    rec_id = half_migrated(state, fleet, memory, clock)
    interrupt_spot_instance(state, DEP, clock())
    report = reconcile(state, fleet, clock(), {rec_id: RunFacts(in_flight=True)})
    assert report.acted == [] and lifecycles(state) == Counter({Lifecycle.SPOT: 1, Lifecycle.ON_DEMAND: 2})


def test_a_rollout_nobody_runs_goes_back_to_the_recorded_config(state, fleet, memory, clock) -> None:
    rec = state.get_recommendation(recommend(state, clock))
    fleet.apply(DEP, rec.desired, 0.5)  # applied behind the executor's back: no execution, no run
    assert lifecycles(state) == Counter({Lifecycle.SPOT: 2, Lifecycle.ON_DEMAND: 2})
    report = reconcile(state, fleet, clock(), {})
    assert acted(report) == []  # a change is approved for this deployment: it is left to the change
    state.set_recommendation_status(
        rec.id, RecommendationStatus.EXPIRED, expected=[RecommendationStatus.APPROVED]
    )

    report = reconcile(state, fleet, clock(), {})

    assert acted(report) == [(DEP, Action.RESTORE)]
    assert lifecycles(state) == ALL_ON_DEMAND and state.get_deployment(DEP).rollout_to is None


def test_dry_run_changes_nothing(state, fleet, memory, clock) -> None:
    rec_id = half_migrated(state, fleet, memory, clock)
    report = reconcile(state, fleet, clock() + timedelta(hours=1), dry_run=True)
    assert acted(report) == [(rec_id, Action.ROLL_BACK)] and not report.findings[0].did
    assert lifecycles(state) == Counter({Lifecycle.SPOT: 2, Lifecycle.ON_DEMAND: 2})
    assert state.get_execution(rec_id).status is ExecutionStatus.RUNNING


def test_a_person_rolls_back_a_finished_change(state, fleet, memory, clock) -> None:
    rec_id = recommend(state, clock)
    execute(make_context(state, fleet, memory, clock), rec_id, "run-1")
    with pytest.raises(ValueError, match="by: must name who rolls back"):
        roll_back_by_person(state, fleet, rec_id, "  ", "x", clock())

    execution = roll_back_by_person(state, fleet, rec_id, "alice", "customer asked", clock())

    assert (
        execution.status is ExecutionStatus.ROLLED_BACK
        and execution.reason == "rolled back by alice: customer asked"
    )
    assert lifecycles(state) == ALL_ON_DEMAND
    assert state.get_recommendation(rec_id).status is RecommendationStatus.ROLLED_BACK
    entry = [e for e in state.list_audit(rec_id) if e.action == "rollback"][-1]
    assert entry.actor == "alice" and entry.detail["comment"] == "customer asked"
    with pytest.raises(RecommendationError, match="already rolled back"):
        roll_back_by_person(state, fleet, rec_id, "alice", "again", clock())


def test_a_person_cannot_roll_back_under_a_live_run(state, fleet, memory, clock) -> None:
    rec_id = half_migrated(state, fleet, memory, clock)
    with pytest.raises(RecommendationError, match="being applied by a run"):
        roll_back_by_person(
            state, fleet, rec_id, "alice", "stop", clock(), {rec_id: RunFacts(in_flight=True)}
        )
    assert lifecycles(state) == Counter({Lifecycle.SPOT: 2, Lifecycle.ON_DEMAND: 2})

    roll_back_by_person(
        state,
        fleet,
        rec_id,
        "alice",
        "stop",
        clock(),
        {rec_id: RunFacts(failed=1, last_ended_at=clock() - timedelta(hours=1))},
    )

    assert lifecycles(state) == ALL_ON_DEMAND
    assert state.get_recommendation(rec_id).status is RecommendationStatus.ROLLED_BACK
