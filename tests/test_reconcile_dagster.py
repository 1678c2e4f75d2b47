"""The reconciler's Dagster side on real engines: the failure sensor rolls back after the last resume,
`reconcile_job` heals in a Dagster run, and its schedule asks for one run at a time."""

from __future__ import annotations

import dagster as dg
import pytest
from test_executions_cli import DEP, cli_state, half_migrated, spot  # noqa: F401

from optiinfra_assets import definitions
from optiinfra_assets.models import ExecutionStatus, RecommendationStatus
from resources.state_store import StateStore
from resources.targets import SandboxTarget, interrupt_spot_instance
from sensors.approvals import MAX_RESUMES, execution_failure_sensor
from sensors.reconcile import executor_run_facts, reconcile_job, reconcile_schedule


@pytest.fixture
def resources(cli_state: StateStore) -> dict[str, object]:  # noqa: F811 (the fixture above)
    return definitions.resources()


@dg.op
def worker_dies() -> None:
    raise RuntimeError("run worker killed")


@dg.job
def dying_executor() -> None:
    worker_dies()


def test_the_last_death_rolls_back_and_marks_both_failed(cli_state: StateStore, resources) -> None:  # noqa: F811
    half_migrated(cli_state)
    with dg.instance_for_test() as instance:
        tags = {"dagster/partition": "rec-spot", "optiinfra/resume": str(MAX_RESUMES)}
        died = dying_executor.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        assert not died.success
        failure = next(e for e in died.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = dg.build_run_status_sensor_context(
            sensor_name="execution_failure_sensor",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(died.run_id),
            resources={"state_store": resources["state_store"], "fleet": resources["fleet"]},
        ).for_run_failure()

        assert list(execution_failure_sensor(context) or []) == []  # no more resumes

        facts = executor_run_facts(instance, ["rec-spot"])
    assert facts == {}  # a run of another job is not the executor's
    assert spot(cli_state) == 0
    execution = cli_state.get_execution("rec-spot")
    assert execution.status is ExecutionStatus.FAILED
    assert f"executor died {MAX_RESUMES + 1} times (last at the 50% stage)" in execution.reason
    assert "restored acme-chat-8b" in execution.reason
    assert cli_state.get_recommendation("rec-spot").status is RecommendationStatus.FAILED


def test_reconcile_job_heals_a_spot_loss_after_the_rollout(cli_state: StateStore, resources) -> None:  # noqa: F811
    rec = cli_state.get_recommendation("rec-spot")
    SandboxTarget(cli_state, 1).apply(DEP, rec.desired, 1.0)
    cli_state.set_recommendation_status(
        rec.id, RecommendationStatus.EXPIRED, expected=[RecommendationStatus.APPROVED]
    )
    interrupt_spot_instance(cli_state, DEP, rec.created_at)
    with dg.instance_for_test() as instance:
        request = reconcile_schedule(dg.build_schedule_context(instance=instance))
        assert isinstance(request, dg.RunRequest)

        result = reconcile_job.execute_in_process(
            resources={"workflow": resources["workflow"]}, instance=instance
        )

        assert result.success
        [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = output.event_specific_data.metadata
        assert metadata["acted"].value >= 1 and metadata["errors"].value == 0
    assert spot(cli_state) == rec.desired.replicas


def test_a_resumed_run_keeps_the_tags_that_find_it_by_deployment(cli_state: StateStore, resources) -> None:  # noqa: F811
    half_migrated(cli_state)
    with dg.instance_for_test() as instance:
        died = dying_executor.execute_in_process(
            instance=instance, tags={"dagster/partition": "rec-spot"}, raise_on_error=False
        )
        failure = next(e for e in died.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = dg.build_run_status_sensor_context(
            sensor_name="execution_failure_sensor",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(died.run_id),
            resources={"state_store": resources["state_store"], "fleet": resources["fleet"]},
        ).for_run_failure()
        (resume,) = list(execution_failure_sensor(context) or [])
    rec = cli_state.get_recommendation("rec-spot")
    assert resume.partition_key == "rec-spot" and resume.tags["optiinfra/resume"] == "1"
    assert resume.tags["optiinfra/deployment"] == rec.deployment_id == DEP
    assert (resume.tags["optiinfra/kind"], resume.tags["optiinfra/customer"]) == (rec.kind, rec.customer_id)
