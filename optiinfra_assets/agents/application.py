"""The application agent: guards output quality (no drop over 5% against an established baseline)."""

from __future__ import annotations

from pydantic import BaseModel

from optiinfra_assets.agents.baselines import BaselineStat
from optiinfra_assets.models import Validation

AGENT = "application"
MAX_QUALITY_DROP_PCT = 5.0
MIN_BASELINE_SAMPLES = 200


class QualityCheck(BaseModel):
    passed: bool
    observed: float
    baseline: float
    drop_pct: float  # positive = worse than baseline
    threshold_pct: float
    detail: str


def validate_quality_baseline(
    quality: BaselineStat | None, min_samples: int = MIN_BASELINE_SAMPLES
) -> Validation:
    """Pass when a quality baseline exists with enough samples to judge a change against it.

    Without one, a quality drop during the rollout could not be told from noise, so the change waits.
    """
    if quality is None or quality.n == 0:
        detail = f"no quality baseline yet: need at least {min_samples} scored samples before any change"
        return Validation(
            agent=AGENT, passed=False, detail=detail, figures={"min_samples": float(min_samples)}
        )
    figures = {
        "samples": float(quality.n),
        "min_samples": float(min_samples),
        "baseline_quality": quality.median,
    }
    if quality.n < min_samples:
        detail = f"quality baseline has {quality.n} samples, fewer than the {min_samples} needed"
        return Validation(agent=AGENT, passed=False, detail=detail, figures=figures)
    detail = (
        f"quality baseline established: median {quality.median:.3f} over {quality.n} samples "
        f"(>= {min_samples}); the rollout will hold it within {MAX_QUALITY_DROP_PCT:g}%"
    )
    return Validation(agent=AGENT, passed=True, detail=detail, figures=figures)


def quality_check(
    observed_mean: float, baseline: BaselineStat, max_drop_pct: float = MAX_QUALITY_DROP_PCT
) -> QualityCheck:
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
