"""The sandbox target against a real SQLite StateStore, and the pure stage arithmetic it applies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets.models import DeploymentConfig, EngineConfig, InstanceState, Lifecycle
from optiinfra_assets.sandbox import initial_fleet
from resources.state_store import StateStore
from resources.targets import SandboxTarget, interrupt_spot_instance, pools, stage_pools

SEED = 42
NOW = datetime(2026, 5, 11, 15, 0, tzinfo=UTC)
DEP = "acme-chat-8b"  # 4 on-demand g6e.xlarge replicas
OD, SPOT = Lifecycle.ON_DEMAND, Lifecycle.SPOT
ENGINE = EngineConfig()


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


def config(itype: str = "g6e.xlarge", od: int = 4, spot: int = 0, **engine: object) -> DeploymentConfig:
    return DeploymentConfig(
        instance_type=itype, on_demand_replicas=od, spot_replicas=spot, engine=EngineConfig(**engine)
    )


def _mix(state: StateStore, deployment_id: str = DEP) -> dict[str, int]:
    running = state.list_instances(deployment_id)
    return {str(lc): sum(i.lifecycle == lc for i in running) for lc in Lifecycle}


def _spot(target: SandboxTarget, spot: int, deployment_id: str = DEP) -> DeploymentConfig:
    """The deployment's current config with ``spot`` of its replicas moved to spot."""
    current = target.current(deployment_id)
    return current.model_copy(update={"on_demand_replicas": current.replicas - spot, "spot_replicas": spot})


# ---- stage_pools: pure --------------------------------------------------------------------------


def test_ten_percent_of_an_on_demand_to_spot_change_moves_exactly_one() -> None:
    base, desired = config(od=4), config(od=0, spot=4)
    assert stage_pools(base, desired, 0.1) == {("g6e.xlarge", OD, ENGINE): 3, ("g6e.xlarge", SPOT, ENGINE): 1}
    assert stage_pools(base, desired, 0.5) == {("g6e.xlarge", OD, ENGINE): 2, ("g6e.xlarge", SPOT, ENGINE): 2}
    assert stage_pools(base, desired, 0.0) == pools(base)


@pytest.mark.parametrize(
    "desired",
    [
        config(od=0, spot=4),
        config(od=1, spot=2),
        config("g6e.2xlarge", od=4),
        config(od=4, max_num_seqs=128),
        config("g6e.2xlarge", od=2, spot=3, max_num_seqs=64, enable_prefix_caching=False),
    ],
)
def test_fraction_one_is_exactly_the_desired_config(desired: DeploymentConfig) -> None:
    assert stage_pools(config(od=4), desired, 1.0) == pools(desired)


def test_an_engine_change_at_ten_percent_is_one_canary_and_the_rest_control() -> None:
    base, desired = config(od=3), config(od=3, max_num_seqs=128)
    canary = EngineConfig(max_num_seqs=128)
    assert stage_pools(base, desired, 0.1) == {
        ("g6e.xlarge", OD, ENGINE): 2,  # control: the old engine config
        ("g6e.xlarge", OD, canary): 1,  # canary: the new one
    }


def test_an_instance_type_change_is_make_before_break() -> None:
    base, desired = config(od=4), config("g6e.2xlarge", od=4)
    for fraction in (0.1, 0.5, 1.0):
        stage = stage_pools(base, desired, fraction)
        # the new type fills exactly as fast as the old one drains: capacity never dips below 4
        assert sum(stage.values()) == 4
        assert stage.get(("g6e.2xlarge", OD, ENGINE), 0) == {0.1: 1, 0.5: 2, 1.0: 4}[fraction]


def test_a_fraction_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match=r"fraction: expected 0\.\.1"):
        stage_pools(config(), config(od=0, spot=4), 1.5)


# ---- SandboxTarget ------------------------------------------------------------------------------


def test_apply_is_make_before_break_and_idempotent(target: SandboxTarget, state, clock) -> None:
    before = target.current(DEP)
    assert (before.on_demand_replicas, before.spot_replicas) == (4, 0)
    desired = _spot(target, 4)
    clock.now = NOW + timedelta(minutes=1)
    actions = target.apply(DEP, desired, 0.1)
    assert [a.split()[0] for a in actions] == ["launched", "released"]
    assert _mix(state) == {"on_demand": 3, "spot": 1}
    assert target.apply(DEP, desired, 0.1) == []
    deployment = state.get_deployment(DEP)
    assert deployment.config == before  # the change is under way, not done
    assert (deployment.rollout_to, deployment.rollout_fraction) == (desired, 0.1)
    clock.now = NOW + timedelta(minutes=2)
    target.apply(DEP, desired, 1.0)
    assert _mix(state) == {"on_demand": 0, "spot": 4}
    assert target.apply(DEP, desired, 1.0) == []
    every = state.list_instances(DEP, include_ended=True)
    assert len(every) == 8 and len({i.id for i in every}) == 8
    assert all(i.state == InstanceState.TERMINATED for i in every if i.lifecycle == Lifecycle.ON_DEMAND)
    audit = state.list_audit()
    assert [e.action for e in audit].count("launch_instance") == 4
    assert all(e.actor == "target:sandbox" for e in audit)


def test_apply_all_of_the_way_records_the_new_config(target: SandboxTarget, state) -> None:
    desired = _spot(target, 4)
    target.apply(DEP, desired, 0.5)
    target.apply(DEP, desired, 1.0)
    deployment = state.get_deployment(DEP)
    assert deployment.config == desired and target.current(DEP) == desired
    assert (deployment.rollout_to, deployment.rollout_fraction) == (None, 0.0)


def test_an_instance_type_change_launches_before_it_releases(target: SandboxTarget, state) -> None:
    desired = target.current(DEP).model_copy(update={"instance_type": "g6e.2xlarge"})
    actions = target.apply(DEP, desired, 0.5)
    verbs = [a.split()[0] for a in actions]
    assert verbs == ["launched"] * 2 + ["released"] * 2
    running = state.list_instances(DEP)
    assert sorted(i.instance_type for i in running) == ["g6e.2xlarge"] * 2 + ["g6e.xlarge"] * 2


def test_an_engine_change_runs_a_canary_beside_the_control(target: SandboxTarget, state) -> None:
    current = target.current(DEP)
    canary = current.engine.model_copy(update={"max_num_seqs": 128})
    target.apply(DEP, current.model_copy(update={"engine": canary}), 0.1)
    engines = [i.engine for i in state.list_instances(DEP)]
    assert engines.count(canary) == 1 and engines.count(current.engine) == 3


def test_the_apply_audit_names_the_changes_of_the_final_stage(target: SandboxTarget, state) -> None:
    target.apply(DEP, _spot(target, 4), 1.0)
    (entry,) = [e for e in state.list_audit(DEP) if e.action == "apply"]
    assert set(entry.detail["changes"]) == {"on_demand_replicas", "spot_replicas"}


def test_rollback_returns_to_the_config(target: SandboxTarget, state) -> None:
    before = target.current(DEP)
    target.apply(DEP, _spot(target, 4), 0.5)
    assert _mix(state) == {"on_demand": 2, "spot": 2}
    assert target.rollback(DEP, before)
    assert _mix(state) == {"on_demand": 4, "spot": 0}
    assert target.rollback(DEP, before) == []
    deployment = state.get_deployment(DEP)
    assert deployment.config == before and deployment.rollout_to is None


def test_spot_without_a_price_is_refused_before_anything_changes(target: SandboxTarget, state) -> None:
    # p5.4xlarge has no spot price: the spot pool is refused before it launches, and nothing else moved.
    desired = config("p5.4xlarge", od=0, spot=4)
    with pytest.raises(ValueError, match=r"p5\.4xlarge"):
        target.apply(DEP, desired, 0.1)
    assert _mix(state) == {"on_demand": 4, "spot": 0}
    assert state.get_deployment(DEP).rollout_to is None
    with pytest.raises(ValueError, match=r"fraction: expected 0\.\.1"):
        target.apply(DEP, _spot(target, 4), 1.5)


def test_a_spot_loss_raises_latency_and_heal_replaces_it(target: SandboxTarget, state, clock) -> None:
    target.apply(DEP, _spot(target, 2), 1.0)
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


def test_heal_restores_the_blend_of_a_change_under_way_and_releases_nothing(
    target: SandboxTarget, state, clock
) -> None:
    target.apply(DEP, _spot(target, 4), 0.5)  # under way: 2 on-demand + 2 spot
    clock.now = NOW + timedelta(minutes=5)
    assert interrupt_spot_instance(state, DEP, clock.now) is not None
    assert _mix(state) == {"on_demand": 2, "spot": 1}
    released = [e.action for e in state.list_audit()].count("terminate_instance")
    actions = target.heal(DEP)
    # the blend (2 + 2), not the recorded config (4 on-demand) nor the desired one (4 spot)
    assert len(actions) == 1 and actions[0].startswith("launched") and "spot" in actions[0]
    assert _mix(state) == {"on_demand": 2, "spot": 2}
    assert [e.action for e in state.list_audit()].count("terminate_instance") == released
    assert target.heal(DEP) == []


def test_heal_never_releases_surplus(target: SandboxTarget, state) -> None:
    # More running than the desired state asks for: healing only launches, it never releases.
    target.apply(DEP, _spot(target, 2), 1.0)
    smaller = target.current(DEP).model_copy(update={"on_demand_replicas": 1, "spot_replicas": 1})
    state.upsert_deployment(state.get_deployment(DEP).model_copy(update={"config": smaller}))
    assert target.heal(DEP) == []
    assert _mix(state) == {"on_demand": 2, "spot": 2}
