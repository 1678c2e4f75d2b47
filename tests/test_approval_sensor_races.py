"""The approval sensor finds every approved decision without a run, whatever order approvals committed in
(issue 12): on PostgreSQL an id is handed out at INSERT and becomes visible at COMMIT, so #47 can be seen
before #46 exists for other sessions; a high-water mark over ids then skips #46 for ever. Real engines,
a real Dagster test instance; the delayed commit is a second session's transaction held open."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.test_utils import create_run_for_test
from test_state_store import NOW, _rec, _seed

from optiinfra_assets.jobs import recommendation_executor_job
from resources.dagster_resources import StateStoreResource
from resources.state_store import StateStore
from sensors.approvals import REREQUEST_AFTER_S, approval_sensor, run_key


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _store(url: str) -> StateStore:
    state = StateStore(url)
    state.migrate()
    _seed(state)
    for n in (46, 47):  # two kinds, so that both may be open on the one deployment
        assert state.add_recommendation(_rec(f"rec-{n}", kind=f"kind_{n}"))
    return state


def tick(instance: dg.DagsterInstance, url: str, tmp_path: Path, cursor: str | None) -> dg.SensorResult:
    resource = StateStoreResource(home=str(tmp_path), database_url=url)
    result = approval_sensor(
        dg.build_sensor_context(instance=instance, resources={"state_store": resource}, cursor=cursor)
    )
    assert isinstance(result, dg.SensorResult)
    return result


def launched(result: dg.SensorResult) -> list[str]:
    return [r.partition_key for r in result.run_requests or []]


def approve(state: StateStore, rec_id: str) -> int:
    return state.decide(rec_id, "approve", "alice", "ok", via="cli", now=NOW).id


def test_an_approval_committed_after_a_later_one_is_launched_postgres(
    postgres_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    state = _store(postgres_url)
    held, release = threading.Event(), threading.Event()

    @sa.event.listens_for(state.engine, "after_cursor_execute")
    def _hold(conn, cursor, statement, *_: object) -> None:
        # The approval row exists, uncommitted, its id taken: the transaction goes no further for now.
        if threading.current_thread().name == "late" and statement.lstrip().upper().startswith(
            "INSERT INTO APPROVALS"
        ):
            held.set()
            assert release.wait(60)

    late = threading.Thread(target=approve, args=(state, "rec-46"), name="late")
    late.start()
    try:
        assert held.wait(60), "the first approval never reached its commit"
        id_47 = approve(state, "rec-47")

        first = tick(instance, postgres_url, tmp_path, None)
        assert launched(first) == ["rec-47"]
    finally:
        release.set()
        late.join(60)
    id_46 = state.get_approval("rec-46").id
    assert id_46 < id_47  # committed after #47, numbered before it

    second = tick(instance, postgres_url, tmp_path, first.cursor)
    assert launched(second) == ["rec-46"]
    assert [r.run_key for r in second.run_requests] == [f"execute-rec-46-approval-{id_46}"]
    assert launched(tick(instance, postgres_url, tmp_path, second.cursor)) == []


def test_a_cursor_past_an_unlaunched_approval_hides_nothing(
    state_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    state = _store(state_url)
    approve(state, "rec-46")
    id_47 = approve(state, "rec-47")
    # The old sensor's cursor (the highest approval id seen) past #46, which was never launched.
    result = tick(instance, state_url, tmp_path, str(id_47))
    assert sorted(launched(result)) == ["rec-46", "rec-47"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["rec-46", "rec-47"]


def test_a_decision_is_launched_once(state_url: str, instance: dg.DagsterInstance, tmp_path: Path) -> None:
    state = _store(state_url)
    approval = state.get_approval("rec-46") or state.decide(
        "rec-46", "approve", "alice", "ok", via="cli", now=NOW
    )
    state.decide("rec-47", "reject", "bob", "no", via="cli", now=NOW)  # rejected: never launched

    first = tick(instance, state_url, tmp_path, None)
    assert launched(first) == ["rec-46"]
    assert launched(tick(instance, state_url, tmp_path, first.cursor)) == []  # requested, not yet a run

    # The daemon made the run: even with the cursor lost, the instance says it exists.
    create_run_for_test(
        instance,
        job_name=recommendation_executor_job.name,
        tags={"dagster/run_key": run_key(approval), "dagster/partition": "rec-46"},
    )
    after_run = tick(instance, state_url, tmp_path, None)
    assert launched(after_run) == [] and json.loads(after_run.cursor) == {}

    # Once the executor started it, it is no longer awaiting a run at all.
    state.start_execution("rec-46", "run-1", before=_rec().current, now=NOW)
    assert state.approvals_awaiting_execution() == []


def test_a_request_the_instance_never_shows_is_repeated_under_its_run_key(
    state_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    state = _store(state_url)
    approve(state, "rec-46")
    first = tick(instance, state_url, tmp_path, None)
    stale = {key: at - REREQUEST_AFTER_S - 1 for key, at in json.loads(first.cursor).items()}

    again = tick(instance, state_url, tmp_path, json.dumps(stale))

    assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
