"""A/B validation statistics on known distributions: it must catch a real drop and stay quiet on none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optiinfra_assets.agents.application.ab_test import (
    Verdict,
    compare_latency,
    compare_quality,
    nominal_alpha,
    spent_alpha,
)

ALPHA = 0.05


def _quality(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    """Beta-distributed per-request quality with the given mean (spread like the sandbox's)."""
    concentration = 60.0
    return rng.beta(mean * concentration, (1 - mean) * concentration, n)


def test_obrien_fleming_spending_is_strict_early_and_sums_to_alpha() -> None:
    levels = [nominal_alpha(ALPHA, k, 3) for k in (1, 2, 3)]
    assert sum(levels) == pytest.approx(ALPHA)
    assert levels[0] < 0.002 < levels[1] < levels[2]  # a first look stops only on a very clear result
    assert spent_alpha(ALPHA, 1.0) == pytest.approx(ALPHA)
    assert nominal_alpha(ALPHA, 1, 1) == pytest.approx(ALPHA)
    with pytest.raises(ValueError, match="look"):
        nominal_alpha(ALPHA, 4, 3)
    with pytest.raises(ValueError, match="alpha"):
        spent_alpha(1.5, 0.5)


def test_a_ten_percent_quality_drop_is_caught_at_the_first_look() -> None:
    rng = np.random.default_rng(1)
    caught = 0
    for _ in range(50):
        control, canary = _quality(rng, 0.88, 200), _quality(rng, 0.88 * 0.9, 200)
        result = compare_quality(canary, control, max_drop_pct=5, look=1, looks=3)
        caught += result.verdict == Verdict.DEGRADED
    assert caught >= 48  # power ~1 at n=200 per arm, even at the first look's strict level
    assert result.p_value is not None and result.p_value < result.nominal_alpha
    assert result.change_pct == pytest.approx(-10, abs=2.5)
    assert "quality dropped" in result.detail and "p=" in result.detail


def test_equal_arms_raise_no_more_false_alarms_than_alpha_over_all_looks() -> None:
    """Sequential looks at accumulating samples, testing significance alone (threshold 0)."""
    rng = np.random.default_rng(2)
    sims, looks, per_look = 400, 3, 60
    alarms = 0
    for _ in range(sims):
        control, canary = _quality(rng, 0.88, looks * per_look), _quality(rng, 0.88, looks * per_look)
        for look in range(1, looks + 1):
            n = look * per_look
            result = compare_quality(canary[:n], control[:n], max_drop_pct=0.0, look=look, looks=looks)
            if result.verdict == Verdict.DEGRADED:
                alarms += 1
                break
    rate = alarms / sims
    assert rate <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / sims)  # at most alpha, within sampling error
    # Naively testing every look at the full alpha would alarm clearly more often than that.
    naive = 0
    for _ in range(sims):
        control, canary = _quality(rng, 0.88, looks * per_look), _quality(rng, 0.88, looks * per_look)
        naive += any(
            compare_quality(canary[: k * per_look], control[: k * per_look], max_drop_pct=0.0).verdict
            == Verdict.DEGRADED
            for k in range(1, looks + 1)
        )
    assert naive / sims > rate


def test_a_significant_but_small_drop_is_not_a_degradation() -> None:
    rng = np.random.default_rng(3)
    control, canary = _quality(rng, 0.88, 5000), _quality(rng, 0.88 * 0.98, 5000)
    result = compare_quality(canary, control, max_drop_pct=5)
    assert result.p_value is not None and result.p_value < 1e-6
    assert result.verdict == Verdict.NOT_DEGRADED


def test_a_clear_non_inferior_canary_stops_early_and_an_unclear_one_waits() -> None:
    rng = np.random.default_rng(4)
    control, canary = _quality(rng, 0.88, 400), _quality(rng, 0.88, 400)
    assert compare_quality(canary, control, max_drop_pct=5, look=1, looks=3).verdict == Verdict.NOT_DEGRADED
    few_control, few_canary = _quality(rng, 0.88, 35), _quality(rng, 0.86, 35)
    early = compare_quality(few_canary, few_control, max_drop_pct=5, look=1, looks=3)
    assert early.verdict == Verdict.INCONCLUSIVE
    assert compare_quality(few_canary, few_control, max_drop_pct=5, look=3, looks=3).verdict in (
        Verdict.NOT_DEGRADED,
        Verdict.DEGRADED,
    )


def test_too_few_samples_conclude_nothing() -> None:
    rng = np.random.default_rng(5)
    result = compare_quality(_quality(rng, 0.5, 10), _quality(rng, 0.9, 500), max_drop_pct=5, min_samples=30)
    assert result.verdict == Verdict.INSUFFICIENT_SAMPLES and result.p_value is None
    assert "10 canary" in result.detail
    with pytest.raises(ValueError, match="canary"):
        compare_quality([0.5, float("nan")], [0.5], max_drop_pct=5)


def test_latency_quantile_test_catches_a_p95_rise_and_not_noise() -> None:
    rng = np.random.default_rng(6)
    control = rng.lognormal(np.log(800), 0.3, 400)
    slower = rng.lognormal(np.log(800 * 1.25), 0.3, 400)
    same = rng.lognormal(np.log(800), 0.3, 400)
    bad = compare_latency(slower, control, max_increase_pct=10, look=2, looks=3)
    assert bad.verdict == Verdict.DEGRADED and bad.interval is not None and bad.interval[0] > 1.1
    ok = compare_latency(same, control, max_increase_pct=10, look=2, looks=3)
    assert ok.verdict != Verdict.DEGRADED
    assert ok.interval is not None and ok.interval[0] < 1.0 < ok.interval[1]
    # Seeded: the same samples give the same interval.
    assert compare_latency(same, control, max_increase_pct=10, look=2, looks=3).interval == ok.interval


def test_a_drop_from_a_share_of_ruined_answers_is_caught_by_the_mean_test() -> None:
    """A broken model ruins ~13% of answers and leaves the rest alone: mean quality -12%. The default
    test (Welch, on the means the gate is about) catches it; the rank test barely moves."""
    rng = np.random.default_rng(7)
    control = _quality(rng, 0.88, 120)
    canary = _quality(rng, 0.88, 120)
    ruined = rng.random(120) < 0.14
    canary[ruined] = rng.uniform(0.0, 0.1, int(ruined.sum()))
    welch = compare_quality(canary, control, max_drop_pct=5, look=2, looks=3)
    ranks = compare_quality(canary, control, max_drop_pct=5, look=2, looks=3, test="mann-whitney")
    assert welch.change_pct < -8
    assert welch.verdict == Verdict.DEGRADED and "welch" in welch.test
    assert ranks.p_value is not None and welch.p_value is not None and ranks.p_value > 10 * welch.p_value
    with pytest.raises(ValueError, match="test"):
        compare_quality(canary, control, max_drop_pct=5, test="z")  # type: ignore[arg-type]
