"""The staged executor: applies an approved recommendation stage by stage (10% -> 50% -> 100% by default),
running its capability's checks after each, and rolls back automatically when one fails.

General over capabilities: a recommendation carries its current and desired DeploymentConfig and its
stages; the target moves a fraction of the way per stage; the capability says which checks run between
stages. Nothing here names a kind.

Crash safety: every stage is recorded in the state store (``execution.stage`` and its StageRecord)
before the executor soaks, so a killed run leaves a record and the next run resumes from that stage,
re-checking it first. Stages are applied as idempotent desired states (a fraction of the way from the
recorded config), so re-applying a stage never launches twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from optiinfra_assets.agents import find_capability
from optiinfra_assets.agents.capability import Capability, StageContext
from optiinfra_assets.catalog import config_usd_hour, instance_type, slice_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import (
    CheckResult,
    Customer,
    Decision,
    DeploymentConfig,
    Execution,
    ExecutionStatus,
    Instance,
    Outcome,
    Recommendation,
    RecommendationStatus,
    StageRecord,
)
from optiinfra_assets.snapshot import BaselineStat
from resources.memory_store import MemoryStore
from resources.state_store import StateStore
from resources.targets import Pool, Target, pools

ACTOR = "executor"
FINISHED = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.ROLLED_BACK, ExecutionStatus.FAILED})
RUNNABLE = (RecommendationStatus.APPROVED, RecommendationStatus.EXECUTING)


class NotApprovedError(RuntimeError):
    """The recommendation may not be executed (not approved, or no approval on record); nothing changed."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _no_log(_: str) -> None:
    return None


@dataclass
class RolloutContext:
    state: StateStore
    target: Target
    memory: MemoryStore
    baselines: dict[str, BaselineStat]  # the deployment's whole-week baselines
    capabilities: tuple[Capability, ...]
    settings: DecisionSettings = field(default_factory=DecisionSettings)
    soak_s: float = 0.0
    observe_s: int = 60
    clock: Callable[[], datetime] = _utc_now
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = _no_log

    def capability_of(self, rec: Recommendation) -> Capability:
        return find_capability(rec.kind, self.capabilities)


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
    ctx: RolloutContext,
    cap: Capability,
    customer: Customer,
    rec: Recommendation,
    pct: int,
    observation: dict[str, float],
    samples: Mapping[str, Sequence[float]] | None = None,
) -> tuple[bool, str, list[CheckResult]]:
    """(passed, why, results): every check the capability declares, in order; the first failure decides.

    ``samples``: the stage's per-request samples by arm, for A/B tests; each stage is one look of them."""
    stage = StageContext(
        pct=pct,
        observation=observation,
        baselines=ctx.baselines,
        slo_p95_latency_ms=customer.slo_p95_latency_ms,
        deployment_id=rec.deployment_id,
        settings=ctx.settings,
        samples=samples or {},
        look=rec.stages.index(pct) + 1 if pct in rec.stages else len(rec.stages),
        looks=len(rec.stages),
    )
    results: list[CheckResult] = []
    for check in cap.stage_checks:
        result = check(stage)
        results.append(result)
        if not result.passed:
            return False, f"{result.name} check failed at the {pct}% stage: {result.detail}", results
    details = "; ".join(r.detail for r in results) or "no checks declared"
    return True, f"{pct}% stage passed: {details}", results


# ---- execution -------------------------------------------------------------------------------------


def execute(ctx: RolloutContext, rec_id: str, run_id: str | None) -> Execution:
    """Roll out an approved recommendation, or resume its interrupted rollout; return the execution.

    A finished execution is returned as is (a change is never applied twice). Raises NotApprovedError
    (nothing changed) unless the recommendation is approved, or executing from a resumed run, and has an
    approval on record. An unexpected error rolls back, marks the execution failed and is re-raised; a
    BaseException (the run killed) leaves the execution running for a later resume.
    """
    state = ctx.state
    existing = state.get_execution(rec_id)
    if existing is not None and existing.status in FINISHED:
        _ensure_outcome(ctx, state.get_recommendation(rec_id), existing)
        return existing
    rec = state.get_recommendation(rec_id)
    _check_approved(state, rec)
    cap = ctx.capability_of(rec)
    if cap.advice_only:
        return _accept_advice(ctx, rec, run_id)
    customer = state.get_customer(rec.customer_id)
    if existing is None:
        _check_base(ctx, rec)
    if not state.set_recommendation_status(rec_id, RecommendationStatus.EXECUTING, expected=RUNNABLE):
        raise NotApprovedError(f"recommendation '{rec_id}' changed status meanwhile: nothing was changed")
    execution = _start(ctx, rec, run_id, existing)
    try:
        execution = _run_stages(ctx, rec, cap, customer, execution)
    except Exception as exc:
        _fail(ctx, rec, execution, exc)
        raise
    _ensure_outcome(ctx, rec, execution)
    return execution


def _accept_advice(ctx: RolloutContext, rec: Recommendation, run_id: str | None) -> Execution:
    """An approved piece of advice: recorded as executed with no stage, the target never called."""
    if not ctx.state.set_recommendation_status(rec.id, RecommendationStatus.EXECUTING, expected=RUNNABLE):
        raise NotApprovedError(f"recommendation '{rec.id}' changed status meanwhile: nothing was changed")
    execution = ctx.state.start_execution(rec.id, run_id, before=rec.current, now=ctx.clock())
    reason = "advice only: approved and recorded; nothing was applied to the fleet (acting on it is a person's act)"
    return _finish(ctx, rec, execution, ExecutionStatus.SUCCEEDED, reason, RecommendationStatus.EXECUTED)


def _check_base(ctx: RolloutContext, rec: Recommendation) -> None:
    """A change is planned from the config it was proposed on; if the deployment changed since (another
    change was applied), applying it would undo that one. Close it instead; the next pass re-proposes."""
    recorded = ctx.target.current(rec.deployment_id)
    if recorded == rec.current:
        return
    drift = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in rec.current.changes(recorded).items())
    reason = f"the deployment changed since this was proposed ({drift}); nothing was changed"
    ctx.state.set_recommendation_status(
        rec.id, RecommendationStatus.EXPIRED, expected=list(RUNNABLE), reason=reason
    )
    _audit(ctx, rec, "stale_refused", {"reason": reason})
    raise NotApprovedError(f"recommendation '{rec.id}': {reason}")


def _start(
    ctx: RolloutContext, rec: Recommendation, run_id: str | None, existing: Execution | None
) -> Execution:
    if existing is not None:
        ctx.state.audit(
            ACTOR, "execution_resumed", "recommendation", rec.id, {"run_id": run_id, "stage": existing.stage}
        )
        ctx.log(f"{rec.id}: resuming at the {existing.stage}% stage")
        return existing
    before = ctx.target.current(rec.deployment_id)
    # Returns the existing execution if another run created it meanwhile: both then resume the same one.
    execution = ctx.state.start_execution(rec.id, run_id, before=before, now=ctx.clock())
    ctx.log(f"{rec.id}: execution started")
    return execution


def _plan(rec: Recommendation, from_stage: int) -> list[int]:
    """The stages left: from the recorded one (re-checked first) on."""
    return [s for s in rec.stages if s >= from_stage] if from_stage else list(rec.stages)


def _on_desired(ctx: RolloutContext, rec: Recommendation) -> int:
    """Running instances that already have the desired shape (type, engine and a lifecycle it asks for)."""
    wanted = set(pools(rec.desired))
    running = ctx.state.list_instances(rec.deployment_id)
    return sum((i.instance_type, i.lifecycle, i.engine) in wanted for i in running)


def canary_pools(rec: Recommendation) -> set[Pool]:
    """The pools the change adds (e.g. spot replicas, a new engine): their instances are the canary arm
    of the A/B test, the deployment's other instances the control."""
    return set(pools(rec.desired)) - set(pools(rec.current))


def _stage_record(execution: Execution, pct: int, count: int, now: datetime) -> StageRecord:
    for record in execution.stages:
        if record.stage_pct == pct:  # a resumed stage: re-checked in place, not recorded twice
            record.target_count, record.applied_at = count, now
            return record
    record = StageRecord(stage_pct=pct, target_count=count, applied_at=now)
    execution.stages.append(record)
    return record


def _run_stages(
    ctx: RolloutContext, rec: Recommendation, cap: Capability, customer: Customer, execution: Execution
) -> Execution:
    for pct in _plan(rec, execution.stage):
        record = _apply_stage(ctx, rec, execution, pct)
        ctx.sleep(ctx.soak_s)
        _heal(ctx, rec, record)
        observation = ctx.target.observe(rec.deployment_id, ctx.observe_s)
        samples = ctx.target.observe_samples(rec.deployment_id, ctx.observe_s, canary_pools(rec))
        passed, reason, results = check_stage(ctx, cap, customer, rec, pct, observation, samples)
        record.observation = {**record.observation, **observation}
        record.checks = results
        record.check_passed, record.reason = (
            passed,
            (f"{record.reason}; {reason}" if record.reason else reason),
        )
        ctx.state.save_execution(execution)
        _audit(ctx, rec, "stage_checked", {"stage_pct": pct, "passed": passed, "reason": reason})
        ctx.log(f"{rec.id}: {reason}")
        if not passed:
            return _roll_back(ctx, rec, execution, reason)
    return _finish(
        ctx, rec, execution, ExecutionStatus.SUCCEEDED, "all stages passed", RecommendationStatus.EXECUTED
    )


def _apply_stage(ctx: RolloutContext, rec: Recommendation, execution: Execution, pct: int) -> StageRecord:
    changed = ctx.target.apply(rec.deployment_id, rec.desired, pct / 100.0)
    count = _on_desired(ctx, rec)
    record = _stage_record(execution, pct, count, ctx.clock())
    execution.stage = pct
    # Saved before soaking: a run killed during the soak leaves this stage on record to resume from.
    ctx.state.save_execution(execution)
    _audit(ctx, rec, "stage_applied", {"stage_pct": pct, "target_count": count, "changed": changed})
    ctx.log(f"{rec.id}: {pct}% stage applied ({count} replicas on the new configuration)")
    return record


def _heal(ctx: RolloutContext, rec: Recommendation, record: StageRecord) -> None:
    """Replace instances the cloud reclaimed during the soak (the stage's desired state stays asserted).

    The record is saved with the stage's check that follows."""
    healed = ctx.target.heal(rec.deployment_id)
    if not healed:
        return
    note = f"spot loss during the {record.stage_pct}% stage: replaced {', '.join(healed)}"
    record.reason = f"{record.reason}; {note}" if record.reason else note
    record.observation["healed_instances"] = record.observation.get("healed_instances", 0.0) + len(healed)
    _audit(ctx, rec, "spot_loss_healed", {"stage_pct": record.stage_pct, "replaced": healed})
    ctx.log(f"{rec.id}: {note}")


def _restore_to(rec: Recommendation, execution: Execution) -> DeploymentConfig:
    return execution.before if execution.before is not None else rec.current


def _roll_back(ctx: RolloutContext, rec: Recommendation, execution: Execution, reason: str) -> Execution:
    restored = ctx.target.rollback(rec.deployment_id, _restore_to(rec, execution))
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


def _fail(ctx: RolloutContext, rec: Recommendation, execution: Execution, exc: Exception) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    try:
        ctx.target.rollback(rec.deployment_id, _restore_to(rec, execution))
    except Exception as restore_exc:  # still mark it failed; say the fleet may be half-changed
        reason += f"; restoring the previous config also failed: {type(restore_exc).__name__}: {restore_exc}"
    _finish(ctx, rec, execution, ExecutionStatus.FAILED, reason, RecommendationStatus.FAILED)


def _audit(ctx: RolloutContext, rec: Recommendation, action: str, detail: dict[str, Any]) -> None:
    ctx.state.audit(ACTOR, action, "recommendation", rec.id, detail)


# ---- outcome ---------------------------------------------------------------------------------------


def fleet_usd_hour(instances: list[Instance]) -> float:
    """What the running instances cost per hour at catalog prices (a slice: its GPUs' share of its host's)."""
    return sum(
        slice_type(instance_type(i.instance_type), i.gpus).price_usd_hour(i.lifecycle) for i in instances
    )


def _last(execution: Execution, key: str) -> float | None:
    observed = [s.observation[key] for s in execution.stages if key in s.observation]
    return observed[-1] if observed else None


def _delta_pct(observed: float | None, base: BaselineStat | None) -> float:
    if observed is None or base is None or base.median <= 0:
        return 0.0
    return round((observed - base.median) / base.median * 100.0, 4)


def build_outcome(ctx: RolloutContext, rec: Recommendation, execution: Execution) -> Outcome:
    """The outcome valued in every currency: money, latency, utilization, quality."""
    rolled_back = execution.status != ExecutionStatus.SUCCEEDED
    savings = 0.0
    if not rolled_back:
        after = fleet_usd_hour(ctx.state.list_instances(rec.deployment_id))
        before = config_usd_hour(_restore_to(rec, execution))
        savings = round((before - after) * ctx.settings.hours_per_month, 2)
    quality = _delta_pct(_last(execution, "quality_mean"), ctx.baselines.get("quality_score"))
    latency = _delta_pct(_last(execution, "latency_p95_ms"), ctx.baselines.get("latency_p95_ms"))
    util_now, util_base = _last(execution, "gpu_util_pct"), ctx.baselines.get("gpu_util_pct")
    utilization = 0.0 if util_now is None or util_base is None else round(util_now - util_base.median, 4)
    verdict = f"rolled back at {execution.stage}%: {execution.reason}" if rolled_back else "succeeded"
    values = {
        "realized_monthly_savings_usd": f"saves ${savings:,.0f}/month",
        "quality_delta_pct": f"quality {quality:+.2f}%",
        "latency_p95_delta_pct": f"p95 {latency:+.1f}%",
        "utilization_delta_pct": f"GPU utilization {utilization:+.1f} pts",
    }
    valued_by = ctx.capability_of(rec).valued_by
    shown = [values[k] for k in valued_by] + [v for k, v in values.items() if k not in valued_by]
    return Outcome(
        recommendation_id=rec.id,
        kind=rec.kind,
        customer_id=rec.customer_id,
        deployment_id=rec.deployment_id,
        rolled_back=rolled_back,
        realized_monthly_savings_usd=savings,
        quality_delta_pct=quality,
        latency_p95_delta_pct=latency,
        utilization_delta_pct=utilization,
        features=rec.features,
        summary=f"{rec.kind} of {rec.deployment_id} {verdict}; " + ", ".join(shown),
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
    if ctx.capability_of(rec).advice_only:  # nothing was changed: there is no outcome to remember
        return
    stored = ctx.state.get_outcome(rec.id)
    if stored is not None:
        ctx.memory.remember(stored)
        return
    outcome = build_outcome(ctx, rec, execution)
    ctx.state.add_outcome(outcome)
    ctx.memory.remember(outcome)
    _audit(ctx, rec, "outcome_recorded", outcome.model_dump(mode="json", exclude={"features"}))
