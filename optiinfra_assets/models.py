"""Domain models shared by the agents, the stores and the Dagster layer. No Dagster here."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


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
    # Written auto-approval policy: changes at or below this risk are approved by policy. None = off.
    auto_approve_max_risk: Risk | None = None


class Deployment(BaseModel):
    id: str
    customer_id: str
    model: str  # a name from optiinfra_assets.catalog.MODELS
    instance_type: str  # a name from optiinfra_assets.catalog.INSTANCE_TYPES
    replicas: int = Field(ge=1)
    engine: str = "vllm"
    kv_cache_dtype: str = "fp16"
    base_requests_per_s: float = Field(gt=0, description="mean load of the deployment (sandbox)")


class Instance(BaseModel):
    id: str
    deployment_id: str
    instance_type: str
    lifecycle: Lifecycle
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


class Recommendation(BaseModel):
    id: str
    kind: str  # spot_migration, ...
    customer_id: str
    deployment_id: str
    status: RecommendationStatus = RecommendationStatus.PENDING
    created_at: datetime
    expires_at: datetime
    estimated_monthly_savings_usd: float
    risk: Risk
    risk_score: float = Field(ge=0, le=1)
    summary: str
    action: dict[str, Any] = Field(default_factory=dict)  # what the executor will do
    evidence: dict[str, Any] = Field(default_factory=dict)  # figures the agent decided on
    validations: list[Validation] = Field(default_factory=list)
    risk_assessment: RiskAssessment | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_comment: str | None = None


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


class StageRecord(BaseModel):
    stage_pct: int  # 10, 50, 100
    target_count: int  # replicas on the new configuration after this stage
    applied_at: datetime
    observation: dict[str, float] = Field(default_factory=dict)
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
    before: dict[str, Any] = Field(default_factory=dict)  # snapshot needed to roll back


class Outcome(BaseModel):
    recommendation_id: str
    kind: str
    customer_id: str
    deployment_id: str
    rolled_back: bool
    realized_monthly_savings_usd: float
    quality_delta_pct: float
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
