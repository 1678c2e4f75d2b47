"""Every `optiinfra` argument bounded and validated the same on SQLite and PostgreSQL (issue 12): a bad
value exits 2 naming the argument, and changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets.cli import main
from optiinfra_assets.models import Estimate, Recommendation, RecommendationStatus, Risk, UnregisteredEvidence
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.state_store import RecommendationError, StateStore

DEPLOYMENT = "acme-chat-8b"


@pytest.fixture
def cli_state(tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", state_url)
    state = StateStore(state_url)
    state.migrate()
    now = datetime.now(UTC)
    ensure_sandbox_fleet(state, seed=1, now=now)
    dep = state.get_deployment(DEPLOYMENT)
    state.add_recommendation(
        Recommendation(
            id="rec-live",
            kind="spot_migration",
            customer_id=dep.customer_id,
            deployment_id=DEPLOYMENT,
            created_at=now - timedelta(hours=1),
            expires_at=now + timedelta(hours=24),
            current=dep.config,
            desired=dep.config.model_copy(update={"on_demand_replicas": 0, "spot_replicas": dep.replicas}),
            estimate=Estimate(monthly_savings_usd=100.0),
            risk=Risk.LOW,
            risk_score=0.2,
            summary="move to spot",
            evidence=UnregisteredEvidence(kind="cli_bounds_test"),
        )
    )
    return state


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["recommendations", "--limit", "99999999999999999999"], "argument --limit"),
        (["recommendations", "--limit", "-1"], "argument --limit"),
        (["recommendations", "--limit", "0"], "argument --limit"),
        (["audit", "--limit", "99999999999999999999"], "argument --limit"),
        (["audit", "--limit", "-1"], "argument --limit"),
        (["approve", "rec-live", "--by", "a" * 201], "argument --by: at most 200 characters"),
        (["approve", "rec-live", "--by", ""], "argument --by: must name who decides"),
        (["approve", "rec-live", "--by", "policy:auto-approve-max-risk-low"], "argument --by: 'policy:"),
        (["approve", "rec-live", "--by", "Agent:spot_migration"], "argument --by: 'Agent:"),
        (["approve", "rec-live", "--by", "system"], "argument --by: 'system' is reserved"),
        (["approve", "rec-live", "--by", "\x1b[31malice\x1b[0m"], "argument --by: control character"),
        (["reject", "rec-live", "--by", "bob", "--comment", "x" * 2001], "argument --comment"),
        (["policy", "set", "acme", "--auto-approve-max-risk", "low", "--by", ""], "argument --by"),
        (["policy", "set", "acme", "--auto-approve-max-risk", "low", "--by", "policy:x"], "argument --by"),
        (["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "nan"], "argument --drop-pct"),
        (["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "inf"], "argument --drop-pct"),
        (["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "-50"], "argument --drop-pct"),
        (["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "0"], "argument --drop-pct"),
        (["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "101"], "argument --drop-pct"),
        (["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "abc"], "argument --drop-pct"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument_and_change_nothing(
    cli_state: StateStore, capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert named in refused(capsys, *argv)
    assert cli_state.get_recommendation("rec-live").status is RecommendationStatus.PENDING
    assert cli_state.get_approval("rec-live") is None
    assert cli_state.list_faults(DEPLOYMENT) == []
    assert cli_state.get_customer("acme").auto_approve_max_risk is None


def test_the_largest_accepted_values_work_on_both_engines(
    cli_state: StateStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recommendations", "--limit", "100000", "--json"]) == 0
    assert main(["audit", "--limit", "100000"]) == 0
    by = "a" * 200
    assert main(["approve", "rec-live", "--by", by, "--comment", "c" * 2000]) == 0
    approval = cli_state.get_approval("rec-live")
    assert approval is not None and approval.by == by and len(approval.comment) == 2000
    assert main(["sandbox", "degrade-quality", DEPLOYMENT, "--drop-pct", "100"]) == 0
    assert cli_state.list_faults(DEPLOYMENT)[0].params["drop_pct"] == 100.0
    capsys.readouterr()


def test_the_store_refuses_an_overlong_actor_on_both_engines(cli_state: StateStore) -> None:
    with pytest.raises(RecommendationError, match="decided_by: at most 200 characters, got 201"):
        cli_state.decide("rec-live", "approve", "a" * 201, "", via="cli")
    assert cli_state.get_recommendation("rec-live").status is RecommendationStatus.PENDING
