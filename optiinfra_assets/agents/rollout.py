"""The staged executor: applies an approved recommendation 10% -> 50% -> 100%, checking each stage, and
rolls back automatically when quality drops over 5% or latency regresses.

General over change kinds: a recommendation's ``action["kind"]`` picks an :class:`ActionKind` from
:data:`ACTIONS`, which says how many replicas a stage moves, how to apply it and how to roll back. Only
``spot_migration`` is registered so far; another kind plugs in with :func:`register_action`.

Crash safety: every stage is recorded in the state store (``execution.stage`` and its StageRecord)
before the executor soaks, so a killed run leaves a record and the next run resumes from that stage,
re-checking it first. Stages are applied as idempotent desired states (exactly N replicas on the new
configuration), so re-applying a stage never launches twice.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from optiinfra_assets.agents.application import quality_check
from optiinfra_assets.agents.baselines import BaselineStat
from optiinfra_assets.agents.cost import SpotAnalysis, spot_scenario_features
from optiinfra_assets.agents.performance import latency_regression
from optiinfra_assets.catalog import instance_type
from optiinfra_assets.models import (
    Customer,
    Decision,
    Execution,
    ExecutionStatus,
    Instance,
    Lifecycle,
    Outcome,
    Recommendation,
    RecommendationStatus,
    StageRecord,
)
from resources.memory_store import MemoryStore
from resources.state_store import StateStore
from resources.targets import Target

STAGES: tuple[int, ...] = (10, 50, 100)
HOURS_PER_MONTH = 730.0
ACTOR = "executor"
FINISHED = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.ROLLED_BACK, ExecutionStatus.FAILED})
RUNNABLE = (RecommendationStatus.APPROVED, RecommendationStatus.EXECUTING)


class NotApprovedError(RuntimeError):
    """The recommendation may not be executed (not approved, or no approval on record); nothing changed."""


class UnknownActionError(ValueError):
    """No executor is registered for the recommendation's action kind; nothing changed."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _no_log(_: str) -> None:
    return None


@dataclass
class RolloutContext:
    state: StateStore
    target: Target
    quality_baseline: BaselineStat | None
    latency_baseline: BaselineStat | None
    memory: MemoryStore
    soak_s: float = 0.0
    observe_s: int = 60
    clock: Callable[[], datetime] = _utc_now
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = _no_log


# ---- the action registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionKind:
    """How one kind of change is rolled out.

    ``stage_count(rec, pct)``: replicas on the new configuration after the stage (a desired state).
    ``apply(ctx, rec, count)``: make it so, idempotently and make-before-break; returns instance ids touched.
    ``roll_back(ctx, rec, execution)``: return to ``execution.before``; returns instance ids touched.
    ``features(rec)``: the scenario vector remembered with the outcome.
    """

    stage_count: Callable[[Recommendation, int], int]
    apply: Callable[[RolloutContext, Recommendation, int], list[str]]
    features: Callable[[Recommendation], dict[str, float]]
    roll_back: Callable[[RolloutContext, Recommendation, Execution], list[str]] = field(
        default=lambda ctx, rec, execution: ctx.target.restore(rec.deployment_id, execution.before)
    )


ACTIONS: dict[str, ActionKind] = {}


def register_action(kind: str, action: ActionKind) -> None:
    ACTIONS[kind] = action


def action_of(rec: Recommendation) -> ActionKind:
    kind = str(rec.action.get("kind", rec.kind))
    if kind not in ACTIONS:
        raise UnknownActionError(
            f"recommendation '{rec.id}': no executor for action kind '{kind}' "
            f"(registered: {', '.join(sorted(ACTIONS)) or 'none'})"
        )
    return ACTIONS[kind]


def moved_at(replicas: int, pct: int) -> int:
    """Replicas moved once ``pct`` percent of the change is applied: rounded up, so 10% moves at least one."""
    return math.ceil(replicas * pct / 100 - 1e-9)


def _spot_stage_count(rec: Recommendation, pct: int) -> int:
    moved = int(rec.action["replicas"])
    # Replicas already on the target lifecycle when the change was planned stay there.
    already = max(int(rec.evidence.get("replicas", moved)) - moved, 0)
    return already + moved_at(moved, pct)


def _spot_apply(ctx: RolloutContext, rec: Recommendation, count: int) -> list[str]:
    lifecycle = Lifecycle(rec.action.get("to_lifecycle", Lifecycle.SPOT.value))
    return ctx.target.set_lifecycle_count(rec.deployment_id, lifecycle, count)


def _spot_features(rec: Recommendation) -> dict[str, float]:
    # The features the proposal searched memory with, so the outcome lands where that search looks.
    stored = rec.evidence.get("features")
    if stored:
        return {k: float(v) for k, v in stored.items()}
    return spot_scenario_features(SpotAnalysis.model_validate(rec.evidence))


register_action(
    "spot_migration",
    ActionKind(stage_count=_spot_stage_count, apply=_spot_apply, features=_spot_features),
)


# ---- approval --------------------------------------------------------------------------------------


def _has_approval(state: StateStore, rec_id: str) -> bool:
    approval = state.get_approval(rec_id)
    return approval is not None and approval.decision == Decision.APPROVE


def _check_approved(state: StateStore, rec: Recommendation) -> None:
    """Re-check the approval when the execution runs, not when it was scheduled."""
    if rec.status not in RUNNABLE:
        raise NotApprovedError(
            f"recommendation '{rec.id}' is {rec.status.value}, not approved: nothing was changed"
        )
    if not _has_approval(state, rec.id):
        raise NotApprovedError(
            f"recommendation '{rec.id}' is {rec.status.value} but has no approval on record: "
            "nothing was changed"
        )


# ---- checks ----------------------------------------------------------------------------------------


def check_stage(
    ctx: RolloutContext, customer: Customer, pct: int, observation: dict[str, float]
) -> tuple[bool, str]:
    """(passed, why): quality within 5% of its baseline, then p95 latency vs the SLO and its baseline."""
    if ctx.quality_baseline is None or ctx.quality_baseline.n == 0:
        return False, f"{pct}% stage: no quality baseline to check against, so the change cannot be judged"
    quality = quality_check(observation["quality_mean"], ctx.quality_baseline)
    if not quality.passed:
        return False, f"quality check failed at the {pct}% stage: {quality.detail}"
    p95, slo = observation["latency_p95_ms"], customer.slo_p95_latency_ms
    if ctx.latency_baseline is not None and ctx.latency_baseline.n > 0:
        regressed, why = latency_regression(p95, ctx.latency_baseline, slo)
    else:
        regressed = p95 > slo
        why = (
            f"p95 {p95:.0f} ms {'breaks' if regressed else 'is within'} the SLO of {slo:.0f} ms (no baseline)"
        )
    if regressed:
        return False, f"latency check failed at the {pct}% stage: {why}"
    return True, f"{pct}% stage passed: {quality.detail}; {why}"


# ---- execution -------------------------------------------------------------------------------------


def execute(ctx: RolloutContext, rec_id: str, run_id: str | None) -> Execution:
    """Roll out an approved recommendation, or resume its interrupted rollout; return the execution.

    A finished execution is returned as is (a change is never applied twice). Raises NotApprovedError
    (nothing changed) unless the recommendation is approved, or executing from a resumed run, and has an
    approval on record. An unexpected error restores the snapshot, marks the execution failed and is
    re-raised; a BaseException (the run killed) leaves the execution running for a later resume.
    """
    state = ctx.state
    existing = state.get_execution(rec_id)
    if existing is not None and existing.status in FINISHED:
        _ensure_outcome(ctx, state.get_recommendation(rec_id), existing)
        return existing
    rec = state.get_recommendation(rec_id)
    _check_approved(state, rec)
    action = action_of(rec)
    customer = state.get_customer(rec.customer_id)
    if not state.set_recommendation_status(rec_id, RecommendationStatus.EXECUTING, expected=RUNNABLE):
        raise NotApprovedError(f"recommendation '{rec_id}' changed status meanwhile: nothing was changed")
    execution = _start(ctx, rec, run_id, existing)
    try:
        execution = _run_stages(ctx, rec, action, customer, execution)
    except Exception as exc:
        _fail(ctx, rec, action, execution, exc)
        raise
    _ensure_outcome(ctx, rec, execution)
    return execution


def _start(
    ctx: RolloutContext, rec: Recommendation, run_id: str | None, existing: Execution | None
) -> Execution:
    if existing is not None:
        ctx.state.audit(
            ACTOR, "execution_resumed", "recommendation", rec.id, {"run_id": run_id, "stage": existing.stage}
        )
        ctx.log(f"{rec.id}: resuming at the {existing.stage}% stage")
        return existing
    before = ctx.target.snapshot(rec.deployment_id)
    # Returns the existing execution if another run created it meanwhile: both then resume the same one.
    execution = ctx.state.start_execution(rec.id, run_id, before=before, now=ctx.clock())
    ctx.log(f"{rec.id}: execution started")
    return execution


def _plan(rec: Recommendation, from_stage: int) -> list[int]:
    """The stages left: from the recorded one (re-checked first) on."""
    stages = [int(s) for s in rec.action.get("stages", STAGES)]
    return [s for s in stages if s >= from_stage] if from_stage else stages


def _stage_record(execution: Execution, pct: int, count: int, now: datetime) -> StageRecord:
    for record in execution.stages:
        if record.stage_pct == pct:  # a resumed stage: re-checked in place, not recorded twice
            record.target_count, record.applied_at = count, now
            return record
    record = StageRecord(stage_pct=pct, target_count=count, applied_at=now)
    execution.stages.append(record)
    return record


def _run_stages(
    ctx: RolloutContext, rec: Recommendation, action: ActionKind, customer: Customer, execution: Execution
) -> Execution:
    for pct in _plan(rec, execution.stage):
        record = _apply_stage(ctx, rec, action, execution, pct)
        ctx.sleep(ctx.soak_s)
        _heal(ctx, rec, action, record)
        observation = ctx.target.observe(rec.deployment_id, ctx.observe_s)
        passed, reason = check_stage(ctx, customer, pct, observation)
        record.observation = {**record.observation, **observation}
        record.check_passed, record.reason = (
            passed,
            (f"{record.reason}; {reason}" if record.reason else reason),
        )
        ctx.state.save_execution(execution)
        _audit(ctx, rec, "stage_checked", {"stage_pct": pct, "passed": passed, "reason": reason})
        ctx.log(f"{rec.id}: {reason}")
        if not passed:
            return _roll_back(ctx, rec, action, execution, reason)
    return _finish(
        ctx, rec, execution, ExecutionStatus.SUCCEEDED, "all stages passed", RecommendationStatus.EXECUTED
    )


def _apply_stage(
    ctx: RolloutContext, rec: Recommendation, action: ActionKind, execution: Execution, pct: int
) -> StageRecord:
    count = action.stage_count(rec, pct)
    changed = action.apply(ctx, rec, count)
    record = _stage_record(execution, pct, count, ctx.clock())
    execution.stage = pct
    # Saved before soaking: a run killed during the soak leaves this stage on record to resume from.
    ctx.state.save_execution(execution)
    _audit(ctx, rec, "stage_applied", {"stage_pct": pct, "target_count": count, "changed": changed})
    ctx.log(f"{rec.id}: {pct}% stage applied ({count} replicas on the new configuration)")
    return record


def _heal(ctx: RolloutContext, rec: Recommendation, action: ActionKind, record: StageRecord) -> None:
    """Replace instances the cloud reclaimed during the soak, then re-assert the stage's desired state.

    The record is saved with the stage's check that follows."""
    healed = ctx.target.heal(rec.deployment_id)
    if not healed:
        return
    action.apply(ctx, rec, record.target_count)
    note = f"spot loss during the {record.stage_pct}% stage: replaced {', '.join(healed)}"
    record.reason = f"{record.reason}; {note}" if record.reason else note
    record.observation["healed_instances"] = record.observation.get("healed_instances", 0.0) + len(healed)
    _audit(ctx, rec, "spot_loss_healed", {"stage_pct": record.stage_pct, "replaced": healed})
    ctx.log(f"{rec.id}: {note}")


def _roll_back(
    ctx: RolloutContext, rec: Recommendation, action: ActionKind, execution: Execution, reason: str
) -> Execution:
    restored = action.roll_back(ctx, rec, execution)
    _audit(ctx, rec, "rolled_back", {"reason": reason, "changed": restored})
    return _finish(ctx, rec, execution, ExecutionStatus.ROLLED_BACK, reason, RecommendationStatus.ROLLED_BACK)


def _finish(
    ctx: RolloutContext,
    rec: Recommendation,
    execution: Execution,
    status: ExecutionStatus,
    reason: str,
    rec_status: RecommendationStatus,
) -> Execution:
    execution.status, execution.reason, execution.finished_at = status, reason, ctx.clock()
    ctx.state.save_execution(execution)
    ctx.state.set_recommendation_status(rec.id, rec_status, expected=[RecommendationStatus.EXECUTING])
    _audit(ctx, rec, f"execution_{status.value}", {"reason": reason, "stage": execution.stage})
    ctx.log(f"{rec.id}: execution {status.value}: {reason}")
    return execution


def _fail(
    ctx: RolloutContext, rec: Recommendation, action: ActionKind, execution: Execution, exc: Exception
) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    try:
        action.roll_back(ctx, rec, execution)
    except Exception as restore_exc:  # still mark it failed; say the fleet may be half-changed
        reason += f"; restoring the snapshot also failed: {type(restore_exc).__name__}: {restore_exc}"
    _finish(ctx, rec, execution, ExecutionStatus.FAILED, reason, RecommendationStatus.FAILED)


def _audit(ctx: RolloutContext, rec: Recommendation, action: str, detail: dict[str, Any]) -> None:
    ctx.state.audit(ACTOR, action, "recommendation", rec.id, detail)


# ---- outcome ---------------------------------------------------------------------------------------


def fleet_usd_hour(instances: list[Instance]) -> float:
    """What the running instances cost per hour at catalog prices."""
    return sum(instance_type(i.instance_type).price_usd_hour(i.lifecycle) for i in instances)


def _before_usd_hour(ctx: RolloutContext, execution: Execution, rec: Recommendation) -> float:
    """What the deployment cost per hour before the change: the snapshot's lifecycle mix at catalog prices."""
    counts = execution.before.get("lifecycle_counts")
    if isinstance(counts, dict) and counts:
        itype = instance_type(ctx.state.get_deployment(rec.deployment_id).instance_type)
        return sum(int(n) * itype.price_usd_hour(Lifecycle(lc)) for lc, n in counts.items() if int(n))
    # A snapshot without the mix (another target): price the fleet the analysis saw.
    ev = rec.evidence
    on_demand, total = int(ev.get("on_demand_replicas", 0)), int(ev.get("replicas", 0))
    spot_price = float(ev.get("spot_usd_hour") or 0.0)
    return on_demand * float(ev.get("ondemand_usd_hour", 0.0)) + (total - on_demand) * spot_price


def _quality_delta_pct(ctx: RolloutContext, execution: Execution) -> float:
    observed = [s.observation["quality_mean"] for s in execution.stages if "quality_mean" in s.observation]
    base = ctx.quality_baseline
    if not observed or base is None or base.median <= 0:
        return 0.0
    return round((observed[-1] - base.median) / base.median * 100.0, 4)


def build_outcome(ctx: RolloutContext, rec: Recommendation, execution: Execution) -> Outcome:
    rolled_back = execution.status != ExecutionStatus.SUCCEEDED
    savings = 0.0
    if not rolled_back:
        after = fleet_usd_hour(ctx.state.list_instances(rec.deployment_id))
        savings = round((_before_usd_hour(ctx, execution, rec) - after) * HOURS_PER_MONTH, 2)
    delta = _quality_delta_pct(ctx, execution)
    verdict = f"rolled back at {execution.stage}%: {execution.reason}" if rolled_back else "succeeded"
    return Outcome(
        recommendation_id=rec.id,
        kind=rec.kind,
        customer_id=rec.customer_id,
        deployment_id=rec.deployment_id,
        rolled_back=rolled_back,
        realized_monthly_savings_usd=savings,
        quality_delta_pct=delta,
        features=action_of(rec).features(rec),
        summary=f"{rec.kind} of {rec.deployment_id} {verdict}; quality {delta:+.2f}%, saves ${savings:,.0f}/month",
        at=execution.finished_at or ctx.clock(),
    )


def _ensure_outcome(ctx: RolloutContext, rec: Recommendation, execution: Execution) -> None:
    """Record the outcome of a finished rollout in the state store and in memory, once.

    A failed execution is an executor or target error, not evidence about the scenario: not remembered.
    Remembering is idempotent, so a finished execution seen again re-remembers its stored outcome: that
    repairs memory if the run died between the two writes.
    """
    if execution.status not in (ExecutionStatus.SUCCEEDED, ExecutionStatus.ROLLED_BACK):
        return
    stored = ctx.state.get_outcome(rec.id)
    if stored is not None:
        ctx.memory.remember(stored)
        return
    outcome = build_outcome(ctx, rec, execution)
    ctx.state.add_outcome(outcome)
    ctx.memory.remember(outcome)
    _audit(ctx, rec, "outcome_recorded", outcome.model_dump(mode="json", exclude={"features"}))
