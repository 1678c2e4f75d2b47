"""Predictive autoscaling carries a ramp already under way over the lead time (issue 9: the m-small traces).

The forecast works on the series' own step and cannot see a ramp that began inside the step in progress; a
replica ordered now serves only after ``autoscaling_lead_time_s``. These tests pin what the observed slope
adds to the decision, and what it must not touch (the reactive baseline, the fallback, falling load)."""

from __future__ import annotations

import numpy as np
import pytest

from optiinfra_assets.agents.resource.autoscaling import (
    RateForecast,
    decide_replicas,
    decision_text,
    observed_slope,
    replica_sizing,
)
from optiinfra_assets.catalog import default_config
from optiinfra_assets.config import DecisionSettings

SETTINGS = DecisionSettings()
SIZING = replica_sizing("Llama-3.1-8B", default_config("p5.4xlarge", 4), 30_000.0, SETTINGS)
LEAD_S = SETTINGS.autoscaling_lead_time_s
# The forecast saw a calm series: its upper-95% peak over the lead window is 1,000 req/s, level with now.
CALM = RateForecast(1000.0, "seasonal_ses(daily, alpha=0.5)", None, now_rps=1000.0)


def test_a_ramp_under_way_is_carried_over_the_lead_time() -> None:
    # 1,000 req/s now, rising by 40 req/s a minute (an m-small burst): in the lead time it reaches 1,400.
    slope = 40.0 / 60.0
    reached = 1000.0 + slope * LEAD_S
    with_trend = decide_replicas(1000.0, CALM, 70, 1, 500, SIZING, SETTINGS, 10_000.0, slope)
    without = decide_replicas(1000.0, CALM, 70, 1, 500, SIZING, SETTINGS, 10_000.0)
    assert with_trend.method == "predictive"
    assert with_trend.trend_rps == pytest.approx(reached)
    assert with_trend.planned_rps == pytest.approx(reached)
    assert with_trend.target_replicas == SIZING.replicas_for(reached) > without.target_replicas
    # Through the serving model: the replicas ordered now hold the SLO when the ramp gets there; without the
    # trend they would not.
    assert SIZING.p95_ms(reached, with_trend.target_replicas) <= SIZING.target_p95_ms
    assert SIZING.p95_ms(reached, without.target_replicas) > SIZING.slo_p95_ms
    # The decision record says so.
    assert f"rising to {reached:.2f} req/s over the lead time" in decision_text(with_trend, "d1")


def test_the_forecast_still_leads_when_it_is_above_the_ramp() -> None:
    # A forecast peak (1,600) above where a gentle rise would get (1,060): scale-up still ahead of the peak.
    ahead = RateForecast(1600.0, "seasonal_ses(daily, alpha=0.5)", None, now_rps=1000.0)
    decision = decide_replicas(1000.0, ahead, 70, 1, 500, SIZING, SETTINGS, 10_000.0, 0.1)
    assert decision.trend_rps == pytest.approx(1000.0 + 0.1 * LEAD_S)
    assert decision.planned_rps == pytest.approx(1600.0)
    assert decision.target_replicas == SIZING.replicas_for(1600.0) > 70


def test_falling_load_is_not_extrapolated_down() -> None:
    # A fall is not carried on: the plan never drops below the observation and the forecast for it.
    falling = decide_replicas(1000.0, CALM, 70, 1, 500, SIZING, SETTINGS, 10_000.0, -2.0)
    flat = decide_replicas(1000.0, CALM, 70, 1, 500, SIZING, SETTINGS, 10_000.0, 0.0)
    assert falling.trend_rps is None and flat.trend_rps is None
    assert falling.planned_rps == flat.planned_rps == pytest.approx(1000.0)
    assert falling.target_replicas == flat.target_replicas


def test_the_reactive_baseline_and_the_fallback_ignore_the_slope() -> None:
    # The HPA-like baseline is kept exactly as it is: a trend changes nothing there.
    for fc in (None, RateForecast(None, None, "forecast failed (5 point(s)): reactive scaling instead")):
        steep = decide_replicas(1000.0, fc, 70, 1, 500, SIZING, SETTINGS, 10_000.0, 5.0)
        flat = decide_replicas(1000.0, fc, 70, 1, 500, SIZING, SETTINGS, 10_000.0)
        assert steep.trend_rps is None
        assert steep.replicas_needed == flat.replicas_needed
        assert steep.target_replicas == flat.target_replicas


def test_a_bad_slope_names_the_field() -> None:
    with pytest.raises(ValueError, match="observed_slope_rps_per_s"):
        decide_replicas(1000.0, CALM, 70, 1, 500, SIZING, SETTINGS, None, float("nan"))


def test_observed_slope_from_the_latest_interval() -> None:
    hours = np.array(["2026-01-01T00", "2026-01-01T01", "2026-01-01T02"], dtype="datetime64[ms]")
    assert observed_slope(np.array([10.0, 12.0, 18.0]), hours) == pytest.approx(6.0 / 3600.0)
    assert observed_slope(np.array([10.0, 12.0, 9.0]), np.array([0.0, 60.0, 120.0])) == pytest.approx(-0.05)
    # One point, or a missing (zero) point on either side: no ramp is claimed.
    assert observed_slope(np.array([10.0]), hours[:1]) == 0.0
    assert observed_slope(np.array([10.0, 0.0, 18.0]), hours) == 0.0
    assert observed_slope(np.array([10.0, 18.0, 0.0]), hours) == 0.0
    with pytest.raises(ValueError, match="timestamps"):
        observed_slope(np.array([10.0, 12.0]), np.array([60.0, 60.0]))
