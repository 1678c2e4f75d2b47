"""The seam every capability of the four agents plugs into (Karpenter's disruption ``Method``, in Python).

A capability is one module in its agent's folder defining one :class:`Capability` subclass: its kind, its
agent, the objective it serves, how it turns a :class:`FleetSnapshot` into :class:`Proposal` s with typed
evidence, which other agents must validate them, its stage plan and per-stage checks, its features for
decision memory and how its outcome is valued. ``optiinfra_assets.agents.CAPABILITIES`` lists them once;
the workflow, assets, CLI, registry and coordination iterate that list and never name a kind.

A monitor that produces findings rather than changes is a :class:`Detector` (same idea, listed in
``DETECTORS``).

Nothing here touches a store or Dagster: analysis takes a snapshot and returns proposals.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from pydantic import BaseModel, Field

from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import (
    CheckResult,
    Customer,
    Deployment,
    DeploymentConfig,
    Estimate,
    Evidence,
    Risk,
    Validation,
)
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot


class Objective(StrEnum):
    """What a change is for; coordination ranks them in this order (first wins)."""

    CUSTOMER = "customer"  # a customer preference
    QUALITY = "quality"  # no quality drop over the gate
    PERFORMANCE = "performance"  # latency/throughput SLOs
    COST = "cost"


PRIORITY: tuple[Objective, ...] = tuple(Objective)


# ---- proposals ------------------------------------------------------------------------------------


class Proposal(BaseModel):
    """A change a capability proposes for one deployment, before validation, risk and storage."""

    kind: str
    customer_id: str
    deployment_id: str
    current: DeploymentConfig
    desired: DeploymentConfig
    evidence: Evidence
    estimate: Estimate
    risk_score: float = Field(ge=0, le=1)
    summary: str


class Skip(BaseModel):
    """A deployment a capability looked at and proposes nothing for, and why (shown on its asset)."""

    deployment_id: str
    reason: str


# ---- stage checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageContext:
    """What a per-stage check may read: the observation of the stage and the deployment's baselines."""

    pct: int
    observation: dict[str, float]
    baselines: dict[str, BaselineStat]  # the deployment's whole-week baselines when the rollout started
    slo_p95_latency_ms: float
    deployment_id: str
    settings: DecisionSettings
    # Per-request samples of the stage by arm (``quality_canary``, ``quality_control``, ``latency_...``)
    # for A/B tests, and which look of how many this stage is (the stages of the rollout).
    samples: Mapping[str, Sequence[float]] = field(default_factory=dict)
    look: int = 1
    looks: int = 1

    def ab_arms(self, metric: str) -> tuple[Sequence[float], Sequence[float]] | None:
        """The stage's (canary, control) samples of ``metric``, or None when either arm has none."""
        canary, control = self.samples.get(f"{metric}_canary", ()), self.samples.get(f"{metric}_control", ())
        return (canary, control) if len(canary) and len(control) else None

    def ab_design(self) -> dict[str, float | int]:
        """The A/B test's design for this stage: alpha over all looks, which look this is, minimum samples."""
        s = self.settings
        return {"alpha": s.ab_alpha, "look": self.look, "looks": self.looks, "min_samples": s.ab_min_samples}


StageCheck = Callable[[StageContext], CheckResult]


# ---- the capability -------------------------------------------------------------------------------


class Capability(ABC):
    """One way an agent improves the fleet. Subclasses set the class variables and implement analyze."""

    kind: ClassVar[str]
    agent: ClassVar[str]
    objective: ClassVar[Objective]
    description: ClassVar[str]
    evidence_model: ClassVar[type[Evidence]]
    # Agents asked to validate each proposal (their validators judge any config: see agents.validation).
    validators: ClassVar[tuple[str, ...]] = ("performance", "resource", "application")
    # Percentages of the change applied per stage, checks after each; None: DecisionSettings.rollout_stages.
    stages: ClassVar[tuple[int, ...] | None] = None
    # Checks between stages; empty means the change is applied at once with nothing to watch.
    stage_checks: ClassVar[tuple[StageCheck, ...]] = ()
    # Advice only (e.g. a purchase, which is a person's act): decided through the same gate, but its desired
    # config is its current one and the executor records the decision without touching the fleet.
    advice_only: ClassVar[bool] = False
    # The Outcome figures it is judged by, the one it exists for first (money, latency, utilization,
    # quality: see models.Outcome); the outcome's summary leads with them.
    valued_by: ClassVar[tuple[str, ...]] = ("realized_monthly_savings_usd", "quality_delta_pct")

    def policy_approval(self, current: DeploymentConfig, desired: DeploymentConfig) -> str | None:
        """The capability's own written policy, if a change like this one is approved without a person: the
        policy's text (recorded as the approval's comment), or None for the approval gate. None by default."""
        return None

    @property
    def asset_name(self) -> str:
        """The Dagster asset its recommendations materialize as."""
        return f"{self.kind}_recommendations"

    @abstractmethod
    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterable[Proposal | Skip]:
        """Proposals (and skips, with reasons) for the fleet in ``snapshot``. Pure: no store, no clock."""

    def features(self, proposal: Proposal) -> dict[str, float]:
        """The scenario as fixed numeric features in ~0..1, for decision memory (same keys every time).

        The default describes the change generically; a capability overrides it with what matters to it.
        """
        est = proposal.estimate
        return {
            "savings_log": _clamp01(math.log10(1.0 + max(est.monthly_savings_usd, 0.0)) / 6.0),
            "latency_change": _clamp01(0.5 + est.p95_latency_change_pct / 200.0),
            "quality_change": _clamp01(0.5 + est.quality_change_pct / 20.0),
            "replicas_log": _clamp01(math.log10(1.0 + proposal.desired.replicas) / 3.0),
            "risk_score": proposal.risk_score,
        }


class PerDeploymentCapability(Capability):
    """A capability that judges each deployment on its own (most do; consolidation needs the whole fleet).

    ``analyze`` walks the fleet once: a deployment of an unknown customer is skipped, one with a change
    under way is skipped when ``change_under_way`` gives a reason, and every other one goes to
    ``analyze_deployment``, whose reason string becomes the deployment's :class:`Skip`.
    """

    # The skip reason for a deployment whose rollout is still going; None: looked at like any other.
    change_under_way: ClassVar[str | None] = None

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterator[Proposal | Skip]:
        for deployment in snapshot.deployments:
            customer = snapshot.customer_by_id.get(deployment.customer_id)
            if customer is None:
                yield Skip(deployment_id=deployment.id, reason=f"unknown customer '{deployment.customer_id}'")
                continue
            if self.change_under_way is not None and deployment.rollout_to is not None:
                yield Skip(deployment_id=deployment.id, reason=self.change_under_way)
                continue
            outcome = self.analyze_deployment(snapshot, customer, deployment, settings)
            yield Skip(deployment_id=deployment.id, reason=outcome) if isinstance(outcome, str) else outcome

    @abstractmethod
    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | Skip | str:
        """The proposal for one deployment of a known customer, or why there is none. Pure."""


class Finding(BaseModel):
    """Something a detector noticed: an anomaly, a forecast crossing a line, an idle GPU."""

    detector: str
    customer_id: str
    deployment_id: str
    severity: Risk  # low: informational, medium: worth a look, high: something is wrong
    metric: str
    summary: str
    value: float | None = None
    expected: float | None = None
    since: str | None = None  # ISO time the condition started, where known
    explanation: str = ""


# The checks on a capability's and a detector's asset (assets/analysis.py), named once for the CLI too.
ANALYSIS_CHECK = "analysis_ok"
FINDINGS_CHECK = "no_high_severity_findings"


class Detector(ABC):
    """A monitor: turns a snapshot into findings (an asset, with a check failing on high severity)."""

    name: ClassVar[str]
    agent: ClassVar[str]
    description: ClassVar[str]

    @property
    def asset_name(self) -> str:
        """The Dagster asset its findings materialize as."""
        return self.name

    @abstractmethod
    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]: ...


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


def risk_level(score: float, settings: DecisionSettings) -> Risk:
    """Map a 0..1 risk score to a level with the settings' bands."""
    if score < settings.low_risk_below:
        return Risk.LOW
    return Risk.MEDIUM if score < settings.high_risk_from else Risk.HIGH


# ---- validation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationRequest:
    """What another agent judges: a deployment moving from ``current`` to ``proposed``, and why."""

    customer: Customer
    deployment: Deployment
    current: DeploymentConfig
    proposed: DeploymentConfig
    evidence: Evidence
    baselines: dict[str, BaselineStat]  # the deployment's whole-week baselines
    settings: DecisionSettings

    def peak_requests_per_s(self) -> float:
        """The deployment's peak load: the baseline's p95 of requests/s per instance times the replicas
        that served it, plus the settings' growth margin. 0 without a baseline."""
        stat = self.baselines.get("requests_per_s")
        if stat is None:
            return 0.0
        return stat.p95 * self.current.replicas * (1.0 + self.settings.peak_growth_margin)


Validator = Callable[[ValidationRequest], Validation]
