"""Shared placements end to end: replicas of several deployments as slices of multi-GPU hosts in the sandbox
target (packing, dedicated hosts, spread, release, rollback, spot loss), billed so the fleet's cost is the
hosts' and whole instances' prices, and consolidation's shared optimum proposed and rolled out through the
real workflow, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import polars as pl
import pytest
from moto import mock_aws
from workflow_fixtures import NOW, Clock, run_rollout

from optiinfra_assets import sandbox
from optiinfra_assets.agents.capability import StageContext
from optiinfra_assets.agents.resource.consolidation import Consolidation, ConsolidationEvidence
from optiinfra_assets.catalog import config_usd_hour, default_engine, instance_type
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import (
    CheckResult,
    DeploymentConfig,
    ExecutionStatus,
    InstanceState,
    Lifecycle,
    RecommendationStatus,
)
from optiinfra_assets.serving import ConfigError, validate_config
from optiinfra_assets.workflow import Services, decide, ensure_sandbox_fleet, run_analysis_pass
from resources.aws_target import AwsTarget, ec2_client
from resources.state_store import StateStore
from resources.targets import SandboxTarget, interrupt_spot_instance

SEED = 5
PAIR = ("initrode-review-qwen32b-a", "initrode-review-qwen32b-b")  # dedicated customer initrode
OTHER = "initech-pack-qwen14b-a"  # a customer without dedicated hardware
L40S_HOST = "g6e.12xlarge"


def _sliced(config: DeploymentConfig, itype: str, gpus: int) -> DeploymentConfig:
    gpu = instance_type(itype).gpu
    return config.model_copy(
        update={"instance_type": itype, "gpus_per_replica": gpus, "engine": default_engine(gpu, gpus)}
    )


@pytest.fixture
def fleet(state: StateStore) -> tuple[StateStore, SandboxTarget, Clock]:
    assert ensure_sandbox_fleet(state, SEED, NOW - timedelta(days=1))
    clock = Clock(NOW)
    return state, SandboxTarget(state, SEED, clock=clock), clock


def _slices_by_host(state: StateStore) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for inst in state.list_instances():
        if inst.host_id:
            out.setdefault(inst.host_id, Counter())[inst.deployment_id] += 1
    return out


def test_a_slice_config_must_match_its_engine_and_be_a_real_slice() -> None:
    base = sandbox.initial_fleet(SEED, NOW)[1]
    dep = next(d for d in base if d.id == PAIR[0])
    validate_config(dep.model, _sliced(dep.config, L40S_HOST, 2))
    wrong_tp = _sliced(dep.config, L40S_HOST, 2).model_copy(update={"gpus_per_replica": 1})
    with pytest.raises(ConfigError) as exc:
        validate_config(dep.model, wrong_tp)
    assert exc.value.field == "gpus_per_replica" and exc.value.value == 1
    whole = dep.config.model_copy(update={"gpus_per_replica": 4})
    with pytest.raises(ConfigError) as exc:
        validate_config(dep.model, whole)
    assert exc.value.field == "gpus_per_replica" and "fewer than its 4 GPUs" in str(exc.value)


def test_two_deployments_pack_onto_shared_hosts_spread_and_release_them(fleet) -> None:
    state, target, clock = fleet
    before = {d: state.get_deployment(d).config for d in PAIR}
    for did in PAIR:
        target.apply(did, _sliced(before[did], L40S_HOST, 2), 1.0)
        clock.advance(60)
    hosts = state.list_hosts()
    assert len(hosts) == 2 and {h.instance_type for h in hosts} == {L40S_HOST}
    assert {h.dedicated_customer_id for h in hosts} == {"initrode"}
    # Each host: one 2-GPU replica of each deployment (4 of its 4 GPUs); each deployment on both hosts.
    assert _slices_by_host(state) == {h.id: Counter({PAIR[0]: 1, PAIR[1]: 1}) for h in hosts}
    for did in PAIR:
        running = state.list_instances(did)
        assert len(running) == 2 and all(i.gpus == 2 and i.host_id for i in running)
        assert len({i.host_id for i in running}) == 2  # spread over two hosts
        assert state.get_deployment(did).config.gpus_per_replica == 2
    # The first deployment goes back to whole instances: the hosts keep the other's slices.
    target.rollback(PAIR[0], before[PAIR[0]])
    assert len(state.list_hosts()) == 2
    solo = state.list_instances(PAIR[0])
    assert len(solo) == 2 and all(i.host_id is None and i.gpus is None for i in solo)
    assert {i.instance_type for i in solo} == {L40S_HOST}
    # The last slices leave: their hosts end.
    target.rollback(PAIR[1], before[PAIR[1]])
    assert state.list_hosts() == []
    ended = state.list_hosts(include_ended=True)
    assert len(ended) == 2 and {h.state for h in ended} == {InstanceState.TERMINATED}
    assert {a.action for a in state.list_audit(limit=500)} >= {"launch_host", "terminate_host"}


def test_a_dedicated_customers_hosts_hold_no_one_elses_slices(fleet) -> None:
    state, target, _ = fleet
    target.apply(PAIR[0], _sliced(state.get_deployment(PAIR[0]).config, L40S_HOST, 2), 1.0)
    dedicated = {h.id for h in state.list_hosts()}
    assert len(dedicated) == 2  # two GPUs free on each
    other = state.get_deployment(OTHER)
    target.apply(OTHER, _sliced(other.config, L40S_HOST, 1), 1.0)
    shared = {i.host_id for i in state.list_instances(OTHER)}
    assert shared and not shared & dedicated
    # Non-dedicated slices pack together: both 1-GPU replicas... on two hosts (spread), none dedicated.
    assert len(shared) == 2
    assert {h.dedicated_customer_id for h in state.list_hosts() if h.id in shared} == {None}


def test_the_fleets_cost_is_its_hosts_and_whole_instances_prices(fleet) -> None:
    state, target, clock = fleet
    other = state.get_deployment(OTHER)
    target.apply(OTHER, _sliced(other.config, L40S_HOST, 1), 1.0)  # a host with two idle GPUs
    for did in PAIR:
        target.apply(did, _sliced(state.get_deployment(did).config, L40S_HOST, 2), 1.0)
    clock.advance(120)
    start = clock().replace(second=0)
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(include_ended=True),
        [],
        start,
        start + timedelta(minutes=5),
        seed=SEED,
    )
    cost = frames[Domain.COST]
    per_minute = cost.group_by("ts").agg(pl.col("price_usd_per_hour").sum().alias("usd_hour")).sort("ts")
    bill = sum(instance_type(h.instance_type).price_usd_hour(h.lifecycle) for h in state.list_hosts()) + sum(
        instance_type(i.instance_type).price_usd_hour(i.lifecycle)
        for i in state.list_instances()
        if i.host_id is None
    )
    assert per_minute.height == 5
    assert per_minute["usd_hour"].to_list() == pytest.approx([bill] * 5, rel=1e-9)
    # A half-empty host is paid for by its tenant: OTHER's two 1-GPU slices on two 4-GPU hosts cost two hosts.
    mine = (
        cost.filter(pl.col("deployment_id") == OTHER).group_by("ts").agg(pl.col("price_usd_per_hour").sum())
    )
    assert mine["price_usd_per_hour"].to_list() == pytest.approx(
        [2 * instance_type(L40S_HOST).ondemand_usd_hour] * 5
    )
    # The packed pair pays its hosts: half what its four whole g6e.12xlarge cost.
    pair = (
        cost.filter(pl.col("deployment_id").is_in(list(PAIR)))
        .group_by("ts")
        .agg(pl.col("price_usd_per_hour").sum())
    )
    assert pair["price_usd_per_hour"].to_list() == pytest.approx(
        [2 * instance_type(L40S_HOST).ondemand_usd_hour] * 5
    )


def test_a_spot_loss_takes_the_whole_host_and_heal_replaces_the_slices(fleet) -> None:
    state, target, clock = fleet
    config = state.get_deployment(OTHER).config
    spot = _sliced(config, L40S_HOST, 1).model_copy(update={"on_demand_replicas": 0, "spot_replicas": 2})
    target.apply(OTHER, spot, 1.0)
    victim_host = state.list_instances(OTHER)[0].host_id
    lost = interrupt_spot_instance(state, OTHER, clock())
    assert lost is not None
    assert victim_host not in {h.id for h in state.list_hosts()}
    assert {i.state for i in state.list_host_slices(victim_host, include_ended=True)} == {
        InstanceState.INTERRUPTED
    }
    clock.advance(60)
    target.heal(OTHER)
    running = state.list_instances(OTHER)
    assert len(running) == 2 and all(i.lifecycle is Lifecycle.SPOT and i.host_id for i in running)


def test_consolidation_proposes_the_shared_optimum_and_the_workflow_packs_it(
    svc: Services, clock: Clock
) -> None:
    cap = Consolidation()
    # A whole pass, as `make run` makes it: every capability and detector, coordinated (initrode allows no
    # spot, and right-sizing's move of the same deployments loses to the shared placement).
    report = run_analysis_pass(svc, clock())
    mine = report.capabilities[cap.kind]
    assert mine.error is None, mine.error
    recs = {r.deployment_id: r for r in mine.created if r.deployment_id in PAIR}
    assert set(recs) == set(PAIR), mine.skipped
    before = {did: config_usd_hour(svc.state.get_deployment(did).config) for did in PAIR}
    for did, rec in recs.items():
        assert rec.status is RecommendationStatus.PENDING, (rec.status, rec.status_reason, rec.validations)
        ev = rec.evidence
        assert isinstance(ev, ConsolidationEvidence)
        assert rec.desired.instance_type == L40S_HOST and rec.desired.gpus_per_replica == 2
        assert rec.desired.engine.tensor_parallel_size == 2
        assert ev.shared_with == [d for d in PAIR if d != did] and ev.shared_instances == 2
        # Together they drop from four g6e.12xlarge to two.
        assert ev.shared_saving_usd_hour == pytest.approx(
            2 * instance_type(L40S_HOST).ondemand_usd_hour, rel=1e-6
        )
        assert ev.optimum_cost_usd_hour <= ev.greedy_cost_usd_hour
    for did in PAIR:
        decide(svc.state, recs[did].id, "approve", "alice", "", "cli", now=clock())
        execution = run_rollout(svc, clock, recs[did].id, capabilities=(cap,))
        assert execution.status is ExecutionStatus.SUCCEEDED, execution.reason
    hosts = svc.state.list_hosts()
    assert len(hosts) == 2 and {h.dedicated_customer_id for h in hosts} == {"initrode"}
    assert _slices_by_host(svc.state) == {h.id: Counter({PAIR[0]: 1, PAIR[1]: 1}) for h in hosts}
    after = sum(instance_type(h.instance_type).ondemand_usd_hour for h in hosts)
    assert after == pytest.approx(sum(before.values()) / 2)
    # The next pass finds them on their optimum and proposes nothing more for them.
    again = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    skipped = again.capabilities[cap.kind].skipped
    reasons = {did: reason for did, reason in skipped.items() if did in PAIR}
    assert set(reasons) == set(PAIR) and all("already on its optimum" in r for r in reasons.values()), reasons
    # Every capability and detector still runs on a fleet with slices (none breaks on a sliced deployment).
    full = run_analysis_pass(svc, clock())
    broken = {k: r.error for k, r in (full.capabilities | full.detectors).items() if r.error}
    assert not broken, broken


def _slower_than_planned(ctx: StageContext) -> CheckResult:
    """A stage check that fails: what a real regression between stages looks like to the executor."""
    return CheckResult(name="latency", passed=False, detail="p95 above what was planned (test)")


class _FailingConsolidation(Consolidation):
    stage_checks = (_slower_than_planned,)


def test_a_shared_placement_rolled_back_mid_rollout_returns_to_whole_instances(
    svc: Services, clock: Clock
) -> None:
    cap = Consolidation()
    report = run_analysis_pass(svc, clock(), capabilities=(cap,), detectors=())
    recs = {r.deployment_id: r for r in report.capabilities[cap.kind].created if r.deployment_id in PAIR}
    assert set(recs) == set(PAIR)
    first, second = (recs[d] for d in PAIR)
    decide(svc.state, first.id, "approve", "alice", "", "cli", now=clock())
    assert run_rollout(svc, clock, first.id, capabilities=(cap,)).status is ExecutionStatus.SUCCEEDED
    decide(svc.state, second.id, "approve", "alice", "", "cli", now=clock())
    execution = run_rollout(svc, clock, second.id, capabilities=(_FailingConsolidation(),))
    assert execution.status is ExecutionStatus.ROLLED_BACK, execution.reason
    # The second deployment is back on its two whole g6e.12xlarge; the first keeps its slices on two hosts.
    back = svc.state.list_instances(PAIR[1])
    assert len(back) == 2 and all(i.host_id is None and i.instance_type == L40S_HOST for i in back)
    assert svc.state.get_deployment(PAIR[1]).config == second.current
    hosts = svc.state.list_hosts()
    assert len(hosts) == 2
    assert _slices_by_host(svc.state) == {h.id: Counter({PAIR[0]: 1}) for h in hosts}


def test_the_aws_target_refuses_shared_hosts_naming_the_field(fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    state, _, _ = fleet
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        ec2 = ec2_client("us-east-1")
        aws = AwsTarget(state, ec2, "ami-0abcdef1234567890")
        desired = _sliced(state.get_deployment(PAIR[0]).config, L40S_HOST, 2)
        with pytest.raises(ConfigError) as exc:
            aws.apply(PAIR[0], desired, 0.1)
        assert exc.value.field == "gpus_per_replica" and "AWS target" in str(exc.value)
        assert ec2.describe_instances()["Reservations"] == []


def test_migration_9_adds_hosts_to_a_store_without_them(state_url: str) -> None:
    """A store migrated before shared hosts existed gains the hosts table and the instances' host columns."""
    import sqlalchemy as sa

    from resources import state_store as module

    store = StateStore(state_url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_instances_host_id")
        for column in ("host_id", "gpus"):
            conn.exec_driver_sql(f"ALTER TABLE instances DROP COLUMN {column}")
        conn.exec_driver_sql("DROP TABLE hosts")
        conn.execute(module.schema_migrations.delete().where(module.schema_migrations.c.version == 9))
    assert store.migrate() == module.MIGRATIONS[-1][0]
    with store.engine.connect() as conn:
        inspector = sa.inspect(conn)
        assert {"host_id", "gpus"} <= {c["name"] for c in inspector.get_columns("instances")}
        assert "hosts" in inspector.get_table_names()
    assert ensure_sandbox_fleet(store, SEED, NOW)
    target = SandboxTarget(store, SEED, clock=Clock(NOW))
    target.apply(PAIR[0], _sliced(store.get_deployment(PAIR[0]).config, L40S_HOST, 2), 1.0)
    assert len(store.list_hosts()) == 2
    store.dispose()
