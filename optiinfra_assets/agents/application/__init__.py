"""The application agent: establishes the quality baseline a change is judged against, judges a proposed
config's expected quality cost, and holds the quality gate between rollout stages."""

from __future__ import annotations

from pydantic import BaseModel

from optiinfra_assets.agents.application.ab_test import Verdict, compare_quality
from optiinfra_assets.agents.capability import CheckResult, StageContext, ValidationRequest
from optiinfra_assets.catalog import model
from optiinfra_assets.models import Validation
from optiinfra_assets.serving import quality_factor
from optiinfra_assets.snapshot import BaselineStat

AGENT = "application"


class QualityCheck(BaseModel):
    passed: bool
    observed: float
    baseline: float
    drop_pct: float  # positive = worse than baseline
    threshold_pct: float
    detail: str


def validate(request: ValidationRequest) -> Validation:
    """Pass when a quality baseline with enough samples exists to judge the change against, and the serving
    model does not expect the proposed engine (quantization, KV dtype) to cost more than the quality gate.

    Without a baseline, a quality drop during the rollout could not be told from noise, so the change waits.
    """
    settings = request.settings
    gate, min_samples = settings.max_quality_drop_pct, settings.min_baseline_samples
    quality = request.baselines.get("quality_score")
    spec = model(request.deployment.model)
    expected_drop = 100.0 * (
        1.0 - quality_factor(spec, request.proposed.engine) / quality_factor(spec, request.current.engine)
    )
    figures = {"min_samples": float(min_samples), "expected_quality_drop_pct": round(expected_drop, 3)}
    if quality is None or quality.n == 0:
        detail = f"no quality baseline yet: need at least {min_samples} scored samples before any change"
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    figures |= {"samples": float(quality.n), "baseline_quality": quality.median}
    if quality.n < min_samples:
        detail = f"quality baseline has {quality.n} samples, fewer than the {min_samples} needed"
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    if expected_drop > gate:
        detail = (
            f"the proposed engine is expected to cost {expected_drop:.1f}% quality for {spec.name}, over the "
            f"{gate:g}% gate"
        )
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    detail = (
        f"quality baseline established: median {quality.median:.3f} over {quality.n} samples "
        f"(>= {min_samples}); expected cost {max(expected_drop, 0.0):.1f}%; the rollout will hold it "
        f"within {gate:g}%"
    )
    return Validation(agent=AGENT, passed=True, detail=detail, figures=figures)


def quality_check(observed_mean: float, baseline: BaselineStat, max_drop_pct: float = 5.0) -> QualityCheck:
    """Compare observed mean quality with the baseline median: a drop over ``max_drop_pct`` fails."""
    reference = baseline.median
    # A zero baseline cannot drop further; treat it as no drop rather than divide by zero.
    drop = 0.0 if reference <= 0 else (reference - observed_mean) / reference * 100.0
    passed = drop <= max_drop_pct
    verdict = "within" if passed else "over"
    detail = (
        f"quality {observed_mean:.3f} vs baseline {reference:.3f}: {drop:+.2f}% drop, {verdict} the "
        f"{max_drop_pct:g}% threshold"
    )
    return QualityCheck(
        passed=passed,
        observed=observed_mean,
        baseline=reference,
        drop_pct=round(drop, 4),
        threshold_pct=max_drop_pct,
        detail=detail,
    )


def quality_gate(ctx: StageContext) -> CheckResult:
    """Stage check: the canary's quality against the control's by the A/B test (ab_test.compare_quality:
    Mann–Whitney U, one look per stage with O'Brien–Fleming alpha spending, a minimum sample size); a
    clear drop over the gate fails at once, an unclear one waits for the next stage's look.

    Where there is no A/B comparison to make (the last stage has no control arm left, a change that adds
    no new pool has no canary, or an arm has too few samples), the observed mean quality is held within
    the gate of the deployment's baseline instead (no baseline: cannot be judged)."""
    gate = ctx.settings.max_quality_drop_pct
    arms = ctx.ab_arms("quality")
    why_not = "no canary and control arms to compare"
    if arms is not None:
        ab = compare_quality(*arms, max_drop_pct=gate, **ctx.ab_design())
        if ab.verdict != Verdict.INSUFFICIENT_SAMPLES:
            return CheckResult(
                name="quality",
                passed=ab.verdict != Verdict.DEGRADED,
                detail=f"A/B {ab.verdict.value}: {ab.detail}",
                value=ab.canary,
                baseline=ab.control,
                threshold=gate,
                test=ab.test,
                verdict=ab.verdict.value,
                p_value=ab.p_value,
                samples={"canary": ab.n_canary, "control": ab.n_control},
            )
        why_not = ab.detail
    result = _baseline_gate(ctx, gate)
    return result.model_copy(update={"detail": f"{result.detail} (baseline comparison: {why_not})"})


def _baseline_gate(ctx: StageContext, gate: float) -> CheckResult:
    baseline = ctx.baselines.get("quality_score")
    if baseline is None or baseline.n == 0:
        return CheckResult(
            name="quality",
            passed=False,
            detail="no quality baseline to check against, so the change cannot be judged",
            threshold=gate,
        )
    check = quality_check(ctx.observation["quality_mean"], baseline, gate)
    return CheckResult(
        name="quality",
        passed=check.passed,
        detail=check.detail,
        value=check.observed,
        baseline=check.baseline,
        threshold=gate,
    )
