"""The Dagster resources: one ConfigurableResource per engine, configured with EnvVar.

Each resource only chooses and opens an engine (embedded default, or the server named by a URL); the
engines themselves live in the sibling modules and know nothing of Dagster. :func:`from_env` configures a
resource from the OPTIINFRA_* variables named after its fields, whose defaults and validation live in
``optiinfra_assets.config.Settings``: a variable is declared once, there.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from optiinfra_assets.config import Settings, env_name
from optiinfra_assets.workflow import Services
from resources.llm import LlmClient, configured_llm
from resources.memory_store import MemoryStore, open_memory_store
from resources.metric_store import MetricStore, open_metric_store
from resources.sources import MetricSource, configured_metric_source
from resources.state_store import StateStore, state_store_url
from resources.targets import Target, open_target


@cache
def _state_store(url: str) -> StateStore:
    # One engine (and connection pool) per URL per process; migrations run once per process.
    store = StateStore(url)
    store.migrate()
    return store


@cache
def _metric_store(url: str, home: str) -> MetricStore:
    store = open_metric_store(url, Path(home))
    store.migrate()
    return store


class StateStoreResource(dg.ConfigurableResource):
    """Customers, fleet, recommendations, approvals, executions, audit log.
    SQLite under ``home`` unless ``database_url`` names a PostgreSQL server."""

    home: str
    database_url: str = ""

    def get(self) -> StateStore:
        return _state_store(state_store_url(self.database_url, Path(self.home)))


class MetricStoreResource(dg.ConfigurableResource):
    """Time-series metrics in ClickHouse SQL: chdb under ``home`` unless ``clickhouse_url`` is set."""

    home: str
    clickhouse_url: str = ""

    def get(self) -> MetricStore:
        return _metric_store(self.clickhouse_url, str(Path(self.home).resolve()))


class MemoryStoreResource(dg.ConfigurableResource):
    """Decision memory: Qdrant local mode under ``home`` unless ``qdrant_url`` is set."""

    home: str
    qdrant_url: str = ""

    def get(self) -> MemoryStore:
        return open_memory_store(self.qdrant_url, Path(self.home).resolve())


class LlmResource(dg.ConfigurableResource):
    """litellm when ``llm_model`` is set; otherwise None and callers use their deterministic method."""

    llm_model: str = ""
    llm_timeout_s: int = 20

    def get(self) -> LlmClient | None:
        return configured_llm(self.llm_model, self.llm_timeout_s)


class FleetResource(dg.ConfigurableResource):
    """Where metrics come from (``source``), where approved changes are applied (``target``), and how."""

    metrics_source: str = "sandbox"  # sandbox | prometheus | nvml
    target: str = "sandbox"  # sandbox | aws (next issue)
    seed: int = 42
    prometheus_targets: str = ""  # instance_id=http://host:port/metrics,...
    nvml_instance_id: str = ""  # the fleet instance this machine's GPUs belong to ('' = hostname)
    request_log_path: str = ""  # JSON-lines request logs of real deployments (file or folder)
    backfill_days: int = 7
    backfill_step_s: int = 10
    rollout_soak_s: int = 10  # seconds the executor watches each rollout stage
    recommendation_ttl_h: int = 24  # hours a pending recommendation stays approvable

    def metric_source(self, state: StateStore, step_s: int = 1) -> MetricSource:
        # The state store keeps what a source needs between runs (a scraper's previous scrape).
        return configured_metric_source(self, state, step_s)

    def fleet_target(self, state: StateStore) -> Target:
        return open_target(self.target, state, self.seed)


R = TypeVar("R", bound=dg.ConfigurableResource)


def from_env(cls: type[R], **nested: Any) -> R:
    """``cls`` with each field bound to ``EnvVar("OPTIINFRA_<FIELD>")`` (``EnvVar.int`` for int fields);
    ``nested`` passes the fields that are resources themselves."""
    values: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if name in nested:
            continue
        if name not in Settings.model_fields:
            raise TypeError(f"{cls.__name__}.{name} has no OPTIINFRA_{name.upper()} in config.Settings")
        var = env_name(name)
        values[name] = dg.EnvVar.int(var) if info.annotation in (int, "int") else dg.EnvVar(var)
    return cls(**values, **nested)


class WorkflowResource(dg.ConfigurableResource):
    """Everything the recommendation workflow needs, assembled from the engine resources above (the
    assets that propose and execute changes take this one resource)."""

    state_store: StateStoreResource
    metric_store: MetricStoreResource
    memory_store: MemoryStoreResource
    llm: LlmResource
    fleet: FleetResource

    def services(self) -> Services:
        state = self.state_store.get()
        return Services(
            state=state,
            metrics=self.metric_store.get(),
            memory=self.memory_store.get(),
            target=self.fleet.fleet_target(state),
            llm=self.llm.get(),
            recommendation_ttl=timedelta(hours=self.fleet.recommendation_ttl_h),
            soak_s=self.fleet.rollout_soak_s,
            # The numbers that shape decisions: defaults, or OPTIINFRA_DECISIONS__* overrides.
            decisions=Settings.from_env().decisions,
        )
