"""`optiinfra executions` (moved to optiinfra_assets/commands/executions.py): the listing as before,
`executions reconcile [--json]` and a person's `executions rollback ID --by --comment`, against real
stores (SQLite and PostgreSQL), without a Dagster instance (the CLI then judges by the executor's max
runtime)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets.cli import main
from optiinfra_assets.models import (
    Estimate,
    ExecutionStatus,
    Lifecycle,
    Recommendation,
    RecommendationStatus,
    Risk,
    UnregisteredEvidence,
)
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.state_store import StateStore
from resources.targets import SandboxTarget, interrupt_spot_instance

DEP = "acme-chat-8b"
SEED = 1
NOW = datetime.now(UTC)


@pytest.fixture
def cli_state(tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", state_url)
    monkeypatch.setenv("OPTIINFRA_SEED", str(SEED))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no-dagster"))
    state = StateStore(state_url)
    state.migrate()
    ensure_sandbox_fleet(state, seed=SEED, now=NOW - timedelta(days=1))
    dep = state.get_deployment(DEP)
    state.add_recommendation(
        Recommendation(
            id="rec-spot",
            kind="spot_migration",
            customer_id=dep.customer_id,
            deployment_id=DEP,
            created_at=NOW - timedelta(hours=3),
            expires_at=NOW + timedelta(hours=24),
            current=dep.config,
            desired=dep.config.model_copy(update={"on_demand_replicas": 0, "spot_replicas": dep.replicas}),
            estimate=Estimate(monthly_savings_usd=3151.85),
            risk=Risk.LOW,
            risk_score=0.2,
            summary="move to spot",
            evidence=UnregisteredEvidence(kind="cli_test"),
        )
    )
    state.decide("rec-spot", "approve", "alice", "go", via="cli", now=NOW - timedelta(hours=2))
    return state


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def spot(state: StateStore) -> int:
    return sum(i.lifecycle is Lifecycle.SPOT for i in state.list_instances(DEP))


def half_migrated(state: StateStore) -> None:
    """The executor recorded the 50% stage two hours ago and died: nothing has run it since."""
    rec = state.get_recommendation("rec-spot")
    state.set_recommendation_status(
        rec.id, RecommendationStatus.EXECUTING, expected=[RecommendationStatus.APPROVED]
    )
    execution = state.start_execution(rec.id, "run-1", rec.current, NOW - timedelta(hours=2))
    SandboxTarget(state, SEED).apply(DEP, rec.desired, 0.5)
    execution.stage = 50
    state.save_execution(execution)


def test_reconcile_rolls_back_an_abandoned_change_and_says_so(cli_state: StateStore, capsys) -> None:
    half_migrated(cli_state)
    assert spot(cli_state) > 0

    code, out, err = run(capsys, "executions", "reconcile", "--dry-run", "--json")
    assert code == 0, err
    assert [f["action"] for f in json.loads(out)["findings"] if f["subject"] == "rec-spot"] == ["roll_back"]
    assert spot(cli_state) > 0  # a dry run changes nothing

    code, out, err = run(capsys, "executions", "reconcile", "--json")

    assert code == 0, err
    report = json.loads(out)
    assert report["dagster_runs"] is False and report["dry_run"] is False
    (finding,) = [f for f in report["findings"] if f["subject"] == "rec-spot"]
    assert finding["action"] == "roll_back" and "no executor run is applying it" in finding["found"]
    assert finding["did"].startswith(f"restored {DEP}")
    assert spot(cli_state) == 0
    assert cli_state.get_recommendation("rec-spot").status is RecommendationStatus.FAILED
    code, out, _ = run(capsys, "executions", "--json")
    assert code == 0 and json.loads(out)[0]["status"] == "failed"
    code, out, _ = run(capsys, "executions", "reconcile")
    assert code == 0 and "rec-spot" not in out


def test_reconcile_replaces_a_spot_instance_lost_after_the_rollout(cli_state: StateStore, capsys) -> None:
    rec = cli_state.get_recommendation("rec-spot")
    SandboxTarget(cli_state, SEED).apply(DEP, rec.desired, 1.0)
    replicas = rec.desired.replicas
    assert interrupt_spot_instance(cli_state, DEP, NOW) is not None and spot(cli_state) == replicas - 1
    cli_state.set_recommendation_status(
        rec.id, RecommendationStatus.EXPIRED, expected=[RecommendationStatus.APPROVED]
    )

    code, out, err = run(capsys, "executions", "reconcile")

    assert code == 0, err
    assert "heal" in out and f"1 x {rec.desired.instance_type}/spot" in out
    assert spot(cli_state) == replicas


def test_a_person_rolls_back_from_the_command_line(cli_state: StateStore, capsys) -> None:
    half_migrated(cli_state)
    code, _, err = run(capsys, "executions", "rollback", "rec-nope", "--by", "alice", "--comment", "x")
    assert code == 2 and "unknown recommendation 'rec-nope'" in err
    for bad in (["--by", "policy:auto-approve-max-risk-low"], ["--by", ""]):
        with pytest.raises(SystemExit) as refused:
            main(["executions", "rollback", "rec-spot", *bad, "--comment", "x"])
        assert refused.value.code == 2 and "--by" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["executions", "rollback", "rec-spot", "--by", "alice"])  # a person says why
    assert "--comment" in capsys.readouterr().err

    code, out, err = run(
        capsys, "executions", "rollback", "rec-spot", "--by", "bob", "--comment", "customer asked"
    )

    assert code == 0, err
    assert out.strip() == "rec-spot: rolled back by bob: customer asked"
    assert spot(cli_state) == 0
    assert cli_state.get_execution("rec-spot").status is ExecutionStatus.ROLLED_BACK
    assert cli_state.get_recommendation("rec-spot").status is RecommendationStatus.ROLLED_BACK
    entry = [e for e in cli_state.list_audit("rec-spot") if e.action == "rollback"][-1]
    assert entry.actor == "bob" and entry.detail["comment"] == "customer asked"
    code, _, err = run(capsys, "executions", "rollback", "rec-spot", "--by", "bob", "--comment", "again")
    assert code == 2 and "already rolled back" in err


def test_reconcile_asks_dagster_whether_a_run_is_applying_it(
    cli_state: StateStore, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg
    from dagster._core.test_utils import create_run_for_test

    from optiinfra_assets.jobs import recommendation_executor_job

    half_migrated(cli_state)
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        create_run_for_test(
            instance,
            job_name=recommendation_executor_job.name,
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "rec-spot"},
        )

    code, out, err = run(capsys, "executions", "reconcile", "--json")

    assert code == 0, err
    report = json.loads(out)
    assert report["dagster_runs"] is True
    (finding,) = [f for f in report["findings"] if f["subject"] == "rec-spot"]
    assert (finding["action"], finding["found"]) == ("wait", "a run is applying it")
    assert spot(cli_state) > 0 and cli_state.get_execution("rec-spot").status is ExecutionStatus.RUNNING
    code, _, err = run(capsys, "executions", "rollback", "rec-spot", "--by", "bob", "--comment", "stop")
    assert code == 2 and "being applied by a run" in err


def test_a_change_executing_without_a_record_is_listed_until_reconciled(
    cli_state: StateStore, capsys
) -> None:
    cli_state.set_recommendation_status(
        "rec-spot", RecommendationStatus.EXECUTING, expected=[RecommendationStatus.APPROVED]
    )
    code, out, _ = run(capsys, "executions", "--json")
    assert code == 0
    [row] = [r for r in json.loads(out) if r["recommendation_id"] == "rec-spot"]
    assert row["status"] == "unrecorded" and "reconcile" in row["reason"]

    code, out, _ = run(capsys, "executions", "reconcile", "--json")

    assert code == 0
    [finding] = [f for f in json.loads(out)["findings"] if f["subject"] == "rec-spot"]
    assert finding["action"] == "mark_failed"
    assert cli_state.get_recommendation("rec-spot").status is RecommendationStatus.FAILED
    assert [
        r for r in json.loads(run(capsys, "executions", "--json")[1]) if r["recommendation_id"] == "rec-spot"
    ] == []
