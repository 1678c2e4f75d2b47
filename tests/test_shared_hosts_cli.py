"""Shared hosts made visible and healed, on SQLite and PostgreSQL: `optiinfra sandbox status` (and --json)
lists the running hosts with their GPUs and tenants, `optiinfra instances` a slice's host and GPUs, and the
reconciler heals every tenant of a lost spot host."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from workflow_fixtures import NOW, Clock

from optiinfra_assets.catalog import default_engine, instance_type
from optiinfra_assets.cli import main
from optiinfra_assets.models import DeploymentConfig, InstanceState, Lifecycle
from optiinfra_assets.reconcile import Action, reconcile
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.state_store import StateStore
from resources.targets import SandboxTarget

SEED = 5
TENANTS = ("initech-pack-qwen14b-a", "initech-pack-qwen14b-b")  # one customer, no dedicated hardware
WHOLE = "acme-chat-8b"  # whole instances
L40S_HOST = "g6e.12xlarge"  # 4 x L40S


def _spot_slices(config: DeploymentConfig) -> DeploymentConfig:
    """Two spot replicas, each on one L40S of a shared g6e.12xlarge."""
    engine = default_engine(instance_type(L40S_HOST).gpu, 1)
    return config.model_copy(
        update={
            "instance_type": L40S_HOST,
            "gpus_per_replica": 1,
            "engine": engine,
            "on_demand_replicas": 0,
            "spot_replicas": 2,
        }
    )


@pytest.fixture
def packed(state: StateStore) -> tuple[StateStore, SandboxTarget, Clock]:
    """The sandbox fleet with both tenants' two 1-GPU spot slices packed onto two shared hosts."""
    assert ensure_sandbox_fleet(state, SEED, NOW - timedelta(days=1))
    clock = Clock(NOW)
    target = SandboxTarget(state, SEED, clock=clock)
    for did in TENANTS:
        target.apply(did, _spot_slices(state.get_deployment(did).config), 1.0)
    return state, target, clock


@pytest.fixture
def cli_env(state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", state_url)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _by_host(state: StateStore) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for inst in state.list_instances():
        if inst.host_id:
            out.setdefault(inst.host_id, Counter())[inst.deployment_id] += 1
    return out


def test_sandbox_status_lists_no_hosts_on_a_fleet_of_whole_instances(
    state: StateStore, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ensure_sandbox_fleet(state, SEED, NOW)
    code, out, _ = run(capsys, "sandbox", "status")
    assert code == 0 and WHOLE in out and "shared hosts" not in out
    code, out, _ = run(capsys, "sandbox", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["hosts"] == []
    assert {r["deployment"] for r in status["deployments"]} >= {WHOLE, *TENANTS}


def test_sandbox_status_lists_the_running_hosts_gpus_and_tenants(
    packed, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _, _ = packed
    code, out, _ = run(capsys, "sandbox", "status", "--json")
    assert code == 0
    hosts = json.loads(out)["hosts"]
    assert {h["host"] for h in hosts} == {h.id for h in state.list_hosts()} and len(hosts) == 2
    for host in hosts:
        assert host["instance_type"] == L40S_HOST and host["lifecycle"] == "spot"
        assert host["dedicated_to"] is None and host["state"] == "running"
        assert (host["gpus_used"], host["gpus_total"]) == (2, 4)
        assert host["deployments"] == {TENANTS[0]: 1, TENANTS[1]: 1}
        assert sorted(s["deployment"] for s in host["slices"]) == sorted(TENANTS)
    code, out, _ = run(capsys, "sandbox", "status")
    assert code == 0 and "shared hosts (2)" in out
    for host in hosts:
        line = next(line for line in out.splitlines() if line.startswith(host["host"]))
        assert f"{TENANTS[0]} (1 GPU), {TENANTS[1]} (1 GPU)" in line and " spot " in line


def test_instances_show_a_slices_host_and_gpus(
    packed, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    state, _, _ = packed
    code, out, _ = run(capsys, "instances", "--deployment", TENANTS[0], "--json")
    rows = json.loads(out)
    running = {i.id: i for i in state.list_instances(TENANTS[0])}
    assert code == 0 and {r["instance"] for r in rows} == set(running) and len(rows) == 2
    assert all(r["gpus"] == 1 and r["host"] == running[r["instance"]].host_id for r in rows)
    assert len({r["host"] for r in rows}) == 2  # spread over two hosts
    whole = json.loads(run(capsys, "instances", "--deployment", WHOLE, "--json")[1])
    gpus = instance_type(state.get_deployment(WHOLE).instance_type).gpu_count
    assert whole and all(r["host"] is None and r["gpus"] == gpus for r in whole)
    # --all adds the whole instances the slices replaced, ended.
    history = json.loads(run(capsys, "instances", "--deployment", TENANTS[0], "--all", "--json")[1])
    assert {r["state"] for r in history} == {"running", "terminated"} and len(history) > len(rows)
    code, out, _ = run(capsys, "instances")
    assert code == 0 and "HOST" in out and "GPUS" in out
    slice_line = next(line for line in out.splitlines() if line.startswith(rows[0]["instance"]))
    assert rows[0]["host"] in slice_line
    code, _, err = run(capsys, "instances", "--deployment", "no-such-deployment")
    assert code == 2 and "no-such-deployment" in err


def test_a_lost_shared_spot_host_is_healed_for_every_tenant_by_the_reconciler(
    packed, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    state, target, clock = packed
    victim = min((i for i in state.list_instances(TENANTS[0])), key=lambda i: i.id)
    code, out, _ = run(capsys, "sandbox", "lose-spot", TENANTS[0])
    assert code == 0 and f"with its host {victim.host_id}" in out
    # The host went with both tenants' slices on it: each tenant is one replica short.
    assert {s.state for s in state.list_host_slices(victim.host_id, include_ended=True)} == {
        InstanceState.INTERRUPTED
    }
    assert all(len(state.list_instances(did)) == 1 for did in TENANTS)
    assert len(json.loads(run(capsys, "sandbox", "status", "--json")[1])["hosts"]) == 1
    clock.advance(60)
    report = reconcile(state, target, clock())
    healed = {f.deployment_id: f for f in report.findings if f.deployment_id in TENANTS}
    assert set(healed) == set(TENANTS)
    for finding in healed.values():
        assert finding.action is Action.HEAL and not finding.error, finding
        assert "1 x g6e.12xlarge/spot" in finding.found
    for did in TENANTS:
        running = state.list_instances(did)
        assert len(running) == 2 and all(i.lifecycle is Lifecycle.SPOT and i.gpus == 1 for i in running)
        assert len({i.host_id for i in running}) == 2  # still spread over two hosts
    # Both replacements share one new host: the survivor and it each hold one slice of each tenant.
    hosts = state.list_hosts()
    assert len(hosts) == 2 and victim.host_id not in {h.id for h in hosts}
    assert _by_host(state) == {h.id: Counter({TENANTS[0]: 1, TENANTS[1]: 1}) for h in hosts}
    # A second pass finds nothing short.
    again = reconcile(state, target, clock())
    assert not [f for f in again.findings if f.deployment_id in TENANTS]
