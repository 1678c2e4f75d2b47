"""Every OPTIINFRA_* environment variable, its default, and the paths derived from it.

This is the one place a default lives. The Dagster resources read the same variables through
``EnvVar``; :func:`apply_env_defaults` fills in the unset ones so that ``EnvVar`` always resolves,
whether the process was started by ``make run``, ``dagster dev`` by hand, the CLI or pytest.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

# name -> (default, what it does). Empty URL = use the embedded engine under OPTIINFRA_HOME.
ENV_VARS: dict[str, tuple[str, str]] = {
    "OPTIINFRA_HOME": (".optiinfra", "Folder holding all embedded state (chdb, SQLite, Qdrant, Dagster)."),
    "OPTIINFRA_CLICKHOUSE_URL": (
        "",
        "ClickHouse server, e.g. http://user:pass@host:8123/optiinfra. Empty: chdb.",
    ),
    "OPTIINFRA_DATABASE_URL": (
        "",
        "PostgreSQL, e.g. postgresql+psycopg2://u:p@host:5432/optiinfra. Empty: SQLite.",
    ),
    "OPTIINFRA_QDRANT_URL": ("", "Qdrant server, e.g. http://host:6333. Empty: Qdrant local mode."),
    "OPTIINFRA_LLM_MODEL": (
        "",
        "litellm model name for risk notes and judging. Empty: deterministic method.",
    ),
    "OPTIINFRA_LLM_TIMEOUT_S": ("20", "Timeout of one LLM call, seconds."),
    "OPTIINFRA_SEED": ("42", "Seed of the sandbox fleet; the same seed gives the same metrics."),
    "OPTIINFRA_METRICS_SOURCE": ("sandbox", "sandbox | prometheus | nvml: where raw metrics come from."),
    "OPTIINFRA_PROMETHEUS_TARGETS": (
        "",
        "Comma list of instance_id=http://host:port/metrics for the scraper.",
    ),
    "OPTIINFRA_NVML_INSTANCE_ID": (
        "",
        "Fleet instance id of this machine's GPUs for the nvml source. Empty: hostname.",
    ),
    "OPTIINFRA_TARGET": ("sandbox", "sandbox | aws: where approved changes are applied."),
    "OPTIINFRA_AWS_REGION": ("us-east-1", "Region of the AWS target."),
    "OPTIINFRA_BACKFILL_DAYS": ("7", "Days of sandbox history written at first start."),
    "OPTIINFRA_BACKFILL_STEP_S": ("10", "Sample step of the backfilled 1-second metrics, seconds."),
    "OPTIINFRA_ROLLOUT_SOAK_S": ("10", "Seconds the executor watches a rollout stage before checking it."),
    "OPTIINFRA_RECOMMENDATION_TTL_H": ("24", "Hours a pending recommendation stays approvable."),
}


def apply_env_defaults() -> None:
    """Set every unset OPTIINFRA_* variable to its default (never overrides what the user set)."""
    for name, (default, _) in ENV_VARS.items():
        os.environ.setdefault(name, default)


class Settings(BaseModel):
    """The resolved configuration: plain values, no Dagster."""

    home: Path
    clickhouse_url: str = ""
    database_url: str = ""
    qdrant_url: str = ""
    llm_model: str = ""
    llm_timeout_s: float = 20.0
    seed: int = 42
    metrics_source: str = "sandbox"
    prometheus_targets: str = ""
    nvml_instance_id: str = ""
    target: str = "sandbox"
    aws_region: str = "us-east-1"
    backfill_days: int = 7
    backfill_step_s: int = 10
    rollout_soak_s: float = 10.0
    recommendation_ttl_h: float = 24.0

    @classmethod
    def from_env(cls) -> Settings:
        apply_env_defaults()
        env = os.environ
        return cls(
            home=Path(env["OPTIINFRA_HOME"]).resolve(),
            clickhouse_url=env["OPTIINFRA_CLICKHOUSE_URL"],
            database_url=env["OPTIINFRA_DATABASE_URL"],
            qdrant_url=env["OPTIINFRA_QDRANT_URL"],
            llm_model=env["OPTIINFRA_LLM_MODEL"],
            llm_timeout_s=float(env["OPTIINFRA_LLM_TIMEOUT_S"]),
            seed=int(env["OPTIINFRA_SEED"]),
            metrics_source=env["OPTIINFRA_METRICS_SOURCE"],
            prometheus_targets=env["OPTIINFRA_PROMETHEUS_TARGETS"],
            nvml_instance_id=env["OPTIINFRA_NVML_INSTANCE_ID"],
            target=env["OPTIINFRA_TARGET"],
            aws_region=env["OPTIINFRA_AWS_REGION"],
            backfill_days=int(env["OPTIINFRA_BACKFILL_DAYS"]),
            backfill_step_s=int(env["OPTIINFRA_BACKFILL_STEP_S"]),
            rollout_soak_s=float(env["OPTIINFRA_ROLLOUT_SOAK_S"]),
            recommendation_ttl_h=float(env["OPTIINFRA_RECOMMENDATION_TTL_H"]),
        )
