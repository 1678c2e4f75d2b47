"""The shared forecaster on small series made here: shapes and timestamps, the season it finds, the
accuracy and coverage of its bands, and the errors it raises."""

from __future__ import annotations

import numpy as np
import pytest

from optiinfra_assets.agents.forecast import ForecastSettings, autocorrelation, forecast

STEP = np.timedelta64(600, "s")  # 10 minutes: 144 points a day
DAY = 144


def stamps(n: int, step: np.timedelta64 = STEP) -> np.ndarray:
    return np.datetime64("2024-03-01T00:00:00", "ms") + np.arange(n) * step


def daily_load(n: int, seed: int = 0, noise: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 100 + 40 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, noise, n)


def test_shapes_and_timestamps_continue_the_series_at_its_step() -> None:
    y = daily_load(600)
    fc = forecast(y, stamps(600), horizon=6)
    assert len(fc.point) == len(fc.lower_80) == len(fc.upper_95) == len(fc.timestamps) == 6
    assert fc.step_seconds == 600
    assert fc.timestamps[0] == stamps(601)[-1]
    assert np.all(np.diff(fc.timestamps) == STEP)
    assert np.all(fc.lower_95 <= fc.lower_80) and np.all(fc.lower_80 <= fc.point)
    assert np.all(fc.point <= fc.upper_80) and np.all(fc.upper_80 <= fc.upper_95)


def test_epoch_seconds_work_as_timestamps() -> None:
    y = daily_load(300)
    fc = forecast(y, np.arange(300) * 600.0, horizon=3)
    assert fc.timestamps[0] == np.datetime64(300 * 600, "s")


def test_a_daily_cycle_is_found_and_followed() -> None:
    y = daily_load(144 * 6 + 60, seed=1)
    fc = forecast(y[:-60], stamps(len(y))[:-60], horizon=60)
    assert fc.season == "daily" and fc.season_points == DAY
    assert fc.method.startswith("seasonal_ses(daily")
    mae = np.mean(np.abs(fc.point - y[-60:]))
    naive_mae = np.mean(np.abs(y[-61] - y[-60:]))
    assert mae < 6 < naive_mae  # within two noise sigmas; repeating the last value is far off


def test_no_season_in_noise() -> None:
    rng = np.random.default_rng(2)
    y = 50 + rng.normal(0, 5, 800)
    fc = forecast(y, stamps(800), horizon=6)
    assert fc.season is None and fc.season_points is None
    assert abs(fc.point.mean() - 50) < 3


def test_80_percent_band_covers_about_80_percent() -> None:
    y = daily_load(144 * 5 + 400, seed=3, noise=5.0)
    t = stamps(len(y))
    hits = total = 0
    for origin in range(144 * 5, len(y) - 6, 6):
        fc = forecast(y[: origin + 1], t[: origin + 1], horizon=6)
        actual = y[origin + 1 : origin + 7]
        hits += int(np.sum((fc.lower_80 <= actual) & (actual <= fc.upper_80)))
        total += len(actual)
    assert 0.7 <= hits / total <= 0.9


def test_a_constant_series_forecasts_itself() -> None:
    fc = forecast(np.full(50, 4.0), stamps(50), horizon=5)
    assert np.allclose(fc.point, 4.0)
    assert np.allclose(fc.lower_80, 4.0) and np.allclose(fc.upper_95, 4.0)


def test_a_short_series_gets_a_normal_band() -> None:
    y = np.array([10.0, 12, 11, 13, 12, 14, 13, 15, 14, 16, 15, 17, 16, 18])
    fc = forecast(y, stamps(len(y)), horizon=3)
    assert np.all(fc.upper_80 > fc.point) and np.all(fc.lower_80 < fc.point)
    assert np.all(np.diff(fc.upper_80 - fc.lower_80) > 0)  # wider further out


@pytest.mark.parametrize(
    ("n", "horizon", "message"),
    [
        (5, 1, "too few"),  # fewer than min_rows
        (30, 20, "too few"),  # a horizon beyond half the history
        (30, 0, "horizon must be at least 1"),
    ],
)
def test_too_little_history_or_a_bad_horizon_raises(n: int, horizon: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        forecast(np.arange(n, dtype=float), stamps(n), horizon=horizon)


def test_bad_timestamps_and_values_raise() -> None:
    y = np.arange(30, dtype=float)
    t = stamps(30)
    with pytest.raises(ValueError, match="strictly increasing"):
        forecast(y, t[::-1], horizon=2)
    with pytest.raises(ValueError, match="timestamps for"):
        forecast(y, t[:-1], horizon=2)
    y[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        forecast(y, t, horizon=2)


def test_settings_change_what_is_accepted() -> None:
    y = np.arange(8, dtype=float)
    with pytest.raises(ValueError, match="too few"):
        forecast(y, stamps(8), horizon=1)
    fc = forecast(y, stamps(8), horizon=1, settings=ForecastSettings(min_rows=4))
    assert len(fc.point) == 1


def test_autocorrelation() -> None:
    t = np.arange(1000)
    assert autocorrelation(np.sin(2 * np.pi * t / 100), 100) > 0.85
    assert autocorrelation(np.ones(10), 2) == 0.0
    assert autocorrelation(np.arange(5.0), 9) == 0.0
