"""The audit log's hash chain (issue 12), on SQLite and PostgreSQL: a forged backdated INSERT, an edited
approval, a dropped trigger and a removed tail are each reported as the first broken link."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from optiinfra_assets import cli
from optiinfra_assets.catalog import default_config
from optiinfra_assets.models import Customer, Estimate, Recommendation, Risk, UnregisteredEvidence
from resources.state_store import MIGRATIONS, StateStore, schema_migrations

NOW = datetime.now(UTC).replace(microsecond=0)
CONFIG = default_config("g6e.xlarge", 2)


def _rec(rec_id: str) -> Recommendation:
    return Recommendation.model_validate(
        dict(
            id=rec_id,
            kind="spot_migration",
            customer_id="acme",
            deployment_id=f"dep-{rec_id}",
            created_at=NOW,
            expires_at=NOW + timedelta(hours=24),
            current=CONFIG,
            desired=CONFIG.model_copy(update={"on_demand_replicas": 0, "spot_replicas": 2}),
            estimate=Estimate(monthly_savings_usd=100.0),
            risk=Risk.LOW,
            risk_score=0.1,
            summary="move to spot",
            evidence=UnregisteredEvidence(kind="audit_test", note="n/a"),
        )
    )


def _activity(state: StateStore) -> None:
    state.upsert_customer(
        Customer(id="acme", name="Acme", slo_p95_latency_ms=2000, min_monthly_savings_usd=100)
    )
    for n in range(3):
        assert state.add_recommendation(_rec(f"rec-{n}"))
    state.decide("rec-0", "approve", "alice", "ok", via="cli")
    state.decide("rec-1", "reject", "bob", "no", via="cli")
    state.audit("cli", "inject_fault", "deployment", "dep-rec-2", {"drop_pct": 12.5})


def _sql(state: StateStore, statement: str, **params: object) -> None:
    with state.engine.begin() as conn:
        conn.execute(sa.text(statement), params)


def _drop_triggers(state: StateStore) -> None:
    if state.engine.dialect.name == "postgresql":
        _sql(state, "DROP TRIGGER audit_log_append_only ON audit_log")
    else:
        _sql(state, "DROP TRIGGER audit_log_no_update")
        _sql(state, "DROP TRIGGER audit_log_no_delete")


def test_an_untouched_log_verifies(state: StateStore) -> None:
    _activity(state)
    result = state.verify_audit()
    assert result.ok, result.problem
    assert (result.entries, result.approvals) == (6, 2)


def test_a_forged_backdated_insert_is_the_first_broken_link(state: StateStore) -> None:
    _activity(state)
    _sql(
        state,
        "INSERT INTO audit_log (at, actor, action, entity_type, entity_id, detail) "
        "VALUES (:at, 'alice', 'approve', 'recommendation', 'rec-2', '{}')",
        at=NOW - timedelta(days=30),
    )
    forged_id = max(e.id for e in state.list_audit())
    state.audit("cli", "later", "deployment", "dep-rec-2", {})  # written after the forgery, chained
    result = state.verify_audit()
    assert not result.ok and result.broken_entry_id == forged_id
    assert "not chained" in (result.problem or "")


def test_a_forged_insert_with_a_made_up_hash_is_detected(state: StateStore) -> None:
    _activity(state)
    _sql(
        state,
        "INSERT INTO audit_log (at, actor, action, entity_type, entity_id, detail, seq, prev_hash, hash) "
        "VALUES (:at, 'alice', 'approve', 'recommendation', 'rec-2', '{}', 7, :prev, :h)",
        at=NOW - timedelta(days=30),
        prev="f" * 64,
        h="e" * 64,
    )
    result = state.verify_audit()
    assert not result.ok and "does not follow" in (result.problem or "")


def test_an_edited_approval_is_detected(state: StateStore) -> None:
    _activity(state)
    _sql(state, "UPDATE approvals SET decided_by = 'mallory' WHERE recommendation_id = 'rec-0'")
    result = state.verify_audit()
    assert not result.ok
    assert "approval #" in (result.problem or "") and "'rec-0'" in (result.problem or "")


def test_a_dropped_trigger_is_reported(state: StateStore) -> None:
    _activity(state)
    _drop_triggers(state)
    result = state.verify_audit()
    assert not result.ok and "trigger" in (result.problem or "")


def test_an_entry_edited_with_the_triggers_dropped_is_the_broken_link(state: StateStore) -> None:
    _activity(state)
    _drop_triggers(state)
    target = state.list_audit()[2]
    _sql(state, "UPDATE audit_log SET actor = 'mallory' WHERE id = :id", id=target.id)
    result = state.verify_audit()
    assert not result.ok and result.broken_entry_id == target.id
    assert "changed after it was written" in (result.problem or "")


def test_a_removed_tail_is_detected(state: StateStore) -> None:
    _activity(state)
    _drop_triggers(state)
    last = state.list_audit(newest_first=True, limit=1)[0]
    _sql(state, "DELETE FROM audit_log WHERE id = :id", id=last.id)
    result = state.verify_audit()
    assert not result.ok and "missing" in (result.problem or "")


def test_update_and_delete_are_still_refused(state: StateStore) -> None:
    _activity(state)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        _sql(state, "UPDATE audit_log SET actor = 'mallory'")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        _sql(state, "DELETE FROM audit_log")


def test_concurrent_writers_keep_one_chain(state: StateStore) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(10):
                state.audit(f"w{worker}", "tick", "deployment", f"d-{worker}", {"n": n})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = state.verify_audit()
    assert result.ok and result.entries == 60, result.problem


def test_newest_first_listing(state: StateStore) -> None:
    _activity(state)
    newest = state.list_audit(newest_first=True, limit=2)
    assert [e.action for e in newest] == ["inject_fault", "reject"]
    assert state.list_audit(limit=1)[0].action == "recommend"  # oldest first stays the default


def test_migration_3_chains_existing_entries_and_seals_existing_approvals(state_url: str) -> None:
    store = StateStore(state_url)
    with store.engine.begin() as conn:  # a database as it was before the chain: migrations 1 and 2
        schema_migrations.create(conn, checkfirst=True)
        for version, apply in MIGRATIONS:
            if version < 3:
                apply(conn)
                conn.execute(schema_migrations.insert().values(version=version, applied_at=NOW))
        for n in range(3):
            conn.execute(
                sa.text(
                    "INSERT INTO audit_log (at, actor, action, entity_type, entity_id, detail) "
                    "VALUES (:at, 'agent:spot', 'recommend', 'recommendation', :rec, '{}')"
                ),
                {"at": NOW, "rec": f"rec-{n}"},
            )
        conn.execute(
            sa.text(
                "INSERT INTO approvals (recommendation_id, decision, decided_by, comment, at, via) "
                "VALUES ('rec-0', 'approve', 'alice', 'ok', :at, 'cli')"
            ),
            {"at": NOW},
        )
    store.migrate()
    result = store.verify_audit()
    assert result.ok, result.problem
    assert (result.entries, result.approvals) == (4, 1)
    store.audit("cli", "after", "deployment", "d", {})
    assert store.verify_audit().ok
    store.dispose()


# ------------------------------------------------------------------------------------------- CLI


def test_cli_audit_verify_and_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path))
    monkeypatch.delenv("OPTIINFRA_DATABASE_URL", raising=False)
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    state.migrate()
    _activity(state)
    assert cli.main(["audit", "verify"]) == 0
    assert "audit log intact: 6 entries, 2 approvals sealed" in capsys.readouterr().out
    assert cli.main(["audit", "--limit", "1", "--json"]) == 0
    assert '"inject_fault"' in capsys.readouterr().out
    _sql(state, "UPDATE approvals SET comment = 'edited' WHERE recommendation_id = 'rec-1'")
    assert cli.main(["audit", "verify"]) == 1
    assert "audit log BROKEN: approval #2 of 'rec-1'" in capsys.readouterr().out
