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

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from resources.errors import StoreUnavailableError, mask_secrets

ENV_PREFIX = "OPTIINFRA_"
# The settings that say where state lives: a bad one is a store that cannot be opened (exit 3), not a
# refused request (exit 2).
STORE_SETTINGS = frozenset({"home", "database_url", "clickhouse_url", "qdrant_url"})
# The module of each target that can apply approved changes; a target is available once it exists.
TARGET_MODULES = {"sandbox": "resources.targets", "aws": "resources.aws_target"}
# Relational engines the state store speaks: SQLAlchemy backend -> drivers shipped for it.
_DATABASE_DRIVERS = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg2")}
# What Dagster's EnvVar.int accepts (it calls int()); pydantic alone would also take "2.5e0" or "5.0".
_WHOLE_NUMBER = re.compile(r"\s*[+-]?[0-9]+\s*")


class DecisionSettings(BaseModel):
    """The numbers that shape decisions. Defaults are the product's; tests and customers may pass others."""

    max_quality_drop_pct: float = Field(5.0, gt=0, le=100, description="quality gate: largest drop allowed")
    min_baseline_samples: int = Field(200, ge=1, description="scored samples before a change can be judged")
    low_risk_below: float = Field(0.33, gt=0, lt=1, description="risk scores below this are low")
    high_risk_from: float = Field(0.66, gt=0, lt=1, description="risk scores from this on are high")
    llm_max_risk_raise: float = Field(
        0.25, ge=0, le=1, description="most an LLM may raise the deterministic risk score (never lower it)"
    )
    hours_per_month: float = Field(730.0, gt=0, description="hours a month is priced at (8760 / 12)")
    rollout_stages: tuple[int, ...] = Field((10, 50, 100), description="percent of a change per stage")
    ab_alpha: float = Field(
        0.05, gt=0, lt=1, description="A/B test between stages: false-alarm rate over all the stages' looks"
    )
    ab_min_samples: int = Field(30, ge=2, description="A/B test: samples each arm needs before it concludes")
    ab_max_latency_increase_pct: float = Field(
        20.0,
        gt=0,
        le=1000,
        description="A/B test between stages: largest rise of the canary's p95 latency over the control's",
    )
    # Collections run every 30 s and each judge keeps its own minute: 10 a run stays within 30 calls a minute.
    llm_judge_requests_per_run: int = Field(
        10, ge=0, le=10_000, description="LLM judge: sampled requests judged per ingestion run (0: none)"
    )
    llm_judge_calls_per_minute: int = Field(30, ge=1, le=100_000, description="LLM judge: rate limit")
    llm_judge_disagreement: float = Field(
        0.3, gt=0, le=1, description="LLM judge: score difference from the offline scorer that disagrees"
    )
    hallucination_drift_min_rise: float = Field(
        0.03, gt=0, le=1, description="quality drift: hourly mean hallucination rise that matters"
    )
    toxicity_drift_min_rise: float = Field(
        0.01, gt=0, le=1, description="quality drift: rise of the hourly mean toxicity score that matters"
    )
    degradation_sustained_hours: int = Field(
        2, ge=1, description="hours quality must stay over the gate below baseline to be a degradation"
    )
    degradation_blame_window_h: int = Field(
        24, ge=1, description="hours before a degradation in which a change of ours is blamed for it"
    )
    quality_drift_robust_z: float = Field(
        4.0, gt=0, description="quality drift: robust z-score (MAD) beyond the baseline a shift must reach"
    )
    latency_anomaly_z: float = Field(3.5, gt=0, description="robust z-score beyond which p95 regressed")
    peak_growth_margin: float = Field(0.0, ge=0, description="extra load over the observed peak to plan for")
    gpu_quota_per_family: int = Field(
        256, ge=0, description="GPUs one deployment may hold per instance family (the account's quota)"
    )
    max_clock_skew_s: float = Field(
        300.0,
        ge=0,
        le=3600,
        description="how far ahead of now a metric's timestamp may be before it is rejected",
    )
    # Right-sizing and reserved capacity (cost agent, issue 7).
    right_sizing_growth_margin: float = Field(
        0.2, ge=0, description="right-sizing: load over the observed p95 a new config must carry in the SLO"
    )
    right_sizing_max_utilization: float = Field(
        0.8, gt=0, le=1, description="right-sizing: highest replica utilization planned for at that load"
    )
    reserved_min_history_days: float = Field(
        6.0, gt=0, description="reserved capacity: days of usage history needed before advising a commitment"
    )
    reserved_horizon_months: float = Field(
        24.0, gt=0, description="reserved capacity: months the usage is assumed to continue for"
    )
    # Performance agent (issue 8): KV cache, quantization, batching, parallelism.
    kv_pressure_usage: float = Field(
        0.9, gt=0, le=1, description="KV-cache use (p95) from which vLLM preempts and new requests queue"
    )
    kv_preempted_share: float = Field(
        0.01,
        gt=0,
        le=1,
        description="preemptions per request (worst hour) from which the KV cache is too small; "
        "kv_pressure_usage is the fallback where the engine exports no preemption count",
    )
    min_performance_gain_pct: float = Field(
        10.0, gt=0, description="predicted p95 or capacity gain a performance change must bring"
    )
    perf_slo_margin: float = Field(
        0.2, ge=0, lt=1, description="performance changes plan for p95 at (1 - this) x the SLO at peak"
    )
    quantize_from_peak_utilization: float = Field(
        0.7, gt=0, le=1, description="peak utilization from which quantizing for throughput is worth it"
    )
    perf_max_planned_utilization: float = Field(
        0.75, gt=0, le=1, description="highest peak utilization a performance change may plan a replica at"
    )
    max_gpu_memory_utilization: float = Field(
        0.95, gt=0, le=1, description="highest gpu_memory_utilization proposed (room for CUDA graphs, NCCL)"
    )
    # Resource agent (issue 9): autoscaling, consolidation, GPU utilization.
    autoscaling_slo_margin: float = Field(
        0.15, ge=0, lt=1, description="autoscaling sizes for p95 at (1 - this) x the SLO"
    )
    autoscaling_target_utilization: float = Field(
        0.6, gt=0, le=1, description="reactive (HPA-like) scaling target and the forecast-less fallback"
    )
    autoscaling_scale_down_hysteresis: float = Field(
        0.1, ge=0, lt=1, description="scale down only when fewer than (1 - this) x the replicas suffice"
    )
    autoscaling_cooldown_s: int = Field(600, ge=0, description="seconds after a scaling before scaling down")
    autoscaling_lead_time_s: int = Field(
        600, ge=0, description="seconds a new replica takes to serve (launch + weights): the forecast lead"
    )
    idle_gpu_util_pct: float = Field(
        20.0, ge=0, le=100, description="GPU utilization under this is underused"
    )
    idle_gpu_min_hours: int = Field(
        24, ge=1, description="hours under the idle line before a GPU is reported"
    )
    gpu_throttle_share: float = Field(
        0.25, gt=0, le=1, description="share of samples throttled for one reason that a GPU is reported at"
    )
    gpu_throttle_window_hours: int = Field(
        3, ge=1, description="the recent hours over which the throttled share is measured"
    )
    consolidation_time_limit_s: float = Field(
        20.0, gt=0, description="MILP solve time limit (best-so-far after)"
    )
    # Cost agent (issue 7, second half): cost anomalies, budget forecasts, cost per quality.
    cost_anomaly_recent_hours: int = Field(
        24, ge=1, description="a cost anomaly alerted this many hours back is still reported while it lasts"
    )
    cost_anomaly_min_rise_pct: float = Field(
        10.0, ge=0, description="hourly spend must stay this much above its expected level to be reported"
    )
    cost_anomaly_high_rise_pct: float = Field(
        50.0, gt=0, description="a rise of this much over the expected hourly spend is high severity"
    )
    budget_interval_pct: Literal[80, 95] = Field(
        80, description="the forecast interval whose upper bound crossing the budget raises the alert"
    )
    good_response_min_quality: float = Field(
        0.8, ge=0, le=1, description="quality score from which a response counts as good (cost per quality)"
    )
    cost_per_quality_window_h: int = Field(
        24, ge=1, description="complete hours each cost-per-quality figure covers"
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
    request_log_path: str = Field(
        "", description="JSON-lines request logs of real deployments: a file or a folder of *.jsonl."
    )
    target: Literal["sandbox", "aws"] = Field(
        "sandbox",
        description="Where approved changes are applied: sandbox, or aws (resources/aws_target.py).",
    )
    aws_region: str = Field("us-east-1", description="Region of the AWS target.")
    aws_image_id: str = Field("", description="AMI the AWS target's instances boot (required for it).")
    aws_subnet_ids: str = Field(
        "", description="Comma list of subnets for the AWS target. Empty: default VPC."
    )
    aws_dry_run: bool = Field(
        False, description="AWS target: send every change with DryRun=True and only report what it would do."
    )
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

    @field_validator("*", mode="before")
    @classmethod
    def _whole_number_text(cls, value: Any, info: ValidationInfo) -> Any:
        """An int setting given as text must be what Dagster's ``EnvVar.int`` reads too, or a value that
        ``check`` accepted would stop every run that needs it (``5.0`` passes pydantic, not ``int()``)."""
        field = cls.model_fields.get(info.field_name or "")
        is_int = field is not None and field.annotation is int
        if is_int and isinstance(value, str) and not _WHOLE_NUMBER.fullmatch(value):
            raise ValueError("a whole number is expected (digits only, as Dagster's EnvVar.int reads it)")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, url: str) -> str:
        url = url.strip()
        if not url:
            return url
        match = re.match(r"([A-Za-z][A-Za-z0-9]*)(?:\+([A-Za-z0-9_]+))?://", url)
        if match is None:
            raise ValueError(
                "not a database URL: expected postgresql+psycopg2://user:pass@host:5432/db (or empty)"
            )
        backend, driver = match.group(1).lower(), (match.group(2) or "").lower()
        if backend not in _DATABASE_DRIVERS:
            raise ValueError(
                f"unsupported database {backend!r}: expected postgresql:// (or empty for SQLite)"
            )
        if driver not in _DATABASE_DRIVERS[backend]:
            raise ValueError(f"unsupported driver {driver!r} for {backend}: expected postgresql+psycopg2://")
        if backend == "postgresql" and not re.match(r"[^/]*://[^/?#]*[^/?#@]", url):
            raise ValueError("no host: expected postgresql+psycopg2://user:pass@host:5432/db")
        return url

    @field_validator("clickhouse_url", "qdrant_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        url = url.strip()
        if url and not re.match(r"https?://[^/?#\s]*[^/?#@:\s]", url):
            raise ValueError("expected http(s)://host:port (or empty for the embedded engine)")
        return url

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment; a bad value raises SettingsError naming variable and value."""
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(exc) from None


class SettingsError(ValueError):
    """Bad OPTIINFRA_* values: the message names each variable, its (masked) value and what is allowed;
    ``fields`` are the settings at fault."""

    def __init__(self, exc: ValidationError) -> None:
        self.fields = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        super().__init__(describe_errors(exc))

    @property
    def about_stores(self) -> bool:
        """True when a store location is at fault: the store cannot be opened (exit 3)."""
        return bool(self.fields & STORE_SETTINGS)


def target_available(name: str) -> bool:
    """Whether the module of target ``name`` exists in this installation."""
    module = TARGET_MODULES.get(name)
    return module is not None and importlib.util.find_spec(module) is not None


# Files and folders the project creates hold state other local users have no business reading
# (decisions, approvals, metrics, Dagster's run storage): owner-only.
PRIVATE_UMASK = 0o077


def restrict_new_files() -> None:
    """Make every file and folder this process creates from now on owner-only (0600 / 0700)."""
    os.umask(PRIVATE_UMASK)


def prepare_home(settings: Settings) -> Path:
    """Create ``home`` (0700) or tighten it, and DAGSTER_HOME when inside it, and prove it is writable;
    a home that cannot be used is one StoreUnavailableError (exit 3) naming it."""
    home = settings.home
    restrict_new_files()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        folders = [home, Path(os.environ.get("DAGSTER_HOME") or home / "dagster")]
        for folder in folders:
            if folder.is_dir() and folder.stat().st_uid == os.getuid():
                folder.chmod(0o700)
        probe = home / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise StoreUnavailableError("home", str(home), exc.strerror or exc) from None
    return home


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def describe_errors(exc: ValidationError) -> str:
    """One line per bad variable: its name, the value given and what is allowed."""
    lines = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        name = env_name(path[0]) + "".join(f"__{p.upper()}" for p in path[1:])
        given = os.environ.get(name, err.get("input"))
        shown = mask_secrets(given) if isinstance(given, str) else given
        lines.append(f"{name}={shown!r}: {err['msg'].removeprefix('Value error, ')}")
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
