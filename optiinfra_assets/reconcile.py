"""The reconciler: every change reaches a final state, and the fleet its desired state.

A change can be left half-way by things the executor cannot see from inside: its worker killed more times
than it is resumed, an error before its execution record existed, a run lost between the sensor and the
daemon, a spot instance reclaimed after the rollout. The reconciler compares the recommendations and
executions with the fleet and with what is known of the executor's runs, and drives each disagreement to
a final state:

* a finished execution whose recommendation still says approved/executing: the recommendation follows
  (a failed one restores the fleet to the config before the change first);
* an execution still 'running' that no run is applying any more: rolled back to the config before the
  change and marked failed, saying why (resuming a dead run is ``execution_failure_sensor``'s, which is
  told of every failure; the reconciler acts only once that had its chance);
* an approved or executing recommendation with no execution whose run failed (or whose deployment is
  gone): marked failed with the reason; nothing was applied;
* a deployment left mid-rollout by nobody: back to its recorded config; one short of its recorded config
  (capacity lost outside a rollout): healed, the missing instances re-launched.

Plain Python: what is known of Dagster's runs comes in as :class:`RunFacts`, or not at all (the CLI
without a Dagster instance), in which case a change counts as abandoned once nothing happened to it for
longer than the executor may run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, Field

from optiinfra_assets.models import (
    Deployment,
    DeploymentConfig,
    Execution,
    ExecutionStatus,
    Recommendation,
    RecommendationStatus,
)
from resources.state_store import RecommendationError, StateStore
from resources.targets import Target, pools

ACTOR = "reconciler"
# Run monitoring fails an executor run that outlives this (the `dagster/max_runtime` tag on every executor
# run): past it, a change nothing happened to has no live run.
EXECUTOR_MAX_RUNTIME = timedelta(minutes=30)
# After an executor run ends, the failure sensor may still resume it: the reconciler waits this long.
RESUME_GRACE = timedelta(minutes=5)
BEING_CHANGED = (RecommendationStatus.APPROVED, RecommendationStatus.EXECUTING)
FINISHED_AS = {
    ExecutionStatus.SUCCEEDED: RecommendationStatus.EXECUTED,
    ExecutionStatus.ROLLED_BACK: RecommendationStatus.ROLLED_BACK,
    ExecutionStatus.FAILED: RecommendationStatus.FAILED,
}


class Action(StrEnum):
    WAIT = "wait"  # a run is applying it, or may still: nothing to do yet
    FINALIZE = "finalize"  # the recommendation follows its finished execution
    ROLL_BACK = "roll_back"  # the fleet restored to the config before the change; marked failed
    MARK_FAILED = "mark_failed"  # nothing was applied; marked failed with the reason
    HEAL = "heal"  # the fleet re-launches what its recorded config lacks
    RESTORE = "restore"  # a rollout nobody is running: the deployment back to its recorded config


@dataclass(frozen=True)
class RunFacts:
    """What Dagster knows of a recommendation's executor runs."""

    in_flight: bool = False  # a run is queued, starting or running
    failed: int = 0  # runs that failed or were canceled
    last_ended_at: datetime | None = None  # when the last run that is not in flight ended


# What Dagster knows of runs: given, or looked up for the recommendations the reconciler read (looked up
# after reading them, so that a run starting meanwhile is seen as in flight rather than missing).
RunLookup = Mapping[str, RunFacts] | Callable[[list[str]], Mapping[str, RunFacts]]


class Finding(BaseModel):
    """One disagreement, what was done about it, and the result."""

    subject: str  # a recommendation id, or a deployment id for the fleet's own findings
    deployment_id: str
    found: str
    action: Action
    did: str = ""
    error: str = ""  # the action failed: why (the next pass retries)


class ReconcileReport(BaseModel):
    at: datetime
    dry_run: bool = False
    findings: list[Finding] = Field(default_factory=list)

    @property
    def acted(self) -> list[Finding]:
        return [f for f in self.findings if f.action is not Action.WAIT]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.error]


# ---- judging -------------------------------------------------------------------------------------


def _last_activity(rec: Recommendation, execution: Execution | None) -> datetime:
    moments = [rec.decided_at or rec.created_at]
    if execution is not None:
        moments.append(execution.started_at)
        moments += [s.applied_at for s in execution.stages]
    return max(moments)


def may_be_running(
    rec: Recommendation, execution: Execution | None, facts: RunFacts | None, now: datetime
) -> bool:
    """Whether a run may still be applying ``rec``: Dagster's word when known, else recent activity."""
    if facts is None:
        return now - _last_activity(rec, execution) < EXECUTOR_MAX_RUNTIME
    if facts.in_flight:
        return True
    return facts.last_ended_at is not None and now - facts.last_ended_at < RESUME_GRACE


def judge(
    rec: Recommendation,
    execution: Execution | None,
    deployment: Deployment | None,
    facts: RunFacts | None,
    run_failure: str | None,
    now: datetime,
) -> tuple[Action, str]:
    """What to do about one recommendation being changed (or one execution still running), and why.

    ``run_failure`` is the last executor-run failure recorded for it, if any."""
    if execution is not None and execution.status is not ExecutionStatus.RUNNING:
        if rec.status in BEING_CHANGED:
            found = f"execution {execution.status.value} but the recommendation is still {rec.status.value}"
            if execution.status is ExecutionStatus.FAILED and deployment is not None:
                return Action.ROLL_BACK, found
            return Action.FINALIZE, found
        return Action.WAIT, "final"
    if deployment is None:
        return Action.MARK_FAILED, f"deployment '{rec.deployment_id}' no longer exists"
    if may_be_running(rec, execution, facts, now):
        return Action.WAIT, "a run is applying it" if facts and facts.in_flight else "it may still be running"
    if execution is not None:
        why = f"execution running at the {execution.stage}% stage, but no executor run is applying it"
        if rec.status not in BEING_CHANGED:
            why += f" (the recommendation is {rec.status.value})"
        return Action.ROLL_BACK, why
    failed_runs = facts.failed if facts is not None else 0
    if rec.status is RecommendationStatus.EXECUTING or failed_runs or run_failure:
        why = "no execution was recorded and no executor run is applying it"
        return Action.MARK_FAILED, why + (f"; its run failed: {run_failure}" if run_failure else "")
    return Action.WAIT, "approved; approval_sensor launches its executor run"


# ---- acting --------------------------------------------------------------------------------------


def roll_back_and_fail(
    state: StateStore,
    target: Target,
    rec: Recommendation,
    execution: Execution,
    reason: str,
    now: datetime,
    *,
    actor: str = ACTOR,
) -> str:
    """Restore the deployment to the config before the change, then mark the execution and the
    recommendation failed with ``reason`` and what was restored. Returns what was done, in words."""
    to = execution.before if execution.before is not None else rec.current
    actions = target.rollback(rec.deployment_id, to)
    did = f"restored {rec.deployment_id} to its config before the change ({len(actions)} instance change(s))"
    execution.status, execution.finished_at = ExecutionStatus.FAILED, execution.finished_at or now
    execution.reason = f"{execution.reason}; {reason}; {did}" if execution.reason else f"{reason}; {did}"
    state.save_execution(execution)
    state.set_recommendation_status(
        rec.id, RecommendationStatus.FAILED, expected=list(BEING_CHANGED), reason=f"{reason}; {did}"
    )
    state.audit(
        actor, "rolled_back_and_failed", "recommendation", rec.id, {"reason": reason, "actions": actions}
    )
    return did


def _mark_failed(
    state: StateStore, rec: Recommendation, execution: Execution | None, reason: str, now: datetime
) -> str:
    if execution is not None and execution.status is ExecutionStatus.RUNNING:
        execution.status, execution.finished_at, execution.reason = ExecutionStatus.FAILED, now, reason
        state.save_execution(execution)
    state.set_recommendation_status(
        rec.id, RecommendationStatus.FAILED, expected=list(BEING_CHANGED), reason=reason
    )
    state.audit(ACTOR, "marked_failed", "recommendation", rec.id, {"reason": reason})
    return "marked failed; nothing to restore"


def _finalize(
    state: StateStore, rec: Recommendation, execution: Execution, ensure_outcome: Callable[[str], None] | None
) -> str:
    status = FINISHED_AS[execution.status]
    state.set_recommendation_status(
        rec.id,
        status,
        expected=list(BEING_CHANGED),
        reason=f"execution {execution.status.value}: {execution.reason}",
    )
    state.audit(ACTOR, "finalized", "recommendation", rec.id, {"status": status.value})
    if ensure_outcome is not None and execution.status is not ExecutionStatus.FAILED:
        ensure_outcome(rec.id)
        return f"recommendation {status.value}; outcome recorded"
    return f"recommendation {status.value}"


def run_failure(state: StateStore, rec_id: str) -> str | None:
    """The message of the last executor-run failure recorded for ``rec_id`` (by execution_failure_sensor)."""
    failures = [e for e in state.list_audit(entity_id=rec_id) if e.action == "executor_run_failed"]
    if not failures:
        return None
    message = " ".join(str(failures[-1].detail.get("message", "")).split())
    return message[:300] or "no message"


def shortfall(config: DeploymentConfig, running: Counter) -> dict[str, int]:
    """Instances the config asks for that are not running, per pool (in words: type/lifecycle)."""
    out: dict[str, int] = {}
    for (itype, lifecycle, engine), wanted in pools(config).items():
        missing = wanted - running[(itype, lifecycle, engine)]
        if missing > 0:
            out[f"{itype}/{lifecycle.value}"] = missing
    return out


def reconcile(
    state: StateStore,
    target: Target,
    now: datetime,
    runs: RunLookup | None = None,
    *,
    ensure_outcome: Callable[[str], None] | None = None,
    dry_run: bool = False,
) -> ReconcileReport:
    """Find every change whose state disagrees with the fleet or the executor's runs, and every deployment
    short of its recorded config; drive each to a final state (``dry_run``: only say what it would do).

    ``runs``: rec id -> what Dagster knows of its executor runs (a missing id: it has none), or a lookup of
    it for the ids read; None when Dagster is not consulted. ``ensure_outcome(rec_id)`` records the outcome of a finished execution."""
    report = ReconcileReport(at=now, dry_run=dry_run)
    deployments = {d.id: d for d in state.list_deployments()}
    recs = {r.id: r for status in BEING_CHANGED for r in state.list_recommendations(status=status.value)}
    running = {e.recommendation_id: e for e in state.list_executions(status=ExecutionStatus.RUNNING.value)}
    for rec_id in running.keys() - recs.keys():
        recs[rec_id] = state.get_recommendation(rec_id)
    if callable(runs):
        runs = runs(sorted(recs))
    busy: set[str] = set()  # deployments a change is (or may be) under way on: not the fleet pass's
    for rec in sorted(recs.values(), key=lambda r: r.created_at):
        execution = running.get(rec.id) or state.get_execution(rec.id)
        deployment = deployments.get(rec.deployment_id)
        facts = None if runs is None else runs.get(rec.id, RunFacts())
        action, found = judge(rec, execution, deployment, facts, run_failure(state, rec.id), now)
        if action is Action.WAIT:
            if found != "final":
                busy.add(rec.deployment_id)
                report.findings.append(
                    Finding(subject=rec.id, deployment_id=rec.deployment_id, found=found, action=action)
                )
            continue
        finding = Finding(subject=rec.id, deployment_id=rec.deployment_id, found=found, action=action)
        report.findings.append(finding)
        if dry_run:
            busy.add(rec.deployment_id)  # what the fleet pass sees is not what it would be
            continue
        try:
            if action is Action.ROLL_BACK:
                assert execution is not None
                finding.did = roll_back_and_fail(state, target, rec, execution, found, now)
            elif action is Action.MARK_FAILED:
                finding.did = _mark_failed(state, rec, execution, found, now)
            elif action is Action.FINALIZE:
                assert execution is not None
                finding.did = _finalize(state, rec, execution, ensure_outcome)
        except (RecommendationError, KeyError, ValueError, OSError) as exc:  # the next pass retries
            finding.error = f"{type(exc).__name__}: {exc}"
            busy.add(rec.deployment_id)
    _reconcile_fleet(state, target, busy, report, dry_run)
    return report


def _reconcile_fleet(
    state: StateStore, target: Target, busy: set[str], report: ReconcileReport, dry_run: bool
) -> None:
    """Deployments no change is under way on: an abandoned rollout goes back to the recorded config;
    capacity lost since (a spot reclaim after the rollout) is re-launched."""
    running = Counter(
        (i.deployment_id, i.instance_type, i.lifecycle, i.engine) for i in state.list_instances()
    )
    for deployment in state.list_deployments():
        if deployment.id in busy:
            continue
        if deployment.rollout_to is not None:
            action = Action.RESTORE
            found = (
                f"a rollout to {deployment.rollout_fraction:.0%} of a new config that no change is running"
            )
        else:
            have = Counter({k[1:]: n for k, n in running.items() if k[0] == deployment.id})
            missing = shortfall(deployment.config, have)
            if not missing:
                continue
            action = Action.HEAL
            found = "short of its recorded config: " + ", ".join(
                f"{n} x {pool}" for pool, n in missing.items()
            )
        finding = Finding(subject=deployment.id, deployment_id=deployment.id, found=found, action=action)
        report.findings.append(finding)
        if dry_run:
            continue
        try:
            if action is Action.RESTORE:
                actions = target.rollback(deployment.id, deployment.config)
            else:
                actions = target.heal(deployment.id)
            finding.did = "; ".join(actions) or "nothing was needed"
            state.audit(
                ACTOR, action.value, "deployment", deployment.id, {"found": found, "actions": actions}
            )
        except (KeyError, ValueError, OSError) as exc:
            finding.error = f"{type(exc).__name__}: {exc}"


# ---- a person's rollback ---------------------------------------------------------------------------


def roll_back_by_person(
    state: StateStore,
    target: Target,
    rec_id: str,
    by: str,
    comment: str,
    now: datetime,
    runs: Mapping[str, RunFacts] | None = None,
) -> Execution:
    """A person rolls a change back: the deployment returns to its config before the change; the execution
    and the recommendation become rolled_back, with who and why in the audit log.

    Refused (RecommendationError naming it) when there is nothing to roll back, when a run may still be
    applying it (it would re-apply its next stage), or when the deployment changed since (another change
    was applied on top, which the rollback would undo)."""
    if not by or not by.strip():
        raise ValueError(f"by: must name who rolls back, got {by!r}")
    by = by.strip()
    rec = state.get_recommendation(rec_id)
    execution = state.get_execution(rec_id)
    if execution is None:
        raise RecommendationError(f"recommendation '{rec_id}' has no execution: nothing to roll back")
    if execution.status is ExecutionStatus.ROLLED_BACK:
        raise RecommendationError(f"recommendation '{rec_id}' is already rolled back: {execution.reason}")
    facts = None if runs is None else runs.get(rec_id, RunFacts())
    if execution.status is ExecutionStatus.RUNNING and may_be_running(rec, execution, facts, now):
        raise RecommendationError(
            f"recommendation '{rec_id}' is being applied by a run (stage {execution.stage}%); "
            "wait for it, or cancel the run in Dagster first"
        )
    current = target.current(rec.deployment_id)
    before = execution.before if execution.before is not None else rec.current
    if current not in (before, rec.desired):
        drift = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in rec.desired.changes(current).items())
        raise RecommendationError(
            f"deployment '{rec.deployment_id}' changed since this change ({drift}); rolling back would undo that"
        )
    actions = target.rollback(rec.deployment_id, before)
    reason = f"rolled back by {by}: {comment}" if comment else f"rolled back by {by}"
    execution.status, execution.reason, execution.finished_at = ExecutionStatus.ROLLED_BACK, reason, now
    state.save_execution(execution)
    state.set_recommendation_status(
        rec_id,
        RecommendationStatus.ROLLED_BACK,
        expected=[*BEING_CHANGED, RecommendationStatus.EXECUTED, RecommendationStatus.FAILED],
        reason=reason,
    )
    state.audit(by, "rollback", "recommendation", rec_id, {"comment": comment, "actions": actions})
    return execution
