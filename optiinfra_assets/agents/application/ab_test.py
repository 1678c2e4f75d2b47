"""A/B validation between rollout stages: canary against control, with proper tests and sequential looks.

Pure statistics (numpy, scipy), nothing of the rollout: the stage checks call these with the samples of
each arm.

* **Quality**: a one-sided test of "the canary's mean quality is lower than the control's". The quality
  gate is a limit on the *mean* (5% below), and a degraded model usually ruins a share of its answers
  while the rest stay as good as before: a mixture. The rank-based Mann–Whitney U test
  (``scipy.stats.mannwhitneyu``) asks whether the whole distribution shifted and is nearly blind to that
  (in the sandbox, 12% lower mean quality from 13% ruined answers: U's p = 0.32 on 120 + 120 requests),
  so the default is Welch's t-test on the means (``scipy.stats.ttest_ind``, unequal variances; with the
  minimum sample size its mean is near normal whatever the scores' shape); ``test="mann-whitney"`` is
  there for metrics whose whole distribution shifts. A drop is a *degradation* only when it is significant
  at the look's nominal level **and** the observed relative drop of the mean exceeds the practical
  threshold (the gate): a 1% drop that enough samples make significant is not worth a rollback. Early
  *non-inferiority* is the same test against the control scaled down by the threshold.
* **Latency**: a bootstrap interval of the ratio of a quantile (p95 by default) canary over control,
  resampling each arm (seeded, so a verdict can be recomputed); a degradation when the whole interval lies
  above 1 + the allowed increase.
* **Sequential testing**: a rollout looks at the data after each stage. Testing each look at the full
  alpha would inflate false alarms, so each look spends part of it by the Lan–DeMets O'Brien–Fleming-type
  spending function ``alpha(t) = 2 (1 - Phi(z_{1-alpha/2} / sqrt(t)))`` at information fraction ``t``:
  almost nothing early (only a very clear result stops at the first stage), nearly all at the last look.
  Each look is tested at the alpha newly spent there, so by the union bound the false-alarm rate over all
  looks is at most ``alpha`` (conservative: the looks' correlation is not credited).
* **Minimum sample size**: below it in either arm the verdict is ``insufficient_samples`` and nothing is
  concluded.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats


class Verdict(StrEnum):
    DEGRADED = "degraded"  # significant and larger than the practical threshold: roll back
    NOT_DEGRADED = "not_degraded"  # shown no worse than the threshold (non-inferior), or the last look
    INCONCLUSIVE = "inconclusive"  # neither yet: look again at the next stage
    INSUFFICIENT_SAMPLES = "insufficient_samples"


class ABResult(BaseModel):
    """One comparison of canary and control: what the stage record keeps."""

    metric: str
    test: str
    verdict: Verdict
    look: int = Field(ge=1)
    looks: int = Field(ge=1)
    alpha: float  # the overall false-alarm rate the looks share
    nominal_alpha: float  # the share of it this look tests at
    p_value: float | None = None  # of "the canary is worse" (quality)
    interval: tuple[float, float] | None = None  # of canary/control (latency)
    n_canary: int
    n_control: int
    canary: float  # the arm's mean (quality) or quantile (latency)
    control: float
    change_pct: float  # canary against control, positive = higher
    threshold_pct: float
    detail: str


def spent_alpha(alpha: float, fraction: float) -> float:
    """Alpha spent by information fraction ``fraction`` (0..1]: Lan–DeMets O'Brien–Fleming type."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected 0 < alpha < 1, got {alpha}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction}")
    z = stats.norm.ppf(1 - alpha / 2)
    return float(2 * (1 - stats.norm.cdf(z / np.sqrt(fraction))))


def nominal_alpha(alpha: float, look: int, looks: int) -> float:
    """The level look ``look`` of ``looks`` (equally spaced) is tested at: the alpha spent since the last."""
    if not 1 <= look <= looks:
        raise ValueError(f"look: expected 1..{looks}, got {look}")
    previous = spent_alpha(alpha, (look - 1) / looks) if look > 1 else 0.0
    return spent_alpha(alpha, look / looks) - previous


def _arrays(canary: Sequence[float], control: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(canary, dtype=np.float64), np.asarray(control, dtype=np.float64)
    for name, arr in (("canary", a), ("control", b)):
        if arr.ndim != 1 or not np.isfinite(arr).all():
            raise ValueError(f"{name}: expected a flat sequence of finite numbers")
    return a, b


_TEST_NAMES = {"welch": "welch t-test of the means", "mann-whitney": "mann-whitney u"}


def _p_value(test: str, a: np.ndarray, b: np.ndarray, alternative: Literal["less", "greater"]) -> float:
    if test == "mann-whitney":
        return float(stats.mannwhitneyu(a, b, alternative=alternative).pvalue)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread at all: the means decide exactly
        gap = float(a.mean() - b.mean())
        return 0.0 if (gap < 0 if alternative == "less" else gap > 0) else 1.0
    p = stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue
    return float(p) if np.isfinite(p) else 1.0


def _change_pct(canary: float, control: float) -> float:
    """The canary's figure relative to the control's, in percent (0 without a positive control)."""
    return 0.0 if control <= 0 else (canary - control) / control * 100.0


def _result_fields(
    *,
    metric: str,
    test: str,
    threshold_pct: float,
    alpha: float,
    look: int,
    looks: int,
    a: np.ndarray,
    b: np.ndarray,
    canary: float,
    control: float,
) -> dict[str, object]:
    """What every ABResult of a comparison carries: the test, the look and both arms' figures."""
    return {
        "metric": metric,
        "test": test,
        "look": look,
        "looks": looks,
        "alpha": alpha,
        "nominal_alpha": nominal_alpha(alpha, look, looks),
        "n_canary": int(a.size),
        "n_control": int(b.size),
        "canary": round(canary, 6),
        "control": round(control, 6),
        "change_pct": round(_change_pct(canary, control), 4),
        "threshold_pct": threshold_pct,
    }


def _too_few_samples(
    a: np.ndarray, b: np.ndarray, min_samples: int, fields: dict[str, object]
) -> ABResult | None:
    """The insufficient-samples result when either arm has fewer than ``min_samples``, else None."""
    if min(a.size, b.size) >= min_samples:
        return None
    detail = (
        f"{a.size} canary and {b.size} control samples, fewer than the {min_samples} needed in each: "
        "nothing concluded"
    )
    return ABResult(verdict=Verdict.INSUFFICIENT_SAMPLES, detail=detail, **fields)


def compare_quality(
    canary: Sequence[float],
    control: Sequence[float],
    *,
    max_drop_pct: float,
    alpha: float = 0.05,
    look: int = 1,
    looks: int = 1,
    min_samples: int = 30,
    metric: str = "quality_score",
    test: Literal["welch", "mann-whitney"] = "welch",
) -> ABResult:
    """Is the canary's quality lower than the control's by more than ``max_drop_pct``?

    One-sided ``test`` at this look's nominal alpha; degraded when significant and the relative drop of
    the mean exceeds ``max_drop_pct``; not degraded when non-inferiority (the canary above the control
    scaled down by ``max_drop_pct``) is significant, or at the last look; else inconclusive.
    """
    if test not in _TEST_NAMES:
        raise ValueError(f"test: expected one of {', '.join(_TEST_NAMES)}, got {test!r}")
    a, b = _arrays(canary, control)
    level = nominal_alpha(alpha, look, looks)
    mean_a = float(a.mean()) if a.size else 0.0
    mean_b = float(b.mean()) if b.size else 0.0
    change = _change_pct(mean_a, mean_b)
    common = _result_fields(
        metric=metric,
        test=f"{_TEST_NAMES[test]} (one-sided), O'Brien-Fleming alpha spending",
        threshold_pct=max_drop_pct,
        alpha=alpha,
        look=look,
        looks=looks,
        a=a,
        b=b,
        canary=mean_a,
        control=mean_b,
    )
    too_few = _too_few_samples(a, b, min_samples, common)
    if too_few is not None:
        return too_few
    worse = _p_value(test, a, b, "less")
    no_worse = _p_value(test, a, b * (1.0 - max_drop_pct / 100.0), "greater")
    drop = -change
    figures = (
        f"canary mean {mean_a:.3f} vs control {mean_b:.3f} ({change:+.2f}%), p={worse:.2g} at look "
        f"{look}/{looks} (nominal alpha {level:.3g} of {alpha:g}; n={a.size}/{b.size})"
    )
    if worse < level and drop > max_drop_pct:
        verdict = Verdict.DEGRADED
        detail = f"quality dropped: {figures}; over the {max_drop_pct:g}% threshold"
    elif no_worse < level or look == looks:
        verdict = Verdict.NOT_DEGRADED
        detail = f"no quality drop over {max_drop_pct:g}%: {figures}"
    else:
        verdict = Verdict.INCONCLUSIVE
        detail = f"not yet clear: {figures}"
    return ABResult(verdict=verdict, p_value=worse, detail=detail, **common)


def compare_latency(
    canary: Sequence[float],
    control: Sequence[float],
    *,
    max_increase_pct: float,
    quantile: float = 0.95,
    alpha: float = 0.05,
    look: int = 1,
    looks: int = 1,
    min_samples: int = 30,
    n_boot: int = 2000,
    seed: int = 0,
    metric: str = "latency_ms",
) -> ABResult:
    """Is the canary's ``quantile`` latency higher than the control's by more than ``max_increase_pct``?

    A percentile-bootstrap interval (one-sided, at this look's nominal alpha) of the ratio of the arms'
    quantiles: degraded when its lower end is above 1 + ``max_increase_pct``; not degraded when its upper
    end is below it, or at the last look; else inconclusive.
    """
    a, b = _arrays(canary, control)
    level = nominal_alpha(alpha, look, looks)
    q_a = float(np.quantile(a, quantile)) if a.size else 0.0
    q_b = float(np.quantile(b, quantile)) if b.size else 0.0
    change = _change_pct(q_a, q_b)
    common = _result_fields(
        metric=metric,
        test=f"bootstrap interval of the p{quantile * 100:g} ratio, O'Brien-Fleming alpha spending",
        threshold_pct=max_increase_pct,
        alpha=alpha,
        look=look,
        looks=looks,
        a=a,
        b=b,
        canary=q_a,
        control=q_b,
    )
    too_few = _too_few_samples(a, b, min_samples, common)
    if too_few is not None:
        return too_few
    rng = np.random.default_rng(seed)
    boot_a = np.quantile(a[rng.integers(0, a.size, (n_boot, a.size))], quantile, axis=1)
    boot_b = np.quantile(b[rng.integers(0, b.size, (n_boot, b.size))], quantile, axis=1)
    ratios = boot_a / np.maximum(boot_b, np.finfo(np.float64).tiny)
    low, high = (float(x) for x in np.quantile(ratios, [level, 1 - level]))
    limit = 1.0 + max_increase_pct / 100.0
    figures = (
        f"p{quantile * 100:g} canary {q_a:.1f} vs control {q_b:.1f} ({change:+.1f}%), ratio interval "
        f"[{low:.3f}, {high:.3f}] at look {look}/{looks} (nominal alpha {level:.3g}; n={a.size}/{b.size})"
    )
    if low > limit:
        verdict, detail = Verdict.DEGRADED, f"latency rose: {figures}; over the {max_increase_pct:g}% allowed"
    elif high < limit or look == looks:
        verdict, detail = Verdict.NOT_DEGRADED, f"no latency rise over {max_increase_pct:g}%: {figures}"
    else:
        verdict, detail = Verdict.INCONCLUSIVE, f"not yet clear: {figures}"
    return ABResult(verdict=verdict, interval=(low, high), detail=detail, **common)
