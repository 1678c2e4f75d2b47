"""Rollback on degradation, outside rollouts: a sustained quality drop after a change OptiInfra made rolls
that change back by policy; a drop with nothing of ours to blame is an alert with the evidence.

A rollout's A/B test only watches a change while it is rolled out; a model can go bad an hour later (a
cache that warms into a bad regime, a traffic mix the canary never saw). Two parts, plain Python:

* :class:`QualityDegradation` (a detector): a deployment's hourly mean quality stayed more than the
  quality gate below its baseline (the median of the hours before the drop) for the last
  ``degradation_sustained_hours`` hours. The latest change OptiInfra finished on the deployment within
  ``degradation_blame_window_h`` before the drop began, whose config the deployment still runs, is blamed (a
  change after it began, an autoscaler reacting to it say, did not cause it); the
  finding names it. Without one, the finding is the alert: the hours, the baseline and the worst responses.
* :class:`QualityRollback` (a capability, objective quality): for each blamed finding it proposes the
  deployment's config before the change. Its written policy approves exactly that (a return to the config
  that ran well before the change), so the executor applies it without a person, through the same staged
  path and audit as any change; a person can still reject it before it runs.

The snapshot brings the recently finished changes (``FleetSnapshot.changes``: :class:`Change`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, field_validator

from optiinfra_assets.agents.application import AGENT
from optiinfra_assets.agents.application.quality_drift import _quote
from optiinfra_assets.agents.capability import Capability, Detector, Finding, Objective, Proposal, Skip
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import DeploymentConfig, Estimate, Evidence, Risk
from optiinfra_assets.snapshot import FleetSnapshot

DETECTOR = "quality_degradation"
KIND = "quality_rollback"
# Hours of history before the drop that its baseline needs.
MIN_BASELINE_HOURS = 12


class Change(BaseModel):
    """A change OptiInfra finished applying to a deployment (a succeeded execution)."""

    recommendation_id: str
    kind: str
    deployment_id: str
    finished_at: datetime
    before: DeploymentConfig
    after: DeploymentConfig

    @field_validator("finished_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value  # SQLite returns naive UTC


class Degradation(BaseModel):
    """A sustained drop, and the change blamed for it (None: nothing of ours to blame)."""

    deployment_id: str
    customer_id: str
    since: datetime  # the first hour of the drop (the run of hours below the floor)
    baseline: float
    hours: list[tuple[datetime, float]]  # the drop's hourly means
    drop_pct: float  # of the drop's mean below the baseline
    change: Change | None


def _hour(value: object) -> datetime:
    hour = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return hour.replace(tzinfo=UTC) if hour.tzinfo is None else hour


def find_degradations(snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Degradation]:
    """Every deployment whose last ``degradation_sustained_hours`` hourly means are all more than the
    quality gate below the median of the hours before them, with the change to blame if there is one."""
    found = []
    window = settings.degradation_sustained_hours
    for deployment in snapshot.deployments:
        rows = snapshot.hourly_of("quality", deployment.id)
        if rows.height < window + MIN_BASELINE_HOURS or "quality_score_avg" not in rows.columns:
            continue
        values = rows["quality_score_avg"].to_numpy().astype(np.float64)
        before = values[:-window][np.isfinite(values[:-window])]
        if before.size < MIN_BASELINE_HOURS:
            continue
        baseline = float(np.median(before))
        recent = values[-window:]
        floor = baseline * (1.0 - settings.max_quality_drop_pct / 100.0)
        if baseline <= 0 or not np.all(recent < floor):
            continue
        hours = [_hour(h) for h in rows["hour"][-window:]]
        # The drop began at the first hour of the run below the floor (maybe before the window): a change
        # is to blame only if it came before that.
        first = len(values) - window
        while first > 0 and values[first - 1] < floor:
            first -= 1
        since = _hour(rows["hour"][first])
        found.append(
            Degradation(
                deployment_id=deployment.id,
                customer_id=deployment.customer_id,
                since=since,
                baseline=round(baseline, 4),
                hours=[(h, round(float(v), 4)) for h, v in zip(hours, recent, strict=True)],
                drop_pct=round((baseline - float(recent.mean())) / baseline * 100.0, 2),
                change=_blame(snapshot, deployment.id, deployment.config, since, settings),
            )
        )
    return found


def _blame(
    snapshot: FleetSnapshot,
    deployment_id: str,
    running: DeploymentConfig,
    since: datetime,
    settings: DecisionSettings,
) -> Change | None:
    """The latest change finished on the deployment in the blame window before the drop began, that the
    deployment still runs: undoing it is undoing what came before the drop. A change made after the drop
    began (an autoscaler reacting to the bad answers, say) did not cause it."""
    horizon = timedelta(hours=settings.degradation_blame_window_h)
    candidates = [
        c
        for c in snapshot.changes
        if isinstance(c, Change)
        and c.deployment_id == deployment_id
        and since - horizon <= c.finished_at < since
        and c.kind != KIND  # never blame a rollback: undoing it would re-apply the bad change
    ]
    if not candidates:
        return None
    latest = max(candidates, key=lambda c: c.finished_at)
    return latest if latest.after == running else None


def _evidence_text(d: Degradation) -> str:
    hours = ", ".join(f"{h:%H:%M} {v:.3f}" for h, v in d.hours)
    return f"hourly mean quality {hours} against a baseline of {d.baseline:.3f} ({-d.drop_pct:+.1f}%)"


class QualityDegradation(Detector):
    name: ClassVar[str] = DETECTOR
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Sustained hourly quality drops over the gate outside rollouts: blames the change OptiInfra made "
        "before it (rolled back by policy) or alerts with the evidence."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        findings = []
        for d in find_degradations(snapshot, settings):
            if d.change is not None:
                verdict = (
                    f"after {d.change.kind} {d.change.recommendation_id} (applied "
                    f"{d.change.finished_at:%Y-%m-%d %H:%M} UTC): rolled back by policy ({KIND})"
                )
            else:
                verdict = "no change by OptiInfra to blame: alert"
            findings.append(
                Finding(
                    detector=self.name,
                    customer_id=d.customer_id,
                    deployment_id=d.deployment_id,
                    severity=Risk.HIGH,
                    metric="quality_score",
                    value=d.hours[-1][1],
                    expected=d.baseline,
                    since=d.since.isoformat(),
                    summary=(
                        f"quality of {d.deployment_id} has stayed {d.drop_pct:.1f}% below its baseline for "
                        f"{len(d.hours)} hours; {verdict}"
                    ),
                    explanation=(
                        f"{_evidence_text(d)}; "
                        f"{_quote(snapshot.worst_requests, d.deployment_id, 'quality_score')}"
                    ),
                )
            )
        return findings


class QualityRollbackEvidence(Evidence):
    kind: Literal["quality_rollback"] = KIND
    deployment_id: str
    rolled_back_recommendation_id: str
    rolled_back_kind: str
    change_finished_at: datetime
    baseline_quality: float
    hourly_quality: list[tuple[datetime, float]]
    drop_pct: float


class QualityRollback(Capability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.QUALITY
    description: ClassVar[str] = (
        "Rolls back a change OptiInfra made when quality stays over the gate below baseline after it "
        "(approved by its written policy)."
    )
    evidence_model: ClassVar[type[Evidence]] = QualityRollbackEvidence
    # Back to the config that served before the change: it ran, so it fits and held its SLO.
    validators: ClassVar[tuple[str, ...]] = ()
    stages: ClassVar[tuple[int, ...] | None] = (100,)
    stage_checks = ()
    valued_by: ClassVar[tuple[str, ...]] = ("quality_delta_pct", "realized_monthly_savings_usd")

    def policy_approval(self, current: DeploymentConfig, desired: DeploymentConfig) -> str | None:
        return (
            "application agent policy: a change followed by a sustained quality drop over the gate is "
            "rolled back to the config it replaced"
        )

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterable[Proposal | Skip]:
        deployments = {d.id: d for d in snapshot.deployments}
        for d in find_degradations(snapshot, settings):
            if d.change is None:
                yield Skip(
                    deployment_id=d.deployment_id, reason="quality dropped, but no change of ours to undo"
                )
                continue
            deployment = deployments[d.deployment_id]
            change = d.change
            evidence = QualityRollbackEvidence(
                deployment_id=d.deployment_id,
                rolled_back_recommendation_id=change.recommendation_id,
                rolled_back_kind=change.kind,
                change_finished_at=change.finished_at,
                baseline_quality=d.baseline,
                hourly_quality=d.hours,
                drop_pct=d.drop_pct,
                reasons=[
                    f"{_evidence_text(d)} since {change.kind} {change.recommendation_id} was applied",
                    "the config before that change served at the baseline",
                ],
            )
            yield Proposal(
                kind=self.kind,
                customer_id=d.customer_id,
                deployment_id=d.deployment_id,
                current=deployment.config,
                desired=change.before,
                evidence=evidence,
                estimate=Estimate(quality_change_pct=round(d.drop_pct, 2)),
                risk_score=0.1,  # back to a config known to serve well
                summary=(
                    f"roll back {change.kind} {change.recommendation_id} on {d.deployment_id}: quality "
                    f"{d.drop_pct:.1f}% below baseline for {len(d.hours)} hours since"
                ),
            )
