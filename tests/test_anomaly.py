"""The shared anomaly detector on small series made here: what it flags, what it leaves alone, and that a
decision never depends on later points."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from optiinfra_assets.agents.anomaly import DetectorSettings, daily_period, detect, record_ratio

STEP = np.timedelta64(300, "s")


def stamps(n: int, step: np.timedelta64 = STEP) -> np.ndarray:
    return np.datetime64("2024-01-01T00:00:00") + np.arange(n) * step


def daily_series(n: int = 2000, seed: int = 0) -> np.ndarray:
    """A noisy daily cycle at a 5-minute step (288 points a day)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 20 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 1.5, n)


def test_a_clear_spike_is_flagged_once_and_not_echoed_a_day_later() -> None:
    x = daily_series()
    x[1500] += 40
    result = detect(x, stamps(len(x)))
    assert result.is_anomaly[1500]
    assert result.score[1500] == 1.0
    near = np.flatnonzero(result.is_anomaly[1400:1900]) + 1400
    assert near.tolist() == [1500]  # nothing around it, nor at 1788 when "one day earlier" was the spike


def test_plain_noise_rarely_alerts() -> None:
    alerts = sum(int(detect(x, stamps(len(x))).is_anomaly.sum()) for x in map(daily_series, [2000] * 5))
    assert alerts / (5 * 2000) < 0.005


def test_a_flat_series_flags_nothing() -> None:
    result = detect(np.full(1000, 7.25), stamps(1000))
    assert not result.is_anomaly.any()
    assert np.all(result.score == 0.0)


def test_a_flat_series_that_moves_is_flagged() -> None:
    x = np.full(600, 3.0)
    x[400:] = 3.5  # e.g. an error count that was always the same
    result = detect(x)
    assert result.is_anomaly[400]


def test_a_level_shift_is_flagged_once() -> None:
    x = daily_series(seed=1)
    x[1200:] += 35
    flagged = np.flatnonzero(detect(x, stamps(len(x))).is_anomaly)
    assert [i for i in flagged if 1190 <= i < 1300] == [1200]


def test_no_look_ahead_appending_rows_never_changes_earlier_decisions() -> None:
    rng = np.random.default_rng(7)
    x = daily_series(1500, seed=7) + np.where(rng.random(1500) < 0.01, 30.0, 0.0)
    t = stamps(len(x))
    full = detect(x, t)
    for cut in (150, 301, 777, 1100, 1499):
        prefix = detect(x[:cut], t[:cut])
        assert np.array_equal(prefix.is_anomaly, full.is_anomaly[:cut])
        assert np.array_equal(prefix.score, full.score[:cut])


def test_no_alert_during_warm_up() -> None:
    x = daily_series(400)
    x[50] += 100
    settings = DetectorSettings(warmup_rows=100)
    assert not detect(x, stamps(len(x)), settings).is_anomaly[:100].any()


def test_cool_down_keeps_one_alert_per_event_unless_much_worse() -> None:
    x = daily_series(seed=3)
    x[1500] += 40
    x[1530] += 40  # as bad again, within the cool-down: the same event
    x[1560] += 2000  # far worse: alerts despite the cool-down
    flagged = np.flatnonzero(detect(x, stamps(len(x))).is_anomaly)
    assert [i for i in flagged if 1400 <= i < 1700] == [1500, 1560]


def test_score_is_half_at_the_threshold_and_stays_in_unit_interval() -> None:
    x = daily_series(seed=4)
    x[1500] += 40
    result = detect(x, stamps(len(x)))
    assert np.all((result.score >= 0) & (result.score <= 1))
    settings = DetectorSettings()
    expected = np.clip(0.5 * result.ratio / settings.threshold, 0, 1)
    assert np.allclose(result.score, expected)
    assert result.view[1500] != ""


def test_missing_values_are_never_flagged() -> None:
    x = daily_series(seed=5)
    x[[10, 700, 701, 1500]] = np.nan
    x[1200] = np.inf
    result = detect(x, stamps(len(x)))
    for i in (10, 700, 701, 1200, 1500):
        assert not result.is_anomaly[i] and result.score[i] == 0.0


def test_daily_view_catches_a_missing_daily_peak() -> None:
    x = daily_series(seed=6)
    day = slice(5 * 288, 6 * 288)  # one day the cycle nearly stops; every value stays in its usual range
    x[day] = 50 + 4 * np.sin(2 * np.pi * np.arange(288) / 288) + np.random.default_rng(9).normal(0, 1.5, 288)
    result = detect(x, stamps(len(x)))
    flagged = np.flatnonzero(result.is_anomaly[day]) + day.start
    assert len(flagged) >= 1
    assert result.view[flagged[0]].startswith("daily")
    without_time = detect(x)  # no timestamps: no daily view
    assert not any(str(v).startswith("daily") for v in without_time.view)


def test_daily_period_from_timestamps() -> None:
    assert daily_period(stamps(100)) == 288
    assert daily_period(stamps(100, np.timedelta64(1, "h"))) == 24
    assert daily_period(stamps(100, np.timedelta64(7, "m"))) is None  # does not divide a day
    assert daily_period(stamps(100, np.timedelta64(2, "D"))) is None
    assert daily_period(None) is None
    seconds = np.arange(100) * 600.0  # epoch seconds work too
    assert daily_period(seconds) == 144


def test_record_ratio_is_above_one_exactly_for_new_records() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=300)
    r = record_ratio(v, memory=1000, stride=1, min_history=20)
    previous_max = np.maximum.accumulate(np.concatenate(([-np.inf], v[:-1])))
    records = v > previous_max
    assert np.array_equal(r[20:] > 1, records[20:])
    assert np.all(r[:20] == 0)  # too little history to judge


def test_record_ratio_of_a_view_that_never_moved() -> None:
    v = np.zeros(100)
    v[80] = 1.0
    r = record_ratio(v, memory=1000, stride=1, min_history=20)
    assert r[80] == np.inf
    assert np.all(r[:80] == 0)


def test_a_huge_outlier_does_not_blind_the_detector_to_the_next_incident() -> None:
    x = daily_series(seed=3)
    x[1000] += 1000  # an outlier far beyond anything before it
    x[1500] += 40  # an ordinary incident after it
    t = stamps(len(x))
    assert detect(x, t).is_anomaly[[1000, 1500]].all()
    # Judged against a max that includes the outlier, the second incident is no record at all.
    assert not detect(x, t, DetectorSettings(outlier_ratio=None)).is_anomaly[1500]


def test_record_ratio_leaves_outliers_out_of_the_bar() -> None:
    v = np.random.default_rng(4).normal(size=300)
    v[100] = 100.0
    v[200] = v[:200][v[:200] < 100].max() + 1.0  # a record among the ordinary points only
    plain = record_ratio(v, memory=1000, stride=1, min_history=20)
    robust = record_ratio(v, memory=1000, stride=1, min_history=20, outlier_ratio=2.0)
    assert plain[100] > 2 and robust[100] == plain[100]  # the outlier itself is judged as before
    assert plain[200] < 1 < robust[200]


def test_a_steady_drift_alerts_once_not_at_every_new_high() -> None:
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(0, 1, 1000), 0.01 * np.arange(2500) + rng.normal(0, 1, 2500)])

    def smoothed_alerts(settings: DetectorSettings) -> int:
        result = detect(x, None, settings)
        return sum(str(result.view[i]).startswith("smoothed") for i in np.flatnonzero(result.is_anomaly))

    quiet, chatty = (
        smoothed_alerts(DetectorSettings()),
        smoothed_alerts(DetectorSettings(smoothed_repeat_rows=0)),
    )
    assert 1 <= quiet <= 6  # the drift is reported...
    assert chatty >= 3 * quiet  # ...without an alert at every cool-down while the moving average climbs


def test_settings_are_validated() -> None:
    with pytest.raises(ValidationError):
        DetectorSettings(threshold=0)
    with pytest.raises(ValidationError):
        DetectorSettings(memory_rows=3)
    with pytest.raises(ValidationError, match="outlier_ratio"):
        DetectorSettings(outlier_ratio=1.0)  # every record would be an outlier
    with pytest.raises(ValidationError, match="smoothed_threshold"):
        DetectorSettings(smoothed_threshold=0)
    with pytest.raises(ValidationError, match="smoothed_repeat_rows"):
        DetectorSettings(smoothed_repeat_rows=-1)
