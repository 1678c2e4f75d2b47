"""The relational store on SQLite and PostgreSQL: migrations, fleet, the decision gate, audit log."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from optiinfra_assets.catalog import default_config
from optiinfra_assets.models import (
    Customer,
    Decision,
    Deployment,
    Estimate,
    ExecutionStatus,
    Instance,
    InstanceState,
    Lifecycle,
    Recommendation,
    RecommendationStatus,
    Risk,
    UnregisteredEvidence,
)
from resources.errors import StoreUnavailableError
from resources.state_store import (
    AlreadyDecidedError,
    ExpiredRecommendationError,
    NotApprovableError,
    StateStore,
    UnknownRecommendationError,
)

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _seed(state: StateStore) -> None:
    state.upsert_customer(
        Customer(id="acme", name="Acme", slo_p95_latency_ms=2000, min_monthly_savings_usd=100)
    )
    state.upsert_deployment(
        Deployment(
            id="acme-chat",
            customer_id="acme",
            model="Llama-3.1-8B",
            instance_type="g6e.xlarge",
            replicas=2,
            base_requests_per_s=4,
        )
    )
    state.add_instances(
        [
            Instance(
                id=f"i-{n}",
                deployment_id="acme-chat",
                instance_type="g6e.xlarge",
                lifecycle=Lifecycle.ON_DEMAND,
                launched_at=NOW,
            )
            for n in range(2)
        ]
    )


CONFIG = default_config("g6e.xlarge", 2)


def _rec(rec_id: str = "rec-1", deployment: str = "acme-chat", **kw: object) -> Recommendation:
    values: dict[str, object] = dict(
        id=rec_id,
        kind="spot_migration",
        customer_id="acme",
        deployment_id=deployment,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=24),
        current=CONFIG,
        desired=CONFIG.model_copy(update={"on_demand_replicas": 0, "spot_replicas": 2}),
        estimate=Estimate(monthly_savings_usd=1234.5),
        risk=Risk.LOW,
        risk_score=0.1,
        summary="move to spot",
        evidence=UnregisteredEvidence(kind="store_test", note="kept as given"),
    )
    values.update(kw)
    return Recommendation.model_validate(values)


def test_migrate_is_idempotent(state: StateStore) -> None:
    from resources.state_store import MIGRATIONS

    latest = MIGRATIONS[-1][0]
    assert state.migrate() == latest
    assert state.migrate() == latest


def test_fleet_round_trip(state: StateStore) -> None:
    _seed(state)
    assert [c.id for c in state.list_customers()] == ["acme"]
    assert state.get_deployment("acme-chat").replicas == 2
    state.end_instance("i-0", InstanceState.INTERRUPTED, NOW + timedelta(minutes=5))
    running = state.list_instances("acme-chat")
    assert [i.id for i in running] == ["i-1"]
    everything = state.list_instances("acme-chat", include_ended=True)
    ended = next(i for i in everything if i.id == "i-0")
    assert ended.state is InstanceState.INTERRUPTED and ended.ended_at == NOW + timedelta(minutes=5)
    assert state.instance_index() == {"i-0": ("acme", "acme-chat"), "i-1": ("acme", "acme-chat")}
    with pytest.raises(KeyError, match="unknown deployment 'nope'"):
        state.get_deployment("nope")


def test_one_open_recommendation_per_kind_and_deployment(state: StateStore) -> None:
    _seed(state)
    assert state.add_recommendation(_rec("rec-1"))
    assert not state.add_recommendation(_rec("rec-2"))
    open_rec = state.open_recommendation("spot_migration", "acme-chat")
    assert open_rec is not None and open_rec.id == "rec-1"
    state.decide("rec-1", Decision.REJECT, "alice", "not now", via="cli", now=NOW)
    assert state.add_recommendation(_rec("rec-3")), "a rejected recommendation no longer blocks a new one"


def test_decide_once_and_audit(state: StateStore) -> None:
    _seed(state)
    state.add_recommendation(_rec())
    approval = state.decide("rec-1", "approve", "alice", "ok", via="cli", now=NOW)
    assert approval.decision is Decision.APPROVE and approval.id >= 1
    rec = state.get_recommendation("rec-1")
    assert rec.status is RecommendationStatus.APPROVED and rec.decided_by == "alice"
    with pytest.raises(AlreadyDecidedError, match="already approved"):
        state.decide("rec-1", "reject", "bob", "no", via="cli", now=NOW)
    with pytest.raises(UnknownRecommendationError, match="unknown recommendation 'rec-x'"):
        state.decide("rec-x", "approve", "bob", "", via="cli", now=NOW)
    actions = [(e.actor, e.action) for e in state.list_audit("rec-1")]
    assert actions == [("agent:spot_migration", "recommend"), ("alice", "approve")]
    assert [a.recommendation_id for a in state.approvals_since(0)] == ["rec-1"]
    assert state.approvals_since(approval.id) == []


def test_expired_and_blocked_are_refused(state: StateStore) -> None:
    _seed(state)
    state.add_recommendation(_rec("rec-old", expires_at=NOW - timedelta(minutes=1)))
    with pytest.raises(ExpiredRecommendationError, match="expired"):
        state.decide("rec-old", "approve", "alice", "", via="cli", now=NOW)
    assert state.get_recommendation("rec-old").status is RecommendationStatus.EXPIRED
    state.add_recommendation(_rec("rec-b", status=RecommendationStatus.BLOCKED))
    with pytest.raises(NotApprovableError, match="blocked"):
        state.decide("rec-b", "approve", "alice", "", via="cli", now=NOW)
    assert state.approvals_since(0) == []


def test_racing_approvals_make_one_decision(state: StateStore) -> None:
    _seed(state)
    state.add_recommendation(_rec())
    results: list[str] = []

    def approve(who: str) -> None:
        try:
            state.decide("rec-1", "approve", who, "race", via="cli", now=NOW)
            results.append("ok")
        except AlreadyDecidedError:
            results.append("refused")

    threads = [threading.Thread(target=approve, args=(f"user{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["refused"] * 5
    assert len(state.approvals_since(0)) == 1


def test_execution_is_created_once(state: StateStore) -> None:
    _seed(state)
    state.add_recommendation(_rec())
    first = state.start_execution("rec-1", "run-a", CONFIG, NOW)
    first.stage = 10
    state.save_execution(first)
    again = state.start_execution("rec-1", "run-b", CONFIG, NOW)
    assert again.run_id == "run-a" and again.stage == 10 and again.status is ExecutionStatus.RUNNING


def test_finished_changes_are_the_succeeded_executions_since_with_their_recommendations(
    state: StateStore,
) -> None:
    _seed(state)
    for rec_id, status, finished in (
        ("rec-old", ExecutionStatus.SUCCEEDED, NOW - timedelta(days=9)),
        ("rec-new", ExecutionStatus.SUCCEEDED, NOW - timedelta(hours=2)),
        ("rec-back", ExecutionStatus.ROLLED_BACK, NOW - timedelta(hours=1)),
    ):
        assert state.add_recommendation(_rec(rec_id, kind=f"kind-{rec_id}"))
        execution = state.start_execution(rec_id, f"run-{rec_id}", CONFIG, NOW - timedelta(days=10))
        execution.status, execution.finished_at = status, finished
        state.save_execution(execution)
    [(execution, rec)] = state.finished_changes(NOW - timedelta(days=7))
    assert rec.id == execution.recommendation_id == "rec-new" and rec.kind == "kind-rec-new"
    assert execution.finished_at == NOW - timedelta(hours=2) and execution.before == CONFIG


def test_audit_log_is_append_only(state: StateStore) -> None:
    state.audit("alice", "note", "test", "x", {"a": 1})
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), state.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_log SET actor = 'mallory'")
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), state.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_log")
    assert [e.actor for e in state.list_audit("x")] == ["alice"]


def test_unreachable_database_names_the_masked_url() -> None:
    store = StateStore("postgresql+psycopg2://alice:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(StoreUnavailableError) as info:
        store.migrate()
    message = str(info.value)
    assert "alice:***@127.0.0.1:1/nowhere" in message and "s3cret" not in message


def test_migration_2_gives_old_deployments_a_config(state_url: str) -> None:
    """A store at version 1 (deployments without configs) migrates to configs from the catalog."""
    import sqlalchemy as sa

    from resources import state_store as module

    store = StateStore(state_url)
    with store.engine.begin() as conn:
        module.MIGRATIONS[0][1](conn)
        for column in ("config", "rollout"):
            conn.exec_driver_sql(f"ALTER TABLE deployments DROP COLUMN {column}")
        conn.exec_driver_sql("ALTER TABLE instances DROP COLUMN engine")
        conn.execute(module.schema_migrations.insert().values(version=1, applied_at=NOW))
        conn.execute(
            module.customers.insert().values(
                id="acme",
                name="Acme",
                slo_p95_latency_ms=1000.0,
                min_monthly_savings_usd=0.0,
                allow_spot=True,
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO deployments (id, customer_id, model, instance_type, replicas, engine, "
                "kv_cache_dtype, base_requests_per_s) VALUES ('old', 'acme', 'Llama-3.1-70B', "
                "'p4de.24xlarge', 2, 'vllm', 'fp16', 1.0)"
            )
        )
    assert store.migrate() == module.MIGRATIONS[-1][0]
    config = store.get_deployment("old").config
    assert config.instance_type == "p4de.24xlarge" and config.on_demand_replicas == 2
    assert config.engine.tensor_parallel_size == 8  # all of the instance's GPUs, as before
    store.dispose()
