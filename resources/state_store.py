"""Relational state: customers, fleet, recommendations, approvals, executions, outcomes, audit log.

SQLAlchemy Core over SQLite (embedded default) or PostgreSQL (``postgresql+psycopg2://`` URL): one set
of tables and statements for both. Schema changes are versioned migrations applied idempotently by
:meth:`StateStore.migrate`. The audit log is append-only: a trigger refuses UPDATE and DELETE on both
engines.

Concurrency rules that keep a change from being applied twice live here, in the database, not in the
callers: a decision is a conditional UPDATE (``WHERE status = 'pending'``) plus a UNIQUE approval per
recommendation; an execution is one row per recommendation; an open recommendation is unique per
(kind, deployment) through ``open_key``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from optiinfra_assets.catalog import default_config
from optiinfra_assets.models import (
    OPEN_STATUSES,
    Approval,
    AuditEntry,
    Customer,
    Decision,
    Deployment,
    DeploymentConfig,
    Execution,
    ExecutionStatus,
    Fault,
    Host,
    Instance,
    InstanceState,
    Outcome,
    Recommendation,
    RecommendationStatus,
)
from resources.audit_chain import (
    GENESIS,
    AuditVerification,
    approval_row_digest,
    entry_hash,
    row_entry_hash,
    verify_chain,
)
from resources.errors import StoreUnavailableError, mask_url

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", TS, nullable=False),
)
customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("slo_p95_latency_ms", sa.Float, nullable=False),
    sa.Column("min_monthly_savings_usd", sa.Float, nullable=False),
    sa.Column("allow_spot", sa.Boolean, nullable=False),
    sa.Column("auto_approve_max_risk", sa.String(16)),
    sa.Column("monthly_budget_usd", sa.Float),  # migration 4
    sa.Column("dedicated_hardware", sa.Boolean, nullable=False, server_default=sa.false()),  # migration 8
    sa.Column("autoscaling", sa.Boolean, nullable=False, server_default=sa.false()),  # migration 8
)
deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("customer_id", sa.String(64), sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("model", sa.String(100), nullable=False),
    sa.Column("instance_type", sa.String(64), nullable=False),
    sa.Column("replicas", sa.Integer, nullable=False),
    sa.Column("engine", sa.String(32), nullable=False),
    sa.Column("kv_cache_dtype", sa.String(16), nullable=False),
    sa.Column("base_requests_per_s", sa.Float, nullable=False),
    # The whole DeploymentConfig; instance_type and replicas above are kept in step for SQL readers.
    sa.Column("config", sa.JSON),
    sa.Column("rollout", sa.JSON),  # {"to": DeploymentConfig, "fraction": f} while a change is under way
)
instances = sa.Table(
    "instances",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("deployment_id", sa.String(64), sa.ForeignKey("deployments.id"), nullable=False, index=True),
    sa.Column("instance_type", sa.String(64), nullable=False),
    sa.Column("lifecycle", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("az", sa.String(32), nullable=False),
    sa.Column("launched_at", TS, nullable=False),
    sa.Column("ended_at", TS),
    sa.Column("engine", sa.JSON),  # the EngineConfig this instance serves with
    # A slice of a shared host (migration 9): the host and the GPUs of it the slice holds; NULL: whole instance.
    sa.Column("host_id", sa.String(64), index=True),
    sa.Column("gpus", sa.Integer),
)
# Multi-GPU instances holding slices of one or several deployments (migration 9).
hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("instance_type", sa.String(64), nullable=False),
    sa.Column("lifecycle", sa.String(16), nullable=False),
    sa.Column("dedicated_customer_id", sa.String(64)),  # NULL: any non-dedicated customer's slices
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("az", sa.String(32), nullable=False),
    sa.Column("launched_at", TS, nullable=False),
    sa.Column("ended_at", TS),
)
faults = sa.Table(
    "faults",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("deployment_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
)
recommendations = sa.Table(
    "recommendations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("estimated_monthly_savings_usd", sa.Float, nullable=False),
    sa.Column("risk", sa.String(16), nullable=False),
    sa.Column("risk_score", sa.Float, nullable=False),
    sa.Column("decided_by", sa.String(200)),
    sa.Column("decided_at", TS),
    sa.Column("decision_comment", sa.Text),
    # "kind:deployment" while the recommendation is open (pending/approved/executing), NULL after:
    # a UNIQUE index on it keeps one open recommendation per kind and deployment, race-free.
    sa.Column("open_key", sa.String(200), unique=True),
    sa.Column("body", sa.JSON, nullable=False),
)
approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("recommendation_id", sa.String(64), nullable=False, unique=True),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.String(200), nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("at", TS, nullable=False),
    sa.Column("via", sa.String(32), nullable=False),
)
executions = sa.Table(
    "executions",
    metadata,
    sa.Column("recommendation_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("finished_at", TS),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(64)),
    sa.Column("body", sa.JSON, nullable=False),
)
outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("recommendation_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("deployment_id", sa.String(64), nullable=False),
    sa.Column("rolled_back", sa.Boolean, nullable=False),
    sa.Column("realized_monthly_savings_usd", sa.Float, nullable=False),
    sa.Column("quality_delta_pct", sa.Float, nullable=False),
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("latency_p95_delta_pct", sa.Float),
    sa.Column("utilization_delta_pct", sa.Float),
    sa.Column("at", TS, nullable=False),
)
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("entity_type", sa.String(64), nullable=False),
    sa.Column("entity_id", sa.String(200), nullable=False, index=True),
    sa.Column("detail", sa.JSON, nullable=False),
    # The hash chain (migration 3, resources/audit_chain.py): position, previous entry's hash, own hash.
    sa.Column("seq", sa.BigInteger),
    sa.Column("prev_hash", sa.String(64)),
    sa.Column("hash", sa.String(64)),
)
# One row: the number of audit entries written. Each writer bumps it first, which serializes writers
# (a row lock on PostgreSQL, the write lock on SQLite) so that two entries never claim the same
# predecessor; an entry removed from the end shows as head > last seq.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)
watermarks = sa.Table(
    "watermarks",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("ts", TS, nullable=False),
)

# Per-key state a metric source keeps between collections (a scraper's previous scrape, for rates), so
# that it survives the process: every Dagster run is a new one.
source_state = sa.Table(
    "source_state",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)
# Instances a source reported that the fleet does not manage (a user's own server): their metrics are
# stored under them, and they are listed so that a person can adopt them into a deployment.
observed_instances = sa.Table(
    "observed_instances",
    metadata,
    sa.Column("instance_id", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("first_seen", TS, nullable=False),
    sa.Column("last_seen", TS, nullable=False),
)

# The customer portal (portal/): local users scoped to customers, login sessions, and each customer's
# notification channels with a record of every delivery attempt (migration 6).
portal_users = sa.Table(
    "portal_users",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.String(300)),  # NULL: signs in through OpenID Connect only
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("customers", sa.JSON, nullable=False),  # customer ids, or ["*"] for all
    sa.Column("max_risk", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
)
portal_sessions = sa.Table(
    "portal_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # sha256 of the token: a leak is not a login
    sa.Column("username", sa.String(64), nullable=False, index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False, index=True),
)
notification_channels = sa.Table(
    "notification_channels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),  # slack | pagerduty | webhook
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("routing_key", sa.String(200)),  # PagerDuty's integration key
    sa.Column("events", sa.JSON, nullable=False),  # event kinds it receives
    sa.Column("created_at", TS, nullable=False),
)
notification_deliveries = sa.Table(
    "notification_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel_id", sa.Integer, nullable=False),
    sa.Column("event_key", sa.String(200), nullable=False),
    sa.Column("event_kind", sa.String(32), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),  # delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("at", TS, nullable=False),
    sa.UniqueConstraint("channel_id", "event_key", name="uq_delivery_channel_event"),
)

_APPEND_ONLY_SQLITE = [
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
       BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
]
_APPEND_ONLY_POSTGRES = [
    """CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    """CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
       FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
]


def _migration_1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)
    statements = _APPEND_ONLY_POSTGRES if conn.dialect.name == "postgresql" else _APPEND_ONLY_SQLITE
    for statement in statements:
        conn.exec_driver_sql(statement)


def _migration_2(conn: Connection) -> None:
    """Deployment configs, per-instance engine configs, source state and observed instances.

    Migration 1 creates every table of today's metadata on a new database, so each step here checks first.
    """
    metadata.create_all(conn, checkfirst=True, tables=[source_state, observed_instances])
    inspector = sa.inspect(conn)
    added = (
        (deployments, "config", "JSON"),
        (deployments, "rollout", "JSON"),
        (instances, "engine", "JSON"),
        (outcomes, "latency_p95_delta_pct", "FLOAT"),
        (outcomes, "utilization_delta_pct", "FLOAT"),
    )
    for table, column, sql_type in added:
        if column not in {c["name"] for c in inspector.get_columns(table.name)}:
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {sql_type}")
    for row in conn.execute(sa.select(deployments).where(deployments.c.config.is_(None))).mappings():
        config = default_config(row["instance_type"], row["replicas"])
        conn.execute(
            deployments.update()
            .where(deployments.c.id == row["id"])
            .values(config=config.model_dump(mode="json"))
        )
        conn.execute(
            instances.update()
            .where(instances.c.deployment_id == row["id"], instances.c.engine.is_(None))
            .values(engine=config.engine.model_dump(mode="json"))
        )


def _migration_4(conn: Connection) -> None:
    """A monthly budget per customer (the cost agent's budget forecast); migration 1 creates the column on a
    new database, so it is added only where missing."""
    if "monthly_budget_usd" not in {c["name"] for c in sa.inspect(conn).get_columns(customers.name)}:
        conn.exec_driver_sql(f"ALTER TABLE {customers.name} ADD COLUMN monthly_budget_usd FLOAT")


def _migration_8(conn: Connection) -> None:
    """Customers' dedicated-hardware preference and autoscaling policy (the resource agent); migration 1
    creates the columns on a new database, so they are added only where missing."""
    present = {c["name"] for c in sa.inspect(conn).get_columns(customers.name)}
    for column in ("dedicated_hardware", "autoscaling"):
        if column not in present:
            ddl = f"ALTER TABLE {customers.name} ADD COLUMN {column} BOOLEAN NOT NULL DEFAULT false"
            conn.exec_driver_sql(ddl)


def _migration_6(conn: Connection) -> None:
    """The portal's users, sessions, notification channels and deliveries."""
    metadata.create_all(
        conn,
        checkfirst=True,
        tables=[portal_users, portal_sessions, notification_channels, notification_deliveries],
    )


def _append_only_triggers(conn: Connection) -> list[str]:
    """The statements that (re)create the audit log's append-only triggers on this engine."""
    return _APPEND_ONLY_POSTGRES if conn.dialect.name == "postgresql" else _APPEND_ONLY_SQLITE


def _migration_3(conn: Connection) -> None:
    """The audit log's hash chain: entries written before it are chained in id order, and every
    approval already recorded is sealed by a new entry (resources/audit_chain.py)."""
    metadata.create_all(conn, checkfirst=True, tables=[audit_head])
    present = {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}
    for column, sql_type in (("seq", "BIGINT"), ("prev_hash", "VARCHAR(64)"), ("hash", "VARCHAR(64)")):
        if column not in present:
            conn.exec_driver_sql(f"ALTER TABLE audit_log ADD COLUMN {column} {sql_type}")
    conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS ix_audit_log_seq ON audit_log (seq)")
    # Chaining the existing rows is the one UPDATE the log ever takes: the triggers are lifted for it.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
    else:
        for name in ("audit_log_no_update", "audit_log_no_delete"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    prev, seq = GENESIS, 0
    for row in conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).mappings():
        seq += 1
        digest = row_entry_hash(row, seq=seq, prev_hash=prev)
        conn.execute(
            audit_log.update().where(audit_log.c.id == row["id"]).values(seq=seq, prev_hash=prev, hash=digest)
        )
        prev = digest
    for statement in _append_only_triggers(conn):
        conn.exec_driver_sql(statement)
    if conn.scalar(sa.select(audit_head.c.seq).where(audit_head.c.id == 1)) is None:
        conn.execute(audit_head.insert().values(id=1, seq=seq))
    for approval in conn.execute(sa.select(approvals).order_by(approvals.c.id)).mappings():
        StateStore._audit(
            conn,
            "system",
            "seal_approval",
            "recommendation",
            approval["recommendation_id"],
            {"approval_id": approval["id"], "approval_sha256": approval_row_digest(approval)},
        )


def _migration_9(conn: Connection) -> None:
    """Shared hosts (consolidation's shared placements): the hosts table and each instance's host and GPUs;
    migration 1 creates them on a new database, so each is added only where missing."""
    metadata.create_all(conn, checkfirst=True, tables=[hosts])
    present = {c["name"] for c in sa.inspect(conn).get_columns(instances.name)}
    for column, sql_type in (("host_id", "VARCHAR(64)"), ("gpus", "INTEGER")):
        if column not in present:
            conn.exec_driver_sql(f"ALTER TABLE {instances.name} ADD COLUMN {column} {sql_type}")
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_instances_host_id ON {instances.name} (host_id)")


# Append new migrations here; never edit an applied one.
MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (6, _migration_6),
    (8, _migration_8),
    (9, _migration_9),
]


# Width of the actor columns (approvals.decided_by, audit_log.actor).
MAX_ACTOR_CHARS = 200


class RecommendationError(ValueError):
    """A decision that cannot be made. The message says which recommendation and why."""


class UnknownRecommendationError(RecommendationError):
    pass


class AlreadyDecidedError(RecommendationError):
    pass


class ExpiredRecommendationError(RecommendationError):
    pass


class NotApprovableError(RecommendationError):
    pass


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; every datetime we store is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _open_key(rec: Recommendation) -> str | None:
    return f"{rec.kind}:{rec.deployment_id}" if rec.status in OPEN_STATUSES else None


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def state_store_url(url: str, home: Path) -> str:
    """The configured URL, or SQLite at home/state.db when it is empty (the embedded default)."""
    return url or sqlite_url(Path(home).resolve() / "state.db")


class StateStore:
    """The relational store. ``url`` is a SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg2://...``."""

    def __init__(self, url: str) -> None:
        if url.startswith("postgresql://"):
            # SQLAlchemy 2.1 maps bare postgresql:// to psycopg 3, which we do not ship.
            url = "postgresql+psycopg2://" + url.removeprefix("postgresql://")
        self.url = url
        self.display_url = mask_url(url)
        self.engine: Engine = self._create_engine(url)

    @staticmethod
    def _create_engine(url: str) -> Engine:
        if url.startswith("sqlite"):
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Owner-only from the start (SQLite gives its -wal and -shm files the same mode).
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            engine = sa.create_engine(url, connect_args={"timeout": 30})

            @sa.event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
                # WAL + busy timeout: the daemon, the code server and each run are separate processes.
                cursor = dbapi_conn.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

            return engine
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})

    # ---- lifecycle -------------------------------------------------------------------------------

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """One transaction; an unreachable database becomes one clear StoreUnavailableError."""
        try:
            conn = self.engine.connect()
        except sa.exc.OperationalError as exc:
            raise StoreUnavailableError("state store", self.url, exc.orig or exc) from None
        with conn, conn.begin():
            yield conn

    def migrate(self) -> int:
        """Apply the migrations not applied yet; returns the schema version. Safe to call concurrently."""
        with self._begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7310027)")
            schema_migrations.create(conn, checkfirst=True)
            applied = set(conn.scalars(sa.select(schema_migrations.c.version)))
            for version, apply in MIGRATIONS:
                if version not in applied:
                    apply(conn)
                    conn.execute(schema_migrations.insert().values(version=version, applied_at=_now()))
            return max(v for v, _ in MIGRATIONS)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- fleet ----------------------------------------------------------------------------------

    def upsert_customer(self, customer: Customer) -> None:
        self._upsert(customers, customer.model_dump(mode="json"))

    def upsert_deployment(self, deployment: Deployment) -> None:
        values = deployment.model_dump(mode="json", exclude={"rollout_to", "rollout_fraction"})
        config = deployment.config
        rollout = None
        if deployment.rollout_to is not None:
            rollout = {
                "to": deployment.rollout_to.model_dump(mode="json"),
                "fraction": deployment.rollout_fraction,
            }
        values |= {
            "instance_type": config.instance_type,
            "replicas": config.replicas,
            "kv_cache_dtype": config.engine.kv_cache_dtype.value,
            "rollout": rollout,
        }
        self._upsert(deployments, values)

    @staticmethod
    def _deployment_from_row(row: sa.RowMapping) -> Deployment:
        values = dict(row)
        rollout = values.pop("rollout", None) or {}
        return Deployment.model_validate(
            values | {"rollout_to": rollout.get("to"), "rollout_fraction": rollout.get("fraction", 0.0)}
        )

    def _upsert(self, table: sa.Table, values: dict[str, Any]) -> None:
        key = values["id"]
        with self._begin() as conn:
            exists = conn.scalar(sa.select(table.c.id).where(table.c.id == key))
            if exists is None:
                conn.execute(table.insert().values(**values))
            else:
                conn.execute(table.update().where(table.c.id == key).values(**values))

    def list_customers(self) -> list[Customer]:
        with self._begin() as conn:
            rows = conn.execute(sa.select(customers).order_by(customers.c.id)).mappings()
            return [Customer.model_validate(dict(r)) for r in rows]

    def get_customer(self, customer_id: str) -> Customer:
        for customer in self.list_customers():
            if customer.id == customer_id:
                return customer
        raise KeyError(f"unknown customer '{customer_id}'")

    def list_deployments(self, customer_id: str | None = None) -> list[Deployment]:
        query = sa.select(deployments).order_by(deployments.c.id)
        if customer_id is not None:
            query = query.where(deployments.c.customer_id == customer_id)
        with self._begin() as conn:
            return [self._deployment_from_row(r) for r in conn.execute(query).mappings()]

    def get_deployment(self, deployment_id: str) -> Deployment:
        with self._begin() as conn:
            row = conn.execute(sa.select(deployments).where(deployments.c.id == deployment_id)).mappings()
            found = row.first()
        if found is None:
            raise KeyError(f"unknown deployment '{deployment_id}'")
        return self._deployment_from_row(found)

    def add_instances(self, new: Sequence[Instance]) -> None:
        if not new:
            return
        with self._begin() as conn:
            conn.execute(
                instances.insert(),
                [i.model_dump() | {"engine": i.engine.model_dump(mode="json")} for i in new],
            )

    def end_instance(self, instance_id: str, state: InstanceState, at: datetime) -> None:
        with self._begin() as conn:
            conn.execute(
                instances.update()
                .where(instances.c.id == instance_id, instances.c.state == InstanceState.RUNNING)
                .values(state=state, ended_at=at)
            )

    def list_instances(self, deployment_id: str | None = None, include_ended: bool = False) -> list[Instance]:
        query = sa.select(instances).order_by(instances.c.launched_at, instances.c.id)
        if deployment_id is not None:
            query = query.where(instances.c.deployment_id == deployment_id)
        if not include_ended:
            query = query.where(instances.c.state == InstanceState.RUNNING)
        with self._begin() as conn:
            rows = conn.execute(query).mappings()
            return [
                Instance.model_validate(
                    {
                        **r,
                        "launched_at": _utc(r["launched_at"]),
                        "ended_at": _utc(r["ended_at"]),
                        "engine": r["engine"] or {},
                    }
                )
                for r in rows
            ]

    def add_host(self, host: Host) -> None:
        with self._begin() as conn:
            conn.execute(hosts.insert().values(**host.model_dump()))

    def end_host(self, host_id: str, state: InstanceState, at: datetime) -> None:
        with self._begin() as conn:
            conn.execute(
                hosts.update()
                .where(hosts.c.id == host_id, hosts.c.state == InstanceState.RUNNING)
                .values(state=state, ended_at=at)
            )

    def list_hosts(self, include_ended: bool = False) -> list[Host]:
        query = sa.select(hosts).order_by(hosts.c.launched_at, hosts.c.id)
        if not include_ended:
            query = query.where(hosts.c.state == InstanceState.RUNNING)
        with self._begin() as conn:
            return [
                Host.model_validate(
                    {**r, "launched_at": _utc(r["launched_at"]), "ended_at": _utc(r["ended_at"])}
                )
                for r in conn.execute(query).mappings()
            ]

    def list_host_slices(self, host_id: str, include_ended: bool = False) -> list[Instance]:
        """The slices a host holds (running ones unless ``include_ended``), of every deployment."""
        return [i for i in self.list_instances(include_ended=include_ended) if i.host_id == host_id]

    def instance_index(self) -> dict[str, tuple[str, str]]:
        """instance_id -> (customer_id, deployment_id), ended instances included (late metrics are valid)."""
        query = sa.select(instances.c.id, deployments.c.customer_id, deployments.c.id).join(
            deployments, instances.c.deployment_id == deployments.c.id
        )
        with self._begin() as conn:
            return {iid: (cid, did) for iid, cid, did in conn.execute(query)}

    def slice_gpus(self) -> dict[str, int]:
        """instance_id -> the GPUs it holds of its shared host, for every slice ever launched (ended ones
        included: a slice's GPUs never change over its life, so its past cost rows are counted exactly)."""
        query = sa.select(instances.c.id, instances.c.gpus).where(instances.c.gpus.is_not(None))
        with self._begin() as conn:
            return {iid: int(gpus) for iid, gpus in conn.execute(query)}

    def add_fault(self, fault: Fault) -> int:
        values = fault.model_dump(exclude={"id"})
        with self._begin() as conn:
            return int(conn.execute(faults.insert().values(**values)).inserted_primary_key[0])

    def list_faults(self, deployment_id: str | None = None, active_only: bool = True) -> list[Fault]:
        query = sa.select(faults).order_by(faults.c.id)
        if deployment_id is not None:
            query = query.where(faults.c.deployment_id == deployment_id)
        if active_only:
            query = query.where(faults.c.active.is_(True))
        with self._begin() as conn:
            return [
                Fault.model_validate({**r, "created_at": _utc(r["created_at"])})
                for r in conn.execute(query).mappings()
            ]

    def clear_faults(self, deployment_id: str) -> int:
        with self._begin() as conn:
            result = conn.execute(
                faults.update().where(faults.c.deployment_id == deployment_id).values(active=False)
            )
            return result.rowcount

    def get_source_state(self, key: str) -> dict[str, Any] | None:
        """What a metric source kept under ``key`` at its last collection, or None."""
        with self._begin() as conn:
            return conn.scalar(sa.select(source_state.c.body).where(source_state.c.key == key))

    def put_source_state(self, key: str, body: dict[str, Any]) -> None:
        with self._begin() as conn:
            updated = conn.execute(
                source_state.update().where(source_state.c.key == key).values(body=body, updated_at=_now())
            )
            if updated.rowcount == 0:
                conn.execute(source_state.insert().values(key=key, body=body, updated_at=_now()))

    def record_observed_instance(self, instance_id: str, source: str, at: datetime) -> bool:
        """Note an instance a source reported that the fleet does not manage; True the first time."""
        with self._begin() as conn:
            updated = conn.execute(
                observed_instances.update()
                .where(observed_instances.c.instance_id == instance_id)
                .values(last_seen=at, source=source)
            )
            if updated.rowcount:
                return False
            conn.execute(
                observed_instances.insert().values(
                    instance_id=instance_id, source=source, first_seen=at, last_seen=at
                )
            )
            return True

    def list_observed_instances(self) -> list[dict[str, Any]]:
        query = sa.select(observed_instances).order_by(observed_instances.c.instance_id)
        with self._begin() as conn:
            return [
                {**r, "first_seen": _utc(r["first_seen"]), "last_seen": _utc(r["last_seen"])}
                for r in conn.execute(query).mappings()
            ]

    def get_watermark(self, key: str) -> datetime | None:
        with self._begin() as conn:
            return _utc(conn.scalar(sa.select(watermarks.c.ts).where(watermarks.c.key == key)))

    def set_watermark(self, key: str, ts: datetime) -> None:
        """Record ``ts`` under ``key``; never later than now (a future watermark would stop collection)."""
        ts = min(_utc(ts) or ts, _now())
        with self._begin() as conn:
            updated = conn.execute(watermarks.update().where(watermarks.c.key == key).values(ts=ts))
            if updated.rowcount == 0:
                conn.execute(watermarks.insert().values(key=key, ts=ts))

    # ---- recommendations ------------------------------------------------------------------------

    @staticmethod
    def _rec_columns(rec: Recommendation) -> dict[str, Any]:
        return {
            "id": rec.id,
            "kind": rec.kind,
            "customer_id": rec.customer_id,
            "deployment_id": rec.deployment_id,
            "status": rec.status,
            "created_at": rec.created_at,
            "expires_at": rec.expires_at,
            "estimated_monthly_savings_usd": rec.estimated_monthly_savings_usd,
            "risk": rec.risk,
            "risk_score": rec.risk_score,
            "decided_by": rec.decided_by,
            "decided_at": rec.decided_at,
            "decision_comment": rec.decision_comment,
            "open_key": _open_key(rec),
            "body": rec.model_dump(mode="json"),
        }

    @staticmethod
    def _rec_from_row(row: sa.RowMapping) -> Recommendation:
        # Columns are the truth for what changes after creation; the body holds the rest.
        return Recommendation.model_validate(
            {
                **row["body"],
                "status": row["status"],
                "decided_by": row["decided_by"],
                "decided_at": _utc(row["decided_at"]),
                "decision_comment": row["decision_comment"],
            }
        )

    def add_recommendation(self, rec: Recommendation) -> bool:
        """Store a new recommendation; False (nothing stored) if one of its kind is already open for
        that deployment."""
        try:
            with self._begin() as conn:
                conn.execute(recommendations.insert().values(**self._rec_columns(rec)))
                self._audit(
                    conn,
                    "agent:" + rec.kind,
                    "recommend",
                    "recommendation",
                    rec.id,
                    {"summary": rec.summary, "status": rec.status, "risk": rec.risk},
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def update_recommendation(self, rec: Recommendation) -> None:
        with self._begin() as conn:
            conn.execute(
                recommendations.update()
                .where(recommendations.c.id == rec.id)
                .values(**self._rec_columns(rec))
            )

    def get_recommendation(self, rec_id: str) -> Recommendation:
        with self._begin() as conn:
            row = (
                conn.execute(sa.select(recommendations).where(recommendations.c.id == rec_id))
                .mappings()
                .first()
            )
        if row is None:
            raise UnknownRecommendationError(f"unknown recommendation '{rec_id}'")
        return self._rec_from_row(row)

    def open_recommendation(self, kind: str, deployment_id: str) -> Recommendation | None:
        """The pending, approved or executing recommendation of this kind for the deployment, if any."""
        query = sa.select(recommendations).where(recommendations.c.open_key == f"{kind}:{deployment_id}")
        with self._begin() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else self._rec_from_row(row)

    def list_recommendations(
        self, status: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[Recommendation]:
        query = sa.select(recommendations).order_by(recommendations.c.created_at.desc(), recommendations.c.id)
        if status is not None:
            query = query.where(recommendations.c.status == RecommendationStatus(status))
        if kind is not None:
            query = query.where(recommendations.c.kind == kind)
        if limit is not None:
            query = query.limit(limit)
        with self._begin() as conn:
            return [self._rec_from_row(r) for r in conn.execute(query).mappings()]

    def count_recommendations(self) -> dict[str, int]:
        query = sa.select(recommendations.c.status, sa.func.count()).group_by(recommendations.c.status)
        with self._begin() as conn:
            return {status: n for status, n in conn.execute(query)}

    def expire_recommendations(self, now: datetime) -> list[str]:
        """Mark pending (and blocked) recommendations past their expiry as expired; returns their ids."""
        undecided = [
            RecommendationStatus.PENDING,
            RecommendationStatus.BLOCKED,
            RecommendationStatus.ESCALATED,
        ]
        with self._begin() as conn:
            expired = list(
                conn.scalars(
                    sa.select(recommendations.c.id).where(
                        recommendations.c.status.in_(undecided), recommendations.c.expires_at < now
                    )
                )
            )
            if expired:
                conn.execute(
                    recommendations.update()
                    .where(recommendations.c.id.in_(expired), recommendations.c.status.in_(undecided))
                    .values(status=RecommendationStatus.EXPIRED, open_key=None)
                )
                for rec_id in expired:
                    self._audit(conn, "system", "expire", "recommendation", rec_id, {"at": now.isoformat()})
        return expired

    def decide(
        self,
        rec_id: str,
        decision: Decision | str,
        by: str,
        comment: str,
        *,
        via: str,
        now: datetime | None = None,
    ) -> Approval:
        """Approve or reject a pending recommendation, exactly once. Raises a RecommendationError
        (unknown, already decided, expired, blocked) and changes nothing otherwise."""
        decision = Decision(decision)
        now = now or _now()
        if not by.strip():
            raise RecommendationError("decided_by: must name who decides (got an empty value)")
        if len(by) > MAX_ACTOR_CHARS:  # the column's width: PostgreSQL would refuse, SQLite store it all
            raise RecommendationError(f"decided_by: at most {MAX_ACTOR_CHARS} characters, got {len(by)}")
        rec = self.get_recommendation(rec_id)
        if rec.status == RecommendationStatus.BLOCKED:
            failed = "; ".join(f"{v.agent}: {v.detail}" for v in rec.validations if not v.passed)
            raise NotApprovableError(f"recommendation '{rec_id}' is blocked by validation ({failed})")
        if rec.status == RecommendationStatus.ESCALATED and via == "policy":
            raise NotApprovableError(
                f"recommendation '{rec_id}' is escalated to the customer ({rec.status_reason}); "
                "a written policy cannot decide it, a person must"
            )
        if rec.status not in (RecommendationStatus.PENDING, RecommendationStatus.ESCALATED):
            raise AlreadyDecidedError(
                f"recommendation '{rec_id}' is already {rec.status}"
                + (f" (by {rec.decided_by} at {rec.decided_at:%Y-%m-%d %H:%M:%S}Z)" if rec.decided_at else "")
            )
        if rec.expires_at <= now:
            self.expire_recommendations(now)
            raise ExpiredRecommendationError(
                f"recommendation '{rec_id}' expired at {rec.expires_at:%Y-%m-%d %H:%M:%S}Z; it can no longer be decided"
            )
        new_status = (
            RecommendationStatus.APPROVED if decision is Decision.APPROVE else RecommendationStatus.REJECTED
        )
        try:
            with self._begin() as conn:
                updated = conn.execute(
                    recommendations.update()
                    .where(
                        recommendations.c.id == rec_id,
                        recommendations.c.status == rec.status,
                    )
                    .values(
                        status=new_status,
                        decided_by=by,
                        decided_at=now,
                        decision_comment=comment,
                        open_key=recommendations.c.open_key if decision is Decision.APPROVE else None,
                    )
                )
                if updated.rowcount != 1:
                    raise AlreadyDecidedError(
                        f"recommendation '{rec_id}' was decided by someone else meanwhile"
                    )
                approval_id = conn.execute(
                    approvals.insert().values(
                        recommendation_id=rec_id,
                        decision=decision,
                        decided_by=by,
                        comment=comment,
                        at=now,
                        via=via,
                    )
                ).inserted_primary_key[0]
                # The entry seals the approval row as stored: editing the row later breaks the seal.
                stored = (
                    conn.execute(sa.select(approvals).where(approvals.c.id == approval_id)).mappings().one()
                )
                seal = {"approval_id": int(approval_id), "approval_sha256": approval_row_digest(stored)}
                self._audit(
                    conn,
                    by,
                    decision.value,
                    "recommendation",
                    rec_id,
                    {"comment": comment, "via": via, **seal},
                )
        except sa.exc.IntegrityError:
            raise AlreadyDecidedError(
                f"recommendation '{rec_id}' was decided by someone else meanwhile"
            ) from None
        return Approval(
            id=int(approval_id),
            recommendation_id=rec_id,
            decision=decision,
            by=by,
            comment=comment,
            at=now,
            via=via,
        )

    @staticmethod
    def _approval_from_row(r: sa.RowMapping) -> Approval:
        return Approval(
            id=r["id"],
            recommendation_id=r["recommendation_id"],
            decision=r["decision"],
            by=r["decided_by"],
            comment=r["comment"],
            at=_utc(r["at"]),
            via=r["via"],
        )

    def approvals_since(self, after_id: int, limit: int = 1000) -> list[Approval]:
        query = sa.select(approvals).where(approvals.c.id > after_id).order_by(approvals.c.id).limit(limit)
        with self._begin() as conn:
            return [self._approval_from_row(r) for r in conn.execute(query).mappings()]

    def approvals_awaiting_execution(self, limit: int = 1000) -> list[Approval]:
        """Approvals of recommendations still 'approved' with no execution: every decision that needs an
        executor run, whatever order their ids committed in (PostgreSQL hands out ids before commit)."""
        query = (
            sa.select(approvals)
            .join(recommendations, recommendations.c.id == approvals.c.recommendation_id)
            .where(
                approvals.c.decision == Decision.APPROVE,
                recommendations.c.status == RecommendationStatus.APPROVED,
                ~sa.exists().where(executions.c.recommendation_id == approvals.c.recommendation_id),
            )
            .order_by(approvals.c.id)
            .limit(limit)
        )
        with self._begin() as conn:
            return [self._approval_from_row(r) for r in conn.execute(query).mappings()]

    def get_approval(self, rec_id: str) -> Approval | None:
        """The decision recorded for a recommendation (at most one: approvals are unique per recommendation)."""
        query = sa.select(approvals).where(approvals.c.recommendation_id == rec_id)
        with self._begin() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else self._approval_from_row(row)

    def set_recommendation_status(
        self,
        rec_id: str,
        status: RecommendationStatus,
        *,
        expected: Sequence[RecommendationStatus],
        reason: str | None = None,
    ) -> bool:
        """Move a recommendation to ``status`` if it is in one of ``expected``; True if it moved.
        ``reason`` (why, in words) replaces its status_reason."""
        with self._begin() as conn:
            row = conn.execute(
                sa.select(
                    recommendations.c.kind, recommendations.c.deployment_id, recommendations.c.body
                ).where(recommendations.c.id == rec_id)
            ).first()
            if row is None:
                raise UnknownRecommendationError(f"unknown recommendation '{rec_id}'")
            open_key = f"{row.kind}:{row.deployment_id}" if status in OPEN_STATUSES else None
            values: dict[str, Any] = {"status": status, "open_key": open_key}
            if reason is not None:
                values["body"] = {**row.body, "status": status.value, "status_reason": reason}
            moved = conn.execute(
                recommendations.update()
                .where(recommendations.c.id == rec_id, recommendations.c.status.in_(list(expected)))
                .values(**values)
            ).rowcount
        return moved == 1

    def list_open_recommendations(self, deployment_id: str | None = None) -> list[Recommendation]:
        """Every open recommendation (pending, blocked, escalated, approved, executing), oldest first."""
        query = (
            sa.select(recommendations)
            .where(recommendations.c.open_key.is_not(None))
            .order_by(recommendations.c.created_at, recommendations.c.id)
        )
        if deployment_id is not None:
            query = query.where(recommendations.c.deployment_id == deployment_id)
        with self._begin() as conn:
            return [self._rec_from_row(r) for r in conn.execute(query).mappings()]

    # ---- executions -----------------------------------------------------------------------------

    @staticmethod
    def _execution_from_row(row: sa.RowMapping) -> Execution:
        body = dict(row["body"])
        if not body.get("before"):  # executions started before configs existed kept a lifecycle snapshot
            body["before"] = None
        return Execution.model_validate(
            {
                **body,
                "recommendation_id": row["recommendation_id"],
                "status": row["status"],
                "stage": row["stage"],
                "started_at": _utc(row["started_at"]),
                "finished_at": _utc(row["finished_at"]),
                "reason": row["reason"],
                "run_id": row["run_id"],
            }
        )

    def start_execution(
        self, rec_id: str, run_id: str | None, before: DeploymentConfig, now: datetime
    ) -> Execution:
        """Create the execution of a recommendation, or return the existing one (a resumed run)."""
        execution = Execution(
            recommendation_id=rec_id,
            status=ExecutionStatus.RUNNING,
            started_at=now,
            run_id=run_id,
            before=before,
        )
        try:
            with self._begin() as conn:
                conn.execute(executions.insert().values(**self._execution_columns(execution)))
                self._audit(
                    conn, "executor", "execution_started", "recommendation", rec_id, {"run_id": run_id}
                )
        except sa.exc.IntegrityError:
            existing = self.get_execution(rec_id)
            assert existing is not None
            return existing
        return execution

    @staticmethod
    def _execution_columns(execution: Execution) -> dict[str, Any]:
        return {
            "recommendation_id": execution.recommendation_id,
            "status": execution.status,
            "stage": execution.stage,
            "started_at": execution.started_at,
            "finished_at": execution.finished_at,
            "reason": execution.reason,
            "run_id": execution.run_id,
            "body": execution.model_dump(mode="json", include={"stages", "before"}),
        }

    def save_execution(self, execution: Execution) -> None:
        with self._begin() as conn:
            conn.execute(
                executions.update()
                .where(executions.c.recommendation_id == execution.recommendation_id)
                .values(**self._execution_columns(execution))
            )

    def get_execution(self, rec_id: str) -> Execution | None:
        with self._begin() as conn:
            row = (
                conn.execute(sa.select(executions).where(executions.c.recommendation_id == rec_id))
                .mappings()
                .first()
            )
        return None if row is None else self._execution_from_row(row)

    def list_executions(self, status: str | None = None) -> list[Execution]:
        query = sa.select(executions).order_by(executions.c.started_at.desc())
        if status is not None:
            query = query.where(executions.c.status == ExecutionStatus(status))
        with self._begin() as conn:
            return [self._execution_from_row(r) for r in conn.execute(query).mappings()]

    def finished_changes(self, since: datetime) -> list[tuple[Execution, Recommendation]]:
        """Every execution that succeeded since ``since``, with its recommendation: one joined query."""
        query = (
            sa.select(
                executions,
                recommendations.c.body.label("rec_body"),
                recommendations.c.status.label("rec_status"),
                recommendations.c.decided_by,
                recommendations.c.decided_at,
                recommendations.c.decision_comment,
            )
            .join(recommendations, recommendations.c.id == executions.c.recommendation_id)
            .where(executions.c.status == ExecutionStatus.SUCCEEDED, executions.c.finished_at >= since)
            .order_by(executions.c.finished_at)
        )
        with self._begin() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            (
                self._execution_from_row(row),
                self._rec_from_row({**row, "body": row["rec_body"], "status": row["rec_status"]}),
            )
            for row in rows
        ]

    # ---- outcomes and audit ---------------------------------------------------------------------

    def add_outcome(self, outcome: Outcome) -> None:
        with self._begin() as conn:
            exists = conn.scalar(
                sa.select(outcomes.c.recommendation_id).where(
                    outcomes.c.recommendation_id == outcome.recommendation_id
                )
            )
            if exists is None:
                conn.execute(outcomes.insert().values(**outcome.model_dump(mode="python")))

    @staticmethod
    def _outcome_from_row(row: sa.RowMapping) -> Outcome:
        values = {k: v for k, v in row.items() if v is not None}  # rows older than a column read its default
        return Outcome.model_validate(values | {"at": _utc(row["at"])})

    def get_outcome(self, rec_id: str) -> Outcome | None:
        with self._begin() as conn:
            row = (
                conn.execute(sa.select(outcomes).where(outcomes.c.recommendation_id == rec_id))
                .mappings()
                .first()
            )
        return None if row is None else self._outcome_from_row(row)

    def list_outcomes(self, kind: str | None = None) -> list[Outcome]:
        query = sa.select(outcomes).order_by(outcomes.c.at)
        if kind is not None:
            query = query.where(outcomes.c.kind == kind)
        with self._begin() as conn:
            return [self._outcome_from_row(r) for r in conn.execute(query).mappings()]

    @staticmethod
    def _audit(
        conn: Connection, actor: str, action: str, entity_type: str, entity_id: str, detail: dict[str, Any]
    ) -> None:
        """Append one entry to the hash chain (see resources/audit_chain.py), inside ``conn``'s transaction."""
        # Bump the head first: it serializes writers, so that the predecessor read next is the last one.
        conn.execute(audit_head.update().where(audit_head.c.id == 1).values(seq=audit_head.c.seq + 1))
        seq = conn.scalar(sa.select(audit_head.c.seq).where(audit_head.c.id == 1))
        if seq is None:
            raise RuntimeError("audit_head is missing: run StateStore.migrate()")
        prev = conn.scalar(sa.select(audit_log.c.hash).where(audit_log.c.seq == seq - 1)) if seq > 1 else None
        values = {
            "seq": seq,
            "prev_hash": prev or GENESIS,
            "at": _now(),
            "actor": actor,
            "action": action,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "detail": json.loads(json.dumps(detail, default=str)),
        }
        conn.execute(audit_log.insert().values(**values, hash=entry_hash(**values)))

    def audit(
        self, actor: str, action: str, entity_type: str, entity_id: str, detail: dict[str, Any]
    ) -> None:
        with self._begin() as conn:
            self._audit(conn, actor, action, entity_type, entity_id, detail)

    def list_audit(
        self,
        entity_id: str | None = None,
        limit: int = 1000,
        after_id: int | None = None,
        *,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Oldest first (``newest_first``: the latest ``limit`` entries, latest first); ``after_id`` reads
        only newer entries (a follower's cursor: the portal's live feed)."""
        order = audit_log.c.id.desc() if newest_first else audit_log.c.id
        query = sa.select(audit_log).order_by(order).limit(limit)
        if entity_id is not None:
            query = query.where(audit_log.c.entity_id == entity_id)
        if after_id is not None:
            query = query.where(audit_log.c.id > after_id)
        with self._begin() as conn:
            return [
                AuditEntry.model_validate({**r, "at": _utc(r["at"])}) for r in conn.execute(query).mappings()
            ]

    def verify_audit(self) -> AuditVerification:
        """Walk the audit log's hash chain and the approvals it seals; name the first broken link."""
        with self._begin() as conn:
            if conn.dialect.name == "postgresql":
                present = set(
                    conn.scalars(
                        sa.text(
                            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit_log'::regclass "
                            "AND NOT tgisinternal AND tgenabled <> 'D'"
                        )
                    )
                )
                expected = ["audit_log_append_only"]
            else:
                present = set(
                    conn.scalars(
                        sa.text(
                            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'"
                        )
                    )
                )
                expected = ["audit_log_no_update", "audit_log_no_delete"]
            head = conn.scalar(sa.select(audit_head.c.seq).where(audit_head.c.id == 1))
            entries = list(conn.execute(sa.select(audit_log).order_by(audit_log.c.id)).mappings())
            approval_rows = list(conn.execute(sa.select(approvals).order_by(approvals.c.id)).mappings())
            return verify_chain(
                entries,
                approval_rows,
                head_seq=head,
                missing_triggers=[t for t in expected if t not in present],
            )
