"""Every setting in one place: pydantic-settings reads OPTIINFRA_* variables, validates them, and holds
their defaults and descriptions.

* :class:`Settings` is the process configuration (engines, sources, target, timings). The CLI, the
  Dagster resources and ``optiinfra check`` all read it, so a bad value fails the same way everywhere,
  naming the variable, the value and what is allowed.
* :class:`DecisionSettings` holds the numbers that shape decisions (the quality gate, risk bands, stage
  fractions, hours per month): one object passed into the agents, as VPA passes its RecommendationConfig.
  Each is overridable as ``OPTIINFRA_DECISIONS__<NAME>``.

The Dagster resources are configured with ``EnvVar`` (see ``resources/dagster_resources.py``);
:func:`apply_env_defaults` fills in unset variables from the defaults here so that every ``EnvVar``
resolves however the process was started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "OPTIINFRA_"


class DecisionSettings(BaseModel):
    """The numbers that shape decisions. Defaults are the product's; tests and customers may pass others."""

    max_quality_drop_pct: float = Field(5.0, gt=0, le=100, description="quality gate: largest drop allowed")
    min_baseline_samples: int = Field(200, ge=1, description="scored samples before a change can be judged")
    low_risk_below: float = Field(0.33, gt=0, lt=1, description="risk scores below this are low")
    high_risk_from: float = Field(0.66, gt=0, lt=1, description="risk scores from this on are high")
    hours_per_month: float = Field(730.0, gt=0, description="hours a month is priced at (8760 / 12)")
    rollout_stages: tuple[int, ...] = Field((10, 50, 100), description="percent of a change per stage")
    latency_anomaly_z: float = Field(3.5, gt=0, description="robust z-score beyond which p95 regressed")
    peak_growth_margin: float = Field(0.0, ge=0, description="extra load over the observed peak to plan for")
    gpu_quota_per_family: int = Field(
        256, ge=0, description="GPUs one deployment may hold per instance family (the account's quota)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DecisionSettings:
        if self.low_risk_below >= self.high_risk_from:
            raise ValueError(
                f"low_risk_below ({self.low_risk_below}) must be below high_risk_from ({self.high_risk_from})"
            )
        stages = self.rollout_stages
        if not stages or stages[-1] != 100 or list(stages) != sorted(set(stages)) or stages[0] <= 0:
            raise ValueError(f"rollout_stages: increasing percentages ending at 100, got {list(stages)}")
        return self


class Settings(BaseSettings):
    """The resolved configuration of a process. Empty URL = the embedded engine under ``home``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    home: Path = Field(
        Path(".optiinfra"), description="Folder holding all embedded state (chdb, SQLite, Qdrant, Dagster)."
    )
    clickhouse_url: str = Field(
        "", description="ClickHouse server, e.g. http://user:pass@host:8123/optiinfra. Empty: chdb."
    )
    database_url: str = Field(
        "", description="PostgreSQL, e.g. postgresql+psycopg2://u:p@host:5432/optiinfra. Empty: SQLite."
    )
    qdrant_url: str = Field("", description="Qdrant server, e.g. http://host:6333. Empty: Qdrant local mode.")
    llm_model: str = Field(
        "", description="litellm model name for risk notes and judging. Empty: deterministic method."
    )
    llm_timeout_s: int = Field(20, gt=0, le=600, description="Timeout of one LLM call, whole seconds.")
    seed: int = Field(
        42, ge=0, description="Seed of the sandbox fleet; the same seed gives the same metrics."
    )
    metrics_source: Literal["sandbox", "prometheus", "nvml"] = Field(
        "sandbox", description="Where raw metrics come from."
    )
    prometheus_targets: str = Field(
        "", description="Comma list of instance_id=http://host:port/metrics for the scraper."
    )
    nvml_instance_id: str = Field(
        "", description="Fleet instance id of this machine's GPUs for the nvml source. Empty: hostname."
    )
    target: Literal["sandbox"] = Field(
        "sandbox", description="Where approved changes are applied (sandbox; aws comes with the cost agent)."
    )
    aws_region: str = Field("us-east-1", description="Region of the AWS target.")
    backfill_days: int = Field(7, ge=1, le=90, description="Days of sandbox history written at first start.")
    backfill_step_s: int = Field(
        10, ge=1, le=3600, description="Sample step of the backfilled 1-second metrics, seconds."
    )
    rollout_soak_s: int = Field(
        10,
        ge=0,
        le=3600,
        description="Whole seconds the executor watches a rollout stage before checking it.",
    )
    recommendation_ttl_h: int = Field(
        24, gt=0, le=24 * 90, description="Whole hours a pending recommendation stays approvable."
    )
    decisions: DecisionSettings = Field(
        default_factory=DecisionSettings, description="Numbers that shape decisions."
    )

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment; a bad value raises ValueError naming variable and value."""
        try:
            return cls()
        except ValidationError as exc:
            raise ValueError(describe_errors(exc)) from None


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe_errors(exc: ValidationError) -> str:
    """One line per bad variable: its name, the value given and what is allowed."""
    lines = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        name = env_name(path[0]) + "".join(f"__{p.upper()}" for p in path[1:])
        given = os.environ.get(name, err.get("input"))
        lines.append(f"{name}={given!r}: {err['msg']}")
    return "; ".join(lines)


def env_defaults() -> dict[str, tuple[str, str]]:
    """OPTIINFRA_* name -> (default as text, description) for every top-level setting."""
    out: dict[str, tuple[str, str]] = {}
    for name, field in Settings.model_fields.items():
        if name == "decisions":
            continue
        default: Any = field.get_default(call_default_factory=True)
        out[env_name(name)] = (str(default), field.description or "")
    return out


ENV_VARS = env_defaults()


def apply_env_defaults() -> None:
    """Set every unset OPTIINFRA_* variable to its default (never overrides what the user set)."""
    for name, (default, _) in ENV_VARS.items():
        os.environ.setdefault(name, default)
