"""The Dagster layer end to end, on real engines: materialize the graph in a test instance, decide
through the UI job, let the approval sensor launch the executor, roll out and roll back.
Runs once on SQLite and once on PostgreSQL (the `state_url` fixture)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from optiinfra_assets import definitions
from optiinfra_assets.agents import DETECTORS
from optiinfra_assets.assets.analysis import agent_analysis
from optiinfra_assets.assets.baselines import BASELINE_ASSETS
from optiinfra_assets.assets.executions import change_executions
from optiinfra_assets.assets.metrics import METRIC_CHECKS, fleet_inventory, raw_metrics
from optiinfra_assets.assets.registry import agent_registry
from optiinfra_assets.models import (
    ExecutionStatus,
    Fault,
    FaultKind,
    Lifecycle,
    RecommendationStatus,
)
from optiinfra_assets.notifications import FINDING_ACTION
from optiinfra_assets.partitions import recommendation_partitions
from optiinfra_assets.workflow import decide
from resources.dagster_resources import (
    FleetResource,
    StateStoreResource,
)
from resources.state_store import StateStore
from sensors.approvals import approval_sensor, execution_failure_sensor
from sensors.refresh import metrics_refresh_sensor

ANALYSIS = [*BASELINE_ASSETS.values(), agent_registry, agent_analysis]
GRAPH = [fleet_inventory, raw_metrics, *ANALYSIS, change_executions]


class Automation:
    """The declared automation conditions evaluated tick after tick, as automation_sensor does."""

    def __init__(self, resources: dict[str, object]) -> None:
        self.defs = dg.Definitions(assets=GRAPH, resources=resources)
        self.cursor = None

    def requested(self, instance: dg.DagsterInstance) -> set[str]:
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if r.true_subset.size}


@pytest.fixture
def resources(tmp_path: Path, state_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The definitions' own resource mapping, pointed at this test's stores through the OPTIINFRA_*
    variables it binds (two days of history at a 2-minute step keep the test quick)."""
    env = {
        "OPTIINFRA_HOME": str(tmp_path / "home"),
        "OPTIINFRA_DATABASE_URL": state_url,
        "OPTIINFRA_SEED": "7",
        "OPTIINFRA_BACKFILL_DAYS": "2",
        "OPTIINFRA_BACKFILL_STEP_S": "120",
        "OPTIINFRA_ROLLOUT_SOAK_S": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return definitions.resources()


@pytest.fixture
def state(state_url: str) -> StateStore:
    """The same relational store, opened directly to inspect what the graph did."""
    store = StateStore(state_url)
    store.migrate()
    return store


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    assert events, f"{asset} was not materialized"
    return {k: v.value for k, v in events[-1].materialization.metadata.items()}


def _approve(state: StateStore, rec_id: str) -> None:
    """A person's decision (the portal and the CLI both call workflow.decide; the Dagster UI has no
    approval job, since it cannot say who is deciding)."""
    decide(state, rec_id, "approve", "alice", "ok", via="ui")


def _launch(
    instance: dg.DagsterInstance, resources: dict[str, object], cursor: str | None
) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, resources={"state_store": resources["state_store"]}, cursor=cursor
    )
    result = approval_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


@pytest.mark.slow
def test_graph_recommends_executes_and_rolls_back(resources: dict[str, object], state: StateStore) -> None:
    with dg.instance_for_test() as instance:
        # No metrics yet: automation does not start the analysis; the metrics sensor asks for a run.
        automation = Automation(resources)
        assert not automation.requested(instance) & {
            "performance_baselines",
            "spot_migration_recommendations",
        }
        assert isinstance(metrics_refresh_sensor(dg.build_sensor_context(instance=instance)), dg.RunRequest)

        collected = dg.materialize(
            [fleet_inventory, raw_metrics, *METRIC_CHECKS], resources=resources, instance=instance
        )
        assert collected.success
        perf = _metadata(collected, "performance_metrics")
        assert perf["rows_accepted"] > 10_000 and perf["rows_quarantined"] == 0 and perf["backfill"] is True
        assert "acme" in str(perf["per_customer"])
        checks = collected.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks), [c.description for c in checks if not c.passed]

        # Metrics exist: automation asks for the baselines at once (they are missing), not waiting for cron.
        assert "performance_baselines" in automation.requested(instance)
        analysed = dg.materialize(ANALYSIS, resources=resources, instance=instance)
        assert analysed.success
        assert _metadata(analysed, "quality_baselines")["baseline_rows"] > 0
        registry = _metadata(analysed, "agent_registry")
        assert registry["agents"] == 4
        recs = _metadata(analysed, "spot_migration_recommendations")
        assert recs["pending"] >= 1
        # High and medium findings are recorded once each for the notifications (and the live feed).
        noteworthy = {
            (det.name, str(row.data["deployment_id"]), str(row.data["metric"]))
            for det in DETECTORS
            if not isinstance(table := _metadata(analysed, det.asset_name)["table"], str)
            for row in table.records
            if row.data["severity"] in ("high", "medium")
        }
        assert noteworthy  # the sandbox has an idle GPU and a budget at risk
        recorded = [e for e in state.list_audit(limit=100_000) if e.action == FINDING_ACTION]
        assert {(e.detail["detector"], e.detail["deployment_id"], e.detail["metric"]) for e in recorded} == (
            noteworthy
        )

        pending = state.list_recommendations(status="pending", kind="spot_migration")
        partitions = instance.get_dynamic_partitions(recommendation_partitions.name)
        assert {r.id for r in pending} <= set(partitions)
        every = state.list_recommendations()
        assert any(r.deployment_id == "acme-chat-8b" for r in pending), [
            (r.deployment_id, r.status, r.status_reason) for r in every
        ]
        first = next(r for r in pending if r.deployment_id == "acme-chat-8b")
        assert {v.agent for v in first.validations} == {"performance", "resource", "application"}
        assert first.risk_assessment is not None and "deterministic" in first.risk_assessment.method

        # A person decides; the sensor launches exactly one run for the decision.
        _approve(state, first.id)
        launched = _launch(instance, resources, cursor=None)
        # Changes a written policy approved during the analysis (the sandbox has such customers) are
        # launched in the same tick; the person's decision gets exactly one run.
        policy_approved = {r.id for r in state.list_recommendations(status="approved") if r.id != first.id}
        requests = {r.partition_key: r for r in launched.run_requests or []}
        assert set(requests) == {first.id} | policy_approved
        assert requests[first.id].tags["dagster/max_runtime"] == "1800"
        assert requests[first.id].tags["optiinfra/deployment"] == first.deployment_id  # findable in the UI
        assert _launch(instance, resources, cursor=launched.cursor).run_requests == []

        executed = dg.materialize(
            [change_executions], partition_key=first.id, resources=resources, instance=instance
        )
        assert executed.success
        meta = _metadata(executed, "change_executions")
        assert meta["status"] == "succeeded" and meta["stage"] == 100
        assert [c.passed for c in executed.get_asset_check_evaluations()] == [True]
        spot = [i for i in state.list_instances(first.deployment_id) if i.lifecycle is Lifecycle.SPOT]
        assert len(spot) == state.get_deployment(first.deployment_id).replicas
        assert state.get_recommendation(first.id).status is RecommendationStatus.EXECUTED

        # A second approved change on a deployment whose quality drops on spot: automatic rollback.
        second = next(r for r in pending if r.id != first.id and r.status is RecommendationStatus.PENDING)
        state.add_fault(
            Fault(
                deployment_id=second.deployment_id,
                kind=FaultKind.QUALITY_DEGRADATION,
                params={"drop_pct": 15, "scope": "spot"},
                created_at=first.created_at,
            )
        )
        before = {i.id for i in state.list_instances(second.deployment_id)}
        _approve(state, second.id)
        rolled = dg.materialize(
            [change_executions], partition_key=second.id, resources=resources, instance=instance
        )
        meta = _metadata(rolled, "change_executions")
        # The A/B test between stages (canary vs control), or the baseline at the last stage.
        reason = str(meta["reason"])
        assert meta["rolled_back"] is True and ("A/B degraded" in reason or "baseline" in reason)
        # The rolled-back execution is visible as such in the Dagster UI: its check fails.
        (not_rolled_back,) = rolled.get_asset_check_evaluations()
        assert not not_rolled_back.passed and not_rolled_back.check_name == "not_rolled_back"
        execution = state.get_execution(second.id)
        assert execution is not None and execution.status is ExecutionStatus.ROLLED_BACK
        after = state.list_instances(second.deployment_id)
        assert all(i.lifecycle is Lifecycle.ON_DEMAND for i in after) and len(after) == len(before)


def test_executor_refuses_an_unapproved_change_and_failure_is_recorded(
    resources: dict[str, object], state: StateStore
) -> None:
    with dg.instance_for_test() as instance:
        assert dg.materialize([fleet_inventory, raw_metrics], resources=resources, instance=instance).success
        assert dg.materialize(ANALYSIS, resources=resources, instance=instance).success
        rec = state.list_recommendations(status="pending")[0]
        refused = dg.materialize(
            [change_executions],
            partition_key=rec.id,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert not refused.success
        assert state.get_execution(rec.id) is None, "nothing may change without approval"
        assert state.get_recommendation(rec.id).status is RecommendationStatus.PENDING

        failure = next(e for e in refused.all_events if e.event_type_value == "PIPELINE_FAILURE")
        run = instance.get_run_by_id(refused.run_id)
        assert run is not None
        context = dg.build_run_status_sensor_context(
            sensor_name="execution_failure_sensor",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run,
            resources={"state_store": resources["state_store"], "fleet": resources["fleet"]},
        ).for_run_failure()
        assert list(execution_failure_sensor(context) or []) == []  # nothing was running: nothing to resume
        assert [e.action for e in state.list_audit(rec.id)][-1] == "executor_run_failed"


def test_dagster_storage_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    """Dagster's own storage (runs, event log, schedules) on dagster-postgres."""
    url = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    resources = {
        "state_store": StateStoreResource(home=str(tmp_path)),
        "fleet": FleetResource(seed=3, backfill_days=1, backfill_step_s=600),
    }
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert dg.materialize([fleet_inventory], resources=resources, instance=instance).success
        assert instance.get_latest_materialization_event(fleet_inventory.key) is not None


def test_definitions_load_the_way_make_run_does(tmp_path: Path) -> None:
    """`dagster definitions validate` on workspace.yaml, in a fresh process, with only the defaults."""
    root = Path(__file__).resolve().parents[1]
    env = {
        "PATH": str(Path(sys.executable).parent),
        "DAGSTER_HOME": str(tmp_path),
        "HOME": str(tmp_path),
        "OPTIINFRA_HOME": str(tmp_path / "home"),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    from optiinfra_assets.definitions import defs

    repo = defs.get_repository_def()
    assert {s.name for s in repo.sensor_defs} == {
        "metrics_refresh_sensor",
        "automation_sensor",
        "approval_sensor",
        "execution_failure_sensor",
        "notifications_sensor",
    }
    assert all(s.default_status is dg.DefaultSensorStatus.RUNNING for s in repo.sensor_defs)
    assert all(s.default_status is dg.DefaultScheduleStatus.RUNNING for s in repo.schedule_defs)
    assert {j.name for j in repo.get_all_jobs()} >= {
        "metrics_refresh_job",
        "analysis_refresh_job",
        "recommendation_executor_job",
    }
    assert "approve_recommendation_job" not in {j.name for j in repo.get_all_jobs()}  # anonymous approvals


@pytest.mark.parametrize("config", ["dagster.yaml", "deploy/dagster-postgres.yaml"])
def test_instance_configs_are_valid(
    config: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance files `make run` copies to DAGSTER_HOME load, run coordinator included."""
    import yaml

    if "postgres" in config:
        url = request.getfixturevalue("postgres_url")
        monkeypatch.setenv("OPTIINFRA_DAGSTER_PG_URL", url.replace("postgresql+psycopg2://", "postgresql://"))
    overrides = yaml.safe_load((Path(__file__).resolve().parents[1] / config).read_text())
    with dg.instance_for_test(overrides=overrides) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
