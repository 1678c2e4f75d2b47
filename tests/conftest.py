"""Shared fixtures: real engines only (SQLite and PostgreSQL, chdb, Qdrant local).

PostgreSQL comes from OPTIINFRA_TEST_DATABASE_URL (``make test`` starts one and sets it). Without it the
PostgreSQL half of each store test is skipped — unless OPTIINFRA_REQUIRE_POSTGRES=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from resources.state_store import StateStore

PG_URL = os.environ.get("OPTIINFRA_TEST_DATABASE_URL", "")


def _require_postgres() -> str:
    if PG_URL:
        return PG_URL
    if os.environ.get("OPTIINFRA_REQUIRE_POSTGRES") == "1":
        pytest.fail("OPTIINFRA_TEST_DATABASE_URL is not set but OPTIINFRA_REQUIRE_POSTGRES=1")
    pytest.skip("PostgreSQL not configured (set OPTIINFRA_TEST_DATABASE_URL or run `make test`)")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    base = sa.engine.make_url(_require_postgres())
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The relational store's URL, once per engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def state(state_url: str) -> Iterator[StateStore]:
    store = StateStore(state_url)
    store.migrate()
    yield store
    store.dispose()


# The sandbox with history (svc, clock) for workflow-level tests.
from workflow_fixtures import clock, svc  # noqa: E402, F401
