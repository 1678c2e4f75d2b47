"""The sandbox target against a real SQLite StateStore."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets.models import InstanceState, Lifecycle
from optiinfra_assets.sandbox import initial_fleet
from resources.state_store import StateStore
from resources.targets import SandboxTarget, interrupt_spot_instance

SEED = 42
NOW = datetime(2026, 5, 11, 15, 0, tzinfo=UTC)
DEP = "acme-chat-8b"


class Clock:
    """A settable clock, so that launches and releases get distinct, known times."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore("sqlite:///" + str(tmp_path / "s.db"))
    store.migrate()
    customers, deployments, instances = initial_fleet(SEED, NOW)
    for c in customers:
        store.upsert_customer(c)
    for d in deployments:
        store.upsert_deployment(d)
    store.add_instances(instances)
    yield store
    store.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def target(state: StateStore, clock: Clock) -> SandboxTarget:
    return SandboxTarget(state, seed=SEED, clock=clock)


def _mix(state: StateStore, deployment_id: str = DEP) -> dict[str, int]:
    running = state.list_instances(deployment_id)
    return {str(lc): sum(i.lifecycle == lc for i in running) for lc in Lifecycle}


def test_set_lifecycle_count_is_make_before_break_and_idempotent(target: SandboxTarget, state, clock) -> None:
    before = target.snapshot(DEP)
    assert before["lifecycle_counts"] == {"on_demand": 4, "spot": 0}
    clock.now = NOW + timedelta(minutes=1)
    actions = target.set_lifecycle_count(DEP, Lifecycle.SPOT, 1)
    assert [a.split()[0] for a in actions] == ["launched", "released"]
    assert _mix(state) == {"on_demand": 3, "spot": 1}
    assert target.set_lifecycle_count(DEP, Lifecycle.SPOT, 1) == []
    clock.now = NOW + timedelta(minutes=2)
    target.set_lifecycle_count(DEP, Lifecycle.SPOT, 4)
    assert _mix(state) == {"on_demand": 0, "spot": 4}
    every = state.list_instances(DEP, include_ended=True)
    assert len(every) == 8 and len({i.id for i in every}) == 8
    assert all(i.state == InstanceState.TERMINATED for i in every if i.lifecycle == Lifecycle.ON_DEMAND)
    audit = state.list_audit()
    assert [e.action for e in audit].count("launch_instance") == 4
    assert all(e.actor == "target:sandbox" for e in audit)


def test_restore_returns_to_the_snapshot_mix(target: SandboxTarget, state) -> None:
    snap = target.snapshot(DEP)
    target.set_lifecycle_count(DEP, Lifecycle.SPOT, 2)
    assert _mix(state) == {"on_demand": 2, "spot": 2}
    assert target.restore(DEP, snap)
    assert _mix(state) == {"on_demand": 4, "spot": 0}
    assert target.restore(DEP, snap) == []


def test_spot_without_a_price_is_refused(target: SandboxTarget, state) -> None:
    # initech's p5.48xlarge has a spot price; a type without one refuses before anything changes.
    deployment = state.get_deployment("initech-code-72b").model_copy(update={"instance_type": "p5.4xlarge"})
    state.upsert_deployment(deployment)
    with pytest.raises(ValueError, match=r"p5\.4xlarge"):
        target.set_lifecycle_count("initech-code-72b", Lifecycle.SPOT, 1)
    with pytest.raises(ValueError, match="cannot put 5"):
        target.set_lifecycle_count(DEP, Lifecycle.SPOT, 5)


def test_a_spot_loss_raises_latency_and_heal_replaces_it(target: SandboxTarget, state, clock) -> None:
    target.set_lifecycle_count(DEP, Lifecycle.SPOT, 2)
    healthy = target.observe(DEP, 20)
    assert (healthy["running_replicas"], healthy["spot_replicas"]) == (4.0, 2.0)
    clock.now = NOW + timedelta(minutes=5)
    lost = interrupt_spot_instance(state, DEP, clock.now)
    assert lost is not None and _mix(state) == {"on_demand": 2, "spot": 1}
    degraded = target.observe(DEP, 20)
    assert degraded["running_replicas"] == 3.0
    assert degraded["latency_p95_ms"] > healthy["latency_p95_ms"]
    actions = target.heal(DEP)
    assert len(actions) == 1 and "spot" in actions[0]
    assert _mix(state) == {"on_demand": 2, "spot": 2}
    assert target.heal(DEP) == []
    assert interrupt_spot_instance(state, "globex-rag-qwen", clock.now) is None  # all on-demand there
