"""Domain models shared by the agents, the stores and the Dagster layer. No Dagster here."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from optiinfra_assets.config import DecisionSettings


class Lifecycle(StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"


class InstanceState(StrEnum):
    RUNNING = "running"
    TERMINATED = "terminated"  # released by us
    INTERRUPTED = "interrupted"  # reclaimed by the cloud (spot loss)


class Risk(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Customer(BaseModel):
    id: str
    name: str
    slo_p95_latency_ms: float = Field(gt=0, description="p95 end-to-end latency the customer is promised")
    min_monthly_savings_usd: float = Field(ge=0, description="savings below this are not worth a change")
    allow_spot: bool = True  # a customer preference: outranks every other priority
    # A customer preference: its replicas never share an instance with another customer's (consolidation).
    dedicated_hardware: bool = False
    # Written autoscaling policy: the resource agent scales its deployments within their min/max replicas
    # without a person. Off: autoscaling only reports what it would do.
    autoscaling: bool = False
    # Written auto-approval policy: changes at or below this risk are approved by policy. None = off.
    auto_approve_max_risk: Risk | None = None
    # Monthly budget in the customer's policy: the budget forecast alerts when the month-end spend may
    # cross it. None = no budget.
    monthly_budget_usd: float | None = Field(None, gt=0, description="spend a calendar month may reach")


class Quantization(StrEnum):
    """How the weights are stored. fp16/bf16 are unquantized; the rest need checkpoint and GPU support."""

    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"  # W8A8 (SmoothQuant-style) or W8A16
    INT4_AWQ = "int4-awq"
    INT4_GPTQ = "int4-gptq"


class KvCacheDtype(StrEnum):
    AUTO = "auto"  # the model's activation dtype (fp16/bf16)
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"


class EngineConfig(BaseModel):
    """What one replica's serving engine runs with (vLLM's knobs). Every running instance carries one, so a
    canary stage can run a new engine config on some replicas while the others keep the old one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=16)
    quantization: Quantization = Quantization.BF16
    kv_cache_dtype: KvCacheDtype = KvCacheDtype.AUTO
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_num_seqs: int = Field(256, ge=1, le=65_536)
    max_num_batched_tokens: int = Field(8192, ge=16, le=1_048_576)
    max_model_len: int = Field(8192, ge=16, le=1_048_576)
    enable_prefix_caching: bool = True
    kv_offload_gib: float = Field(0.0, ge=0.0, le=4096.0)  # CPU memory for KV offload per replica


class DeploymentConfig(BaseModel):
    """The whole desired state of a deployment: hardware, replicas per lifecycle, bounds and the engine.

    A change is a pair (current, desired) of these; a target applies a fraction of the way from one to the
    other. Field-level bounds live here; whether the config fits the model and the GPU (TP dividing heads,
    quantization the hardware runs, memory) is the serving model's judgement (serving.validate_config).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    instance_type: str
    on_demand_replicas: int = Field(ge=0, le=10_000)
    spot_replicas: int = Field(0, ge=0, le=10_000)
    min_replicas: int = Field(1, ge=0, le=10_000)
    max_replicas: int = Field(64, ge=1, le=10_000)
    engine: EngineConfig = EngineConfig()
    # None: one replica per instance (the engine's TP x PP is the instance's GPU count). Set: each replica is a
    # slice of this many whole GPUs of an ``instance_type`` host that may hold other deployments' replicas
    # (consolidation's shared placements); the engine's TP x PP must equal it (serving.validate_config).
    gpus_per_replica: int | None = Field(None, ge=1, le=64)

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas: {self.min_replicas} is above max_replicas {self.max_replicas}")
        if self.replicas < 1:
            raise ValueError("replicas: a deployment needs at least one replica (on-demand + spot = 0)")
        return self

    @property
    def replicas(self) -> int:
        return self.on_demand_replicas + self.spot_replicas

    def replicas_on(self, lifecycle: Lifecycle) -> int:
        return self.spot_replicas if lifecycle is Lifecycle.SPOT else self.on_demand_replicas

    def changes(self, other: DeploymentConfig) -> dict[str, tuple[object, object]]:
        """field -> (self's value, other's value) for every field that differs (engine fields dotted)."""
        mine, theirs = self.model_dump(mode="json"), other.model_dump(mode="json")
        out: dict[str, tuple[object, object]] = {}
        for name, value in mine.items():
            if name == "engine":
                for key, v in value.items():
                    if theirs["engine"][key] != v:
                        out[f"engine.{key}"] = (v, theirs["engine"][key])
            elif theirs[name] != value:
                out[name] = (value, theirs[name])
        return out


class Deployment(BaseModel):
    id: str
    customer_id: str
    model: str  # a name from optiinfra_assets.catalog.MODELS
    config: DeploymentConfig  # what it runs as, once no change is under way
    # A change under way: the config it moves to and how far (0..1). Healing re-asserts this blend.
    rollout_to: DeploymentConfig | None = None
    rollout_fraction: float = Field(0.0, ge=0.0, le=1.0)
    engine: str = "vllm"
    base_requests_per_s: float = Field(gt=0, description="mean load of the deployment (sandbox)")

    @model_validator(mode="before")
    @classmethod
    def _flat_fields(cls, data: object) -> object:
        """Accept (instance_type, replicas[, kv_cache_dtype]) for a deployment all on-demand with the catalog's
        default engine (TP over all GPUs, vLLM's defaults): how a person writes a new deployment."""
        if not isinstance(data, dict) or data.get("config") is not None:
            return data
        data = dict(data)
        replicas = data.pop("replicas", None)
        itype = data.pop("instance_type", None)
        data.pop("kv_cache_dtype", None)
        if itype is None or replicas is None:
            return data  # pydantic names the missing config
        from optiinfra_assets.catalog import default_config  # the catalog imports this module

        data["config"] = default_config(itype, replicas)
        return data

    @property
    def instance_type(self) -> str:
        return self.config.instance_type

    @property
    def replicas(self) -> int:
        return self.config.replicas


class Instance(BaseModel):
    id: str
    deployment_id: str
    instance_type: str
    lifecycle: Lifecycle
    engine: EngineConfig = EngineConfig()
    state: InstanceState = InstanceState.RUNNING
    az: str = "us-east-1a"
    launched_at: datetime
    ended_at: datetime | None = None
    # A slice of a shared host (DeploymentConfig.gpus_per_replica): the host and the GPUs it holds of it.
    host_id: str | None = None
    gpus: int | None = Field(None, ge=1, le=64)


class Host(BaseModel):
    """A multi-GPU instance holding slices (replicas on whole GPUs of it) of one or several deployments; it
    runs while it holds a slice. A dedicated-hardware customer's host holds that customer's slices only."""

    id: str
    instance_type: str
    lifecycle: Lifecycle
    dedicated_customer_id: str | None = None
    state: InstanceState = InstanceState.RUNNING
    az: str = "us-east-1a"
    launched_at: datetime
    ended_at: datetime | None = None


class FaultKind(StrEnum):
    QUALITY_DEGRADATION = "quality_degradation"
    SPOT_LOSS = "spot_loss"


class Fault(BaseModel):
    """A fault the sandbox fleet was told to suffer."""

    id: int | None = None
    deployment_id: str
    kind: FaultKind
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    active: bool = True


class RecommendationStatus(StrEnum):
    PENDING = "pending"  # validated, waiting for a decision
    BLOCKED = "blocked"  # another agent's validation failed: not approvable
    # Conflicts with a higher-priority change on the same deployment in a way re-evaluation cannot settle:
    # the customer decides (a person may approve or reject it; a written policy never does).
    ESCALATED = "escalated"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    EXECUTING = "executing"
    EXECUTED = "executed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# Open: at most one per kind and deployment. A blocked recommendation counts, so that each analysis
# refreshes it in place rather than piling up a new blocked copy every run.
OPEN_STATUSES = frozenset(
    {
        RecommendationStatus.PENDING,
        RecommendationStatus.BLOCKED,
        RecommendationStatus.ESCALATED,
        RecommendationStatus.APPROVED,
        RecommendationStatus.EXECUTING,
    }
)


class Validation(BaseModel):
    agent: str  # cost | performance | resource | application
    passed: bool
    detail: str
    figures: dict[str, float] = Field(default_factory=dict)


class SimilarOutcome(BaseModel):
    recommendation_id: str
    similarity: float
    rolled_back: bool
    realized_monthly_savings_usd: float
    quality_delta_pct: float
    summary: str


class RiskAssessment(BaseModel):
    level: Risk
    score: float = Field(ge=0, le=1)
    method: str  # "llm:<model>" or "deterministic (no LLM configured)" / "deterministic (LLM failed: ...)"
    note: str
    factors: list[str] = Field(default_factory=list)
    similar_outcomes: list[SimilarOutcome] = Field(default_factory=list)


class Evidence(BaseModel):
    """The figures a capability decided on. Subclass it per kind with ``kind: Literal["<kind>"]``.

    Subclasses register themselves by their kind, so a stored recommendation's evidence reads back as the
    right type (a union discriminated by ``kind`` that grows with the capabilities, including one defined
    in a test module). ``reasons`` says in words why, for people.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    reasons: list[str] = Field(default_factory=list)

    _by_kind: ClassVar[dict[str, type[Evidence]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if isinstance(kind, str) and kind:
            Evidence._by_kind[kind] = cls

    @classmethod
    def parse(cls, data: Any) -> Evidence:
        """The registered evidence type for ``data["kind"]``; unregistered kinds keep their fields as-is."""
        if isinstance(data, Evidence):
            return data
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"evidence: expected an object with a 'kind', got {type(data).__name__}")
        model = Evidence._by_kind.get(str(data["kind"]), UnregisteredEvidence)
        return model.model_validate(data)


class UnregisteredEvidence(Evidence):
    """Evidence of a kind this process does not define (e.g. read back by the CLI): shown, not acted on."""

    model_config = ConfigDict(extra="allow")


class Estimate(BaseModel):
    """What a change is expected to do, in every currency a capability may be valued in."""

    monthly_savings_usd: float = 0.0  # negative: it costs more
    p95_latency_change_pct: float = 0.0  # negative: faster
    throughput_change_pct: float = 0.0
    utilization_change_pct: float = 0.0  # GPU utilization, percentage points
    quality_change_pct: float = 0.0  # negative: worse


class Recommendation(BaseModel):
    id: str
    kind: str  # a capability's kind (optiinfra_assets.agents.CAPABILITIES)
    customer_id: str
    deployment_id: str
    status: RecommendationStatus = RecommendationStatus.PENDING
    created_at: datetime
    expires_at: datetime
    current: DeploymentConfig  # the deployment when the change was proposed (what a rollback restores)
    desired: DeploymentConfig  # what the change makes it
    stages: list[int] = Field(default_factory=lambda: list(DecisionSettings().rollout_stages))
    estimate: Estimate = Estimate()
    risk: Risk
    risk_score: float = Field(ge=0, le=1)
    summary: str
    evidence: SerializeAsAny[Evidence]
    features: dict[str, float] = Field(default_factory=dict)  # the scenario, as searched in memory
    validations: list[Validation] = Field(default_factory=list)
    risk_assessment: RiskAssessment | None = None
    # Why it is blocked, escalated or was withdrawn, in words (coordination and validation write it).
    status_reason: str = ""
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_comment: str | None = None

    @field_validator("evidence", mode="before")
    @classmethod
    def _typed_evidence(cls, value: Any) -> Evidence:
        return Evidence.parse(value)

    @property
    def estimated_monthly_savings_usd(self) -> float:
        return self.estimate.monthly_savings_usd


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


class Approval(BaseModel):
    id: int
    recommendation_id: str
    decision: Decision
    by: str
    comment: str
    at: datetime
    via: str  # cli | ui | policy


class ExecutionStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class CheckResult(BaseModel):
    name: str
    passed: bool
    detail: str
    value: float | None = None
    baseline: float | None = None
    threshold: float | None = None
    # A statistical check (the application agent's A/B test between stages) also records its test, the
    # verdict, its p-value or interval and how many samples each arm had.
    test: str | None = None
    verdict: str | None = None
    p_value: float | None = None
    interval: tuple[float, float] | None = None
    samples: dict[str, int] = Field(default_factory=dict)


class StageRecord(BaseModel):
    stage_pct: int  # 10, 50, 100
    target_count: int  # replicas on the new configuration after this stage
    applied_at: datetime
    observation: dict[str, float] = Field(default_factory=dict)
    checks: list[CheckResult] = Field(default_factory=list)  # each check's value, baseline and threshold
    check_passed: bool | None = None
    reason: str = ""


class Execution(BaseModel):
    recommendation_id: str
    status: ExecutionStatus
    stage: int = 0  # last stage percentage applied (0: nothing yet)
    stages: list[StageRecord] = Field(default_factory=list)
    started_at: datetime
    finished_at: datetime | None = None
    reason: str = ""
    run_id: str | None = None
    before: DeploymentConfig | None = None  # the deployment's config when the rollout started


class Outcome(BaseModel):
    recommendation_id: str
    kind: str
    customer_id: str
    deployment_id: str
    rolled_back: bool
    realized_monthly_savings_usd: float
    quality_delta_pct: float
    # The other currencies a change is valued in (the capability says which matter to it).
    latency_p95_delta_pct: float = 0.0
    utilization_delta_pct: float = 0.0  # GPU utilization, percentage points
    features: dict[str, float] = Field(default_factory=dict)  # the scenario, embedded for similarity
    summary: str
    at: datetime


class AuditEntry(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str
    detail: dict[str, Any] = Field(default_factory=dict)
    seq: int | None = None  # position in the hash chain (None: written before the chain existed)
    hash: str | None = None
