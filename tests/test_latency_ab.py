"""The latency stage checks with the A/B test: canary against control by a bootstrap interval of the p95
ratio (ab_test.compare_latency), on top of the SLO and baseline check; without samples, the old check."""

from __future__ import annotations

import numpy as np
import pytest

from optiinfra_assets.agents.capability import StageContext
from optiinfra_assets.agents.performance import (
    latency_slo,
    latency_slo_or_recovering,
    latency_within_slo,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.snapshot import BaselineStat

SLO_MS = 45_000.0
SETTINGS = DecisionSettings()


def _baseline(median: float, p95: float) -> BaselineStat:
    return BaselineStat(median=median, mad=median * 0.05, p05=median * 0.8, p95=p95, n=2000)


def _ctx(
    p95: float,
    samples: dict[str, list[float]] | None = None,
    *,
    baseline: BaselineStat | None = None,
    look: int = 3,
    looks: int = 3,
) -> StageContext:
    return StageContext(
        pct=10,
        observation={"latency_p95_ms": p95},
        baselines={"latency_p95_ms": baseline or _baseline(10_000.0, 12_000.0)},
        slo_p95_latency_ms=SLO_MS,
        deployment_id="acme-chat",
        settings=SETTINGS,
        samples=samples or {},
        look=look,
        looks=looks,
    )


def _arms(canary_ms: float, control_ms: float, n: int = 300, seed: int = 0) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {
        "latency_canary": rng.lognormal(np.log(canary_ms), 0.2, n).tolist(),
        "latency_control": rng.lognormal(np.log(control_ms), 0.2, n).tolist(),
        "quality_canary": [0.9] * n,  # another check's arms: ignored here
    }


@pytest.mark.parametrize("check", [latency_slo, latency_slo_or_recovering])
def test_a_clearly_slower_canary_fails_with_the_interval_on_record(check) -> None:
    # Within the SLO and near the baseline: only the A/B test can see the canary is 60% slower.
    result = check(_ctx(10_500.0, _arms(16_000.0, 10_000.0), look=1))
    assert not result.passed
    assert result.verdict == "degraded" and "bootstrap" in (result.test or "")
    assert (
        result.interval is not None and result.interval[0] > 1.0 + SETTINGS.ab_max_latency_increase_pct / 100
    )
    assert result.samples == {"canary": 300, "control": 300}
    assert result.value is not None and result.baseline is not None
    assert result.value > 1.4 * result.baseline  # the arms' p95s, not the SLO figures
    assert result.threshold == SETTINGS.ab_max_latency_increase_pct
    assert "A/B degraded" in result.detail and "ratio interval [" in result.detail


@pytest.mark.parametrize("check", [latency_slo, latency_slo_or_recovering])
def test_similar_arms_pass_and_record_the_test(check) -> None:
    result = check(_ctx(10_500.0, _arms(10_100.0, 10_000.0)))
    assert result.passed and result.verdict == "not_degraded"
    assert result.interval is not None and result.interval[0] < 1.0 < result.interval[1] + 0.05
    assert result.samples == {"canary": 300, "control": 300}
    assert result.value == 10_500.0 and result.threshold == SLO_MS  # the SLO figures stay the record's


@pytest.mark.parametrize("check", [latency_slo, latency_slo_or_recovering])
def test_without_samples_the_check_is_what_it_was(check) -> None:
    for samples in (None, {"latency_canary": [1.0] * 50}):  # none, or one arm only
        within = check(_ctx(10_500.0, samples))
        assert within.passed and within.verdict is None and within.interval is None and not within.samples
        assert within.value == 10_500.0 and within.threshold == SLO_MS
        assert "is within the SLO" in within.detail
        broken = check(_ctx(50_000.0, samples))
        assert not broken.passed and "breaks the SLO" in broken.detail and broken.verdict is None


def test_too_few_samples_keep_the_slo_verdict_and_say_why() -> None:
    result = latency_slo(_ctx(10_500.0, _arms(30_000.0, 10_000.0, n=SETTINGS.ab_min_samples - 1)))
    assert result.passed and result.verdict is None and "no A/B test" in result.detail


def test_an_slo_breach_fails_even_when_the_arms_look_alike() -> None:
    result = latency_slo(_ctx(50_000.0, _arms(10_000.0, 10_000.0)))
    assert not result.passed and "breaks the SLO" in result.detail
    assert result.verdict == "not_degraded" and result.value == 50_000.0  # the SLO's figures failed


def test_a_recovering_deployment_passes_the_slo_part_but_not_a_slower_canary() -> None:
    broken_before = _baseline(50_000.0, 60_000.0)  # over the 45 s SLO before the change
    recovering = latency_slo_or_recovering(_ctx(48_000.0, _arms(40_000.0, 50_000.0), baseline=broken_before))
    assert recovering.passed and "already broke" in recovering.detail and recovering.verdict is not None
    slower = latency_slo_or_recovering(
        _ctx(48_000.0, _arms(75_000.0, 45_000.0), baseline=broken_before, look=1)
    )
    assert not slower.passed and slower.verdict == "degraded"


def test_latency_within_slo_spends_latency_on_purpose_without_an_ab_test() -> None:
    result = latency_within_slo(_ctx(10_500.0, _arms(16_000.0, 10_000.0)))
    assert result.passed and result.verdict is None
