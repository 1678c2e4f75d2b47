"""The `optiinfra` command against real stores (SQLite and PostgreSQL): output shapes, the decision
gate's refusals and exit codes, sandbox faults, policies, and the start-up check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets.cli import main
from optiinfra_assets.models import (
    Decision,
    Estimate,
    FaultKind,
    InstanceState,
    Lifecycle,
    Recommendation,
    RecommendationStatus,
    Risk,
    UnregisteredEvidence,
)
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.state_store import StateStore


@pytest.fixture
def cli_state(tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    """The CLI's environment pointed at a fresh store holding the sandbox fleet and two recommendations."""
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", state_url)
    state = StateStore(state_url)
    state.migrate()
    now = datetime.now(UTC)
    ensure_sandbox_fleet(state, seed=1, now=now)
    for rec_id, deployment, expires in [
        ("rec-live", "acme-chat-8b", now + timedelta(hours=24)),
        ("rec-old", "globex-rag-qwen", now - timedelta(minutes=1)),
    ]:
        dep = state.get_deployment(deployment)
        state.add_recommendation(
            Recommendation(
                id=rec_id,
                kind="spot_migration",
                customer_id=dep.customer_id,
                deployment_id=deployment,
                created_at=now - timedelta(hours=1),
                expires_at=expires,
                current=dep.config,
                desired=dep.config.model_copy(
                    update={"on_demand_replicas": 0, "spot_replicas": dep.replicas}
                ),
                estimate=Estimate(monthly_savings_usd=3151.85),
                risk=Risk.LOW,
                risk_score=0.2,
                summary="move to spot",
                evidence=UnregisteredEvidence(kind="cli_test"),
            )
        )
    return state


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_recommendations_json(cli_state: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recommendations", "--status", "pending", "--json")
    assert code == 0
    recs = json.loads(out)
    assert {r["id"] for r in recs} == {"rec-live", "rec-old"}
    live = next(r for r in recs if r["id"] == "rec-live")
    assert live["kind"] == "spot_migration" and live["status"] == "pending" and live["customer"] == "acme"
    assert live["estimated_monthly_savings_usd"] == 3151.85 and live["risk"] == "low"
    assert set(live["changes"]) == {"on_demand_replicas", "spot_replicas"}
    assert live["changes"]["spot_replicas"] == {"from": 0, "to": 4}


def test_capabilities_json_lists_every_capability_and_detector(
    cli_state: StateStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from optiinfra_assets.agents import CAPABILITIES, DETECTORS

    code, out, _ = run(capsys, "capabilities", "--json")
    assert code == 0
    rows = {r["kind"]: r for r in json.loads(out)}
    assert set(rows) == {c.kind for c in CAPABILITIES} | {d.name for d in DETECTORS}
    spot = rows["spot_migration"]
    assert spot["agent"] == "cost" and spot["objective"] == "cost" and spot["type"] == "capability"
    assert spot["asset_keys"] == ["spot_migration_recommendations"]
    assert spot["recommendations"] == {"pending": 2}
    assert "last_run" in spot


def test_approve_once_then_refuse(cli_state: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "approve", "rec-live", "--by", "alice", "--comment", "ok")
    assert code == 0 and "approved by alice" in out
    code, _, err = run(capsys, "reject", "rec-live", "--by", "bob", "--comment", "no")
    assert code == 2 and "already approved" in err and "Traceback" not in err
    code, _, err = run(capsys, "approve", "rec-unknown", "--by", "bob")
    assert code == 2 and "unknown recommendation 'rec-unknown'" in err
    approval = cli_state.get_approval("rec-live")
    assert approval is not None and approval.decision is Decision.APPROVE and approval.comment == "ok"
    entries = [(e.actor, e.action, e.detail.get("comment")) for e in cli_state.list_audit("rec-live")]
    assert ("alice", "approve", "ok") in entries and not any(actor == "bob" for actor, _, _ in entries)


def test_expired_and_bad_input_change_nothing(
    cli_state: StateStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "approve", "rec-old", "--by", "alice")
    assert code == 2 and "expired" in err
    assert cli_state.get_approval("rec-old") is None
    assert cli_state.get_recommendation("rec-old").status is RecommendationStatus.EXPIRED
    with pytest.raises(SystemExit) as empty_actor:  # refused by the argument's type, before the store
        main(["approve", "rec-live", "--by", "  "])
    assert empty_actor.value.code == 2
    assert "argument --by: must name who decides, got '  '" in capsys.readouterr().err
    assert cli_state.get_recommendation("rec-live").status is RecommendationStatus.PENDING
    with pytest.raises(SystemExit) as bad_status:
        main(["recommendations", "--status", "bogus"])
    assert bad_status.value.code == 2 and "bogus" in capsys.readouterr().err


def test_executions_json(cli_state: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "executions", "--json")[1].strip() == "[]"
    run(capsys, "approve", "rec-live", "--by", "alice")
    before = cli_state.get_deployment("acme-chat-8b").config
    execution = cli_state.start_execution("rec-live", "run-1", before, datetime.now(UTC))
    execution.stage = 10
    cli_state.save_execution(execution)
    code, out, _ = run(capsys, "executions", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["recommendation_id"] == "rec-live"
    assert rows[0]["status"] == "running" and rows[0]["stage"] == 10


def test_sandbox_faults_and_policy(cli_state: StateStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(
        capsys, "sandbox", "degrade-quality", "acme-chat-8b", "--drop-pct", "9", "--scope", "all"
    )
    assert code == 0
    [fault] = cli_state.list_faults("acme-chat-8b")
    assert fault.kind is FaultKind.QUALITY_DEGRADATION
    assert fault.params == {"drop_pct": 9.0, "scope": "all", "mode": "hallucination"}
    assert "no running spot instance" in run(capsys, "sandbox", "lose-spot", "acme-chat-8b")[1]
    assert (
        run(capsys, "sandbox", "clear", "acme-chat-8b")[0] == 0
        and cli_state.list_faults("acme-chat-8b") == []
    )
    code, _, err = run(capsys, "sandbox", "lose-spot", "no-such-deployment")
    assert code == 2 and "no-such-deployment" in err

    spot = cli_state.list_instances("acme-chat-8b")[0].model_copy(
        update={"id": "i-spot-test", "lifecycle": Lifecycle.SPOT}
    )
    cli_state.add_instances([spot])
    assert "i-spot-test" in run(capsys, "sandbox", "lose-spot", "acme-chat-8b")[1]
    lost = next(
        i for i in cli_state.list_instances("acme-chat-8b", include_ended=True) if i.id == "i-spot-test"
    )
    assert lost.state is InstanceState.INTERRUPTED

    assert run(capsys, "policy", "set", "acme", "--auto-approve-max-risk", "low", "--by", "cfo")[0] == 0
    assert cli_state.get_customer("acme").auto_approve_max_risk is Risk.LOW
    assert "low" in run(capsys, "policy", "show")[1]
    run(capsys, "policy", "set", "acme", "--auto-approve-max-risk", "off", "--by", "cfo")
    assert cli_state.get_customer("acme").auto_approve_max_risk is None


def test_check_names_an_unreachable_store_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", "")
    code, out, _ = run(capsys, "check")
    assert code == 0 and "sqlite" in out and "chdb" in out and "qdrant-local" in out
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", "postgresql+psycopg2://ops:hunter2@127.0.0.1:1/optiinfra")
    code, _, err = run(capsys, "check")
    assert code == 3
    assert err.count("\n") == 1 and "ops:***@127.0.0.1:1/optiinfra" in err and "hunter2" not in err
