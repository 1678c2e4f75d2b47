"""The shared streaming anomaly detector: one univariate series in, a score and a decision per point out.

Every agent runs its fleet metrics (cost, latency, GPU utilization, request rates...) through
:func:`detect`; ``optiinfra detect`` exposes the same function. :func:`detect_many` gives the same results
for many series at once (a fleet's hourly series: one pass of numpy work per batch instead of per series).
Pure numpy/scipy, no stores, no Dagster.

How it decides, for each point, using only that point and the points before it (no look-ahead):

1. **Views.** The series is looked at in a few complementary ways (:data:`VIEWS` and
   :func:`daily_view`), each a signed
   stream where "larger" means "more unusual in one direction": the value itself (a new high or low),
   a short moving average (a sustained excursion), the distance from the median of the last few
   points (a spike), a short mean against the median of the window before it (a level shift), the
   size of recent changes (volatility), and, when the timestamps show a daily step, the change
   from the same time one day earlier (a broken daily pattern).
2. **Record ratio.** Each view is judged against its own history over the last ``memory_rows``
   points: ``ratio = (v - median) / (max - median)``. A ratio above 1 means the view is beyond
   anything it showed in that memory. This needs no distribution assumption and no scale: a bursty
   series raises its own bar, a calm one keeps it low, so one threshold serves every metric. A point
   that was itself an outlier (ratio above ``outlier_ratio``) is left out of the max for the points
   after it, so one huge spike does not hide every ordinary incident for ``memory_rows`` points.
3. **Decision.** The point's ratio is the largest over the views; the point is anomalous when it
   exceeds ``threshold`` (the moving-average view, the calmest, at ``smoothed_threshold``: any new
   record of it), after ``warmup_rows`` of history, and not within ``cooldown_rows`` of the
   previous alert unless it is ``override_factor`` times stronger (one alert per event, as an operator
   wants, yet a much worse second event still alerts). The daily view does not count where an alert
   was raised exactly one day earlier: yesterday's spike would otherwise make today's ordinary value
   an "echo" anomaly. A smoothed view that alerted waits ``smoothed_repeat_rows`` before it alerts
   again: a drifting series sets a new moving-average record at every step, one alert says it.

``score`` maps the ratio to 0..1 with 0.5 at the threshold (``0.5 * ratio / threshold``, clipped), so
it reads like a probability-style score; ``is_anomaly`` is the decision, which also applies warm-up and
cool-down, so a point can score above 0.5 without being an alert.

Tuned once, with one set of parameters, on the NAB development set (see docs/benchmarks.md); nothing
is fitted per series beyond the streaming history itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import maximum_filter1d

SECONDS_PER_DAY = 86_400
# Series judged together by detect_many: bounds the memory of one batch (a few dozen arrays of this many
# rows by the series' length), while still sharing the per-call numpy overhead across many short series.
DETECT_BATCH_ROWS = 1024


class DetectorSettings(BaseModel):
    """Every knob of the detector, with the values tuned on the NAB development set."""

    model_config = ConfigDict(frozen=True)

    memory_rows: int = Field(4000, ge=16, description="History a view is judged against (points).")
    threshold: float = Field(1.1, gt=0, description="Record ratio above which a point alerts.")
    smoothed_threshold: float = Field(
        1.0,
        gt=0,
        description="Record ratio above which the moving-average view alerts: any new record of it.",
    )
    smoothed_repeat_rows: int = Field(
        1000, ge=0, description="Points a smoothed view that alerted waits before it alerts again."
    )
    warmup_rows: int = Field(100, ge=1, description="Points of history before any alert.")
    min_history: int = Field(50, ge=1, description="Defined points a view needs behind it to count.")
    cooldown_rows: int = Field(120, ge=0, description="Points after an alert during which others wait.")
    override_factor: float = Field(
        1.75, ge=1, description="An alert within the cool-down needs this multiple of the last ratio."
    )
    spike_window: int = Field(5, ge=1, description="Points whose median a spike is measured from.")
    smooth_window: int = Field(16, ge=2, description="Points of the moving average and level-shift mean.")
    shift_baseline: int = Field(256, ge=2, description="Points before the mean that set the old level.")
    volatility_window: int = Field(32, ge=2, description="Points whose changes make the volatility.")
    center_stride: int = Field(16, ge=1, description="The memory's median is refreshed every N points.")
    outlier_ratio: float | None = Field(
        2.0,
        gt=1,
        description="A point whose ratio exceeds this is an outlier and does not raise the bar after it"
        " (None: every point does).",
    )
    daily_view: bool = Field(True, description="Compare with one day earlier when the step allows it.")
    echo_halfwidth: int = Field(
        0, ge=0, description="Points either side of one day earlier where an alert voids the daily view."
    )


DEFAULT_SETTINGS = DetectorSettings()


@dataclass(frozen=True)
class DetectionResult:
    """Per-point output of :func:`detect`, aligned with the input."""

    score: np.ndarray  # float64 in [0, 1], 0.5 at the alert threshold
    is_anomaly: np.ndarray  # bool: the alert decision
    ratio: np.ndarray  # float64: the record ratio behind the score (largest over the views)
    view: np.ndarray  # str: the view that gave the ratio ("" where none was unusual)


# --- views -------------------------------------------------------------------------------------------
# Every array function below works along the last axis: a 1-D array is one series, a 2-D array one series
# per row (detect_many), each row computed exactly as it would be alone.


def _trailing_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of x[t-k+1..t]; NaN until k points exist."""
    out = np.full(x.shape, np.nan)
    if x.shape[-1] >= k:
        c = np.concatenate((np.zeros((*x.shape[:-1], 1)), np.cumsum(x, axis=-1)), axis=-1)
        out[..., k - 1 :] = (c[..., k:] - c[..., :-k]) / k
    return out


def _lagged_median(x: np.ndarray, w: int, lag: int = 0) -> np.ndarray:
    """Median of the w points ending ``lag + 1`` points before t (x[t-lag-w .. t-lag-1]); NaN before."""
    out = np.full(x.shape, np.nan)
    n, start = x.shape[-1], w + lag
    if n > start:
        out[..., start:] = np.median(sliding_window_view(x, w, axis=-1)[..., : n - start, :], axis=-1)
    return out


def _both_ways(name: str, signed: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{name}_up": signed, f"{name}_down": -signed}


def level_view(x: np.ndarray, period: int | None, s: DetectorSettings) -> dict[str, np.ndarray]:
    """The value itself: a new high or low."""
    return _both_ways("level", x)


def smoothed_view(x: np.ndarray, period: int | None, s: DetectorSettings) -> dict[str, np.ndarray]:
    """A short moving average: an excursion that lasts, not one noisy point."""
    return _both_ways("smoothed", _trailing_mean(x, s.smooth_window))


def spike_view(x: np.ndarray, period: int | None, s: DetectorSettings) -> dict[str, np.ndarray]:
    """Distance from the median of the previous few points: a spike or a dip."""
    return _both_ways("spike", x - _lagged_median(x, s.spike_window))


def shift_view(x: np.ndarray, period: int | None, s: DetectorSettings) -> dict[str, np.ndarray]:
    """The recent mean against the median of the window before it: a level shift."""
    k = s.smooth_window
    old_level = _lagged_median(x, s.shift_baseline, lag=k - 1)
    return _both_ways("shift", _trailing_mean(x, k) - old_level)


def volatility_view(x: np.ndarray, period: int | None, s: DetectorSettings) -> dict[str, np.ndarray]:
    """Log of the RMS of the recent changes: a series that starts to jump around (upward only: a calm
    spell is not an incident)."""
    d = np.diff(x, axis=-1, prepend=x[..., :1])
    rms = np.sqrt(_trailing_mean(d * d, s.volatility_window))
    # The floor keeps a flat stretch finite; its first movement is then a clear record.
    return {"volatility_up": np.log(rms + 1e-9 * (1.0 + np.abs(x)))}


def daily_view(x: np.ndarray, period: int | None, s: DetectorSettings) -> dict[str, np.ndarray]:
    """The change from the same time one day earlier: a broken daily pattern."""
    if period is None or not s.daily_view or x.shape[-1] <= period:
        return {}
    diff = np.full(x.shape, np.nan)
    diff[..., period:] = x[..., period:] - x[..., :-period]
    return _both_ways("daily", diff)


View = Callable[[np.ndarray, int | None, DetectorSettings], Mapping[str, np.ndarray]]
# Views of the point and its recent past; the daily view is added after them (see _without_echoes).
VIEWS: tuple[View, ...] = (level_view, smoothed_view, spike_view, shift_view, volatility_view)


# --- judging a view against its own history ----------------------------------------------------------


def _lagged_max(v: np.ndarray, memory: int) -> np.ndarray:
    """Max of v over the previous ``memory`` points (excluding t); -inf when there is none."""
    a = np.where(np.isnan(v), -np.inf, v)
    out = np.full(a.shape, -np.inf)
    if 1 < a.shape[-1] <= memory + 1:
        # The memory reaches back to the first point from every t: the running max, without the filter's
        # padding of ``memory`` points per row (a week of hours against a memory of thousands).
        out[..., 1:] = np.maximum.accumulate(a[..., :-1], axis=-1)
    elif a.shape[-1] > 1:
        # maximum_filter1d with this origin gives the max of a[t-memory+1 .. t]; shift by one.
        m = maximum_filter1d(a, size=memory, axis=-1, origin=(memory - 1) // 2, mode="constant", cval=-np.inf)
        out[..., 1:] = m[..., :-1]
    return out


def _lagged_center(v: np.ndarray, memory: int, stride: int) -> np.ndarray:
    """Median of v's defined points over the ``memory`` points before each block of ``stride`` points
    (causal: a block starting at b uses v[b-memory .. b-1]); refreshed per block because a median is
    costly per point."""
    out = np.full(v.shape, np.nan)
    n = v.shape[-1]
    shape = (int(np.prod(v.shape[:-1])), n)  # (-1, n) cannot reshape an empty series
    rows, centers = v.reshape(shape), out.reshape(shape)
    missing = np.isnan(rows)
    if len(rows) > 1 and (missing != missing[:1]).any():
        # Undefined points differ between rows (not the case for views of equally long gap-filled
        # series): each row's own defined points, one row at a time.
        for r in range(len(rows)):
            centers[r] = _lagged_center(rows[r], memory, stride)
        return out
    for b in range(stride, n, stride):
        lo = max(0, b - memory)
        history = rows[:, lo:b]
        if missing[0, lo:b].any():
            history = history[:, ~missing[0, lo:b]]
        if history.shape[1]:
            centers[:, b : b + stride] = np.median(history, axis=-1)[:, None]
    return out


def record_ratio(
    v: np.ndarray, memory: int, stride: int, min_history: int, outlier_ratio: float | None = None
) -> np.ndarray:
    """``(v - median) / (max - median)`` over the previous ``memory`` points: above 1 is a new record
    (along the last axis: each row of a 2-D ``v`` on its own).

    0 where the view is undefined or has fewer than ``min_history`` defined points behind it (a record
    among a handful of points means little); +inf where a view that was constant over that history
    moves up.

    With ``outlier_ratio``, a point whose own ratio exceeded it (a record by far, i.e. an outlier)
    does not set the bar for the points after it: the max is taken over the history without such
    points. Otherwise one huge spike would blind the view to every ordinary incident for ``memory``
    points. Causal: whether point s is an outlier depends on points up to s only.
    """
    center = _lagged_center(v, memory, stride)
    floor = -_lagged_max(-v, memory)

    def ratio_to(top: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (v - center) / (top - center)
        ratio[~np.isfinite(ratio)] = 0.0
        # A view that was constant and now moves is a record of its own kind (a majority of equal
        # values, as in count data, is not constant: its max equals the median only).
        ratio[(top == floor) & (v > top)] = np.inf
        return ratio

    ratio = ratio_to(_lagged_max(v, memory))
    if outlier_ratio is not None:
        ordinary = np.where(ratio > outlier_ratio, np.nan, v)
        top = _lagged_max(ordinary, memory)
        # Where every point in memory was an outlier the plain max stands.
        ratio = ratio_to(np.where(np.isfinite(top), top, _lagged_max(v, memory)))
    n = v.shape[-1]
    defined = np.concatenate(
        (np.zeros((*v.shape[:-1], 1), dtype=np.int64), np.cumsum(~np.isnan(v), axis=-1)), axis=-1
    )
    history = defined[..., :-1] - defined[..., np.maximum(np.arange(n) - memory, 0)]
    ratio[history < min(memory, min_history)] = 0.0
    return ratio


# --- the detector ------------------------------------------------------------------------------------


def daily_period(timestamps: np.ndarray | None) -> int | None:
    """Points per day when the series has a regular step that divides a day (at least 4 per day)."""
    if timestamps is None or len(timestamps) < 3:
        return None
    seconds = _as_seconds(timestamps)
    step = float(np.median(np.diff(seconds[: min(len(seconds), 1000)])))
    if step <= 0:
        return None
    per_day = SECONDS_PER_DAY / step
    if per_day < 4 or abs(per_day - round(per_day)) > 1e-6:
        return None
    return round(per_day)


def _as_seconds(timestamps: np.ndarray) -> np.ndarray:
    t = np.asarray(timestamps)
    if np.issubdtype(t.dtype, np.datetime64):
        return t.astype("datetime64[ms]").astype(np.int64) / 1000.0
    return t.astype(np.float64)


def _fill_gaps(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values with NaN/inf carried forward from the last finite point, mask of the finite points)."""
    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x)
    if ok.all() or not ok.any():
        return (x if ok.all() else np.zeros_like(x)), ok
    idx = np.where(ok, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    filled = x[idx]
    filled[: int(np.argmax(ok))] = x[ok][0]  # before the first finite point: that point
    return filled, ok


def _decide(
    ratio: np.ndarray,
    daily: np.ndarray,
    view: np.ndarray,
    daily_name: np.ndarray,
    period: int | None,
    s: DetectorSettings,
) -> np.ndarray:
    """Alerts from the ratios (``daily`` is the daily view's, ``ratio`` the best of the others; ``view``
    and ``daily_name`` name the view behind each): threshold, warm-up, one alert per event (cool-down
    with override), no echo: the daily view does not count where an alert was raised one day earlier
    (give or take ``echo_halfwidth``), since yesterday's spike makes today's ordinary value look unusual
    against it; and no trend re-alerts: the moving average keeps setting records while a series
    climbs or falls, so a smoothed view that alerted waits ``smoothed_repeat_rows`` before it alerts
    again (unless ``override_factor`` stronger), as an operator wants one alert per drift."""
    best = np.maximum(ratio, daily)
    alerts = np.zeros(len(ratio), dtype=bool)
    last_i, last_ratio = -(10**12), 0.0
    last_smoothed: dict[str, int] = {}
    for i in np.flatnonzero(best > s.threshold):
        if i < s.warmup_rows:
            continue
        r, name = best[i], str(daily_name[i] if daily[i] > ratio[i] else view[i])
        if period is not None and daily[i] > ratio[i]:
            lo, hi = i - period - s.echo_halfwidth, i - period + s.echo_halfwidth
            if hi >= 0 and alerts[max(lo, 0) : hi + 1].any():
                r, name = ratio[i], str(view[i])
                if r <= s.threshold:
                    continue
        stronger = r > s.override_factor * last_ratio
        repeat = (
            name.startswith("smoothed") and i - last_smoothed.get(name, -(10**12)) <= s.smoothed_repeat_rows
        )
        if (i - last_i > s.cooldown_rows or stronger) and (stronger or not repeat):
            alerts[i] = True
            last_i, last_ratio = int(i), float(r)
            if name.startswith("smoothed"):
                last_smoothed[name] = int(i)
    return alerts


def _threshold_scale(view_name: str, s: DetectorSettings) -> float:
    """Factor that puts a view's ratio on the common ``threshold``: the moving average is the calmest
    view (averaging removes the noise the spike and change views react to), so a new record of it is
    already an event, while the noisier views must go ``threshold`` past theirs (measured on NAB: see
    docs/benchmarks.md)."""
    return s.threshold / s.smoothed_threshold if view_name.startswith("smoothed") else 1.0


def detect(
    values: np.ndarray,
    timestamps: np.ndarray | None = None,
    settings: DetectorSettings = DEFAULT_SETTINGS,
) -> DetectionResult:
    """Score and flag every point of a series, each from its own past only (see the module doc).

    ``timestamps`` (datetime64 or seconds) are optional; they only enable the daily view. Non-finite
    values are carried forward for the views and never flagged.
    """
    return detect_many([(values, timestamps)], settings)[0]


def detect_many(
    series: Sequence[tuple[np.ndarray, np.ndarray | None]],
    settings: DetectorSettings = DEFAULT_SETTINGS,
    batch_rows: int = DETECT_BATCH_ROWS,
) -> list[DetectionResult]:
    """:func:`detect` of each ``(values, timestamps)``, in order, with identical results: series of one
    length and one daily period are stacked, up to ``batch_rows`` at a time, and every view and record
    ratio is computed for all of them at once (row by row the same arithmetic); only the alert decision
    runs per series. A fleet's short hourly series thus pay numpy's per-call overhead once per batch."""
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    results: list[DetectionResult | None] = [None] * len(series)
    groups: dict[tuple[int, int | None], list[int]] = {}
    for i, (values, timestamps) in enumerate(series):
        groups.setdefault((len(values), daily_period(timestamps)), []).append(i)
    for (n, period), members in groups.items():
        for start in range(0, len(members), batch_rows):
            batch = members[start : start + batch_rows]
            filled = [_fill_gaps(series[i][0]) for i in batch]
            x = np.stack([f[0] for f in filled]).reshape(len(batch), n)
            finite = np.stack([f[1] for f in filled]).reshape(len(batch), n)
            for i, result in zip(batch, _detect_rows(x, finite, period, settings), strict=True):
                results[i] = result
    return [r for r in results if r is not None]


def _detect_rows(
    x: np.ndarray, finite: np.ndarray, period: int | None, settings: DetectorSettings
) -> list[DetectionResult]:
    """:func:`detect` of each row of ``x`` (gap-filled, one series per row, ``finite`` its mask)."""
    ratio = np.zeros(x.shape)
    view = np.full(x.shape, "", dtype=object)

    def merge(target: np.ndarray, names: np.ndarray, name: str, r: np.ndarray) -> None:
        better = r > target
        target[better] = r[better]
        names[better] = name

    def judge(stream: np.ndarray) -> np.ndarray:
        return record_ratio(
            stream, settings.memory_rows, settings.center_stride, settings.min_history, settings.outlier_ratio
        )

    for make in VIEWS:
        for name, stream in make(x, period, settings).items():
            merge(ratio, view, name, judge(stream) * _threshold_scale(name, settings))
    daily = np.zeros(x.shape)
    daily_name = np.full(x.shape, "", dtype=object)
    for name, stream in daily_view(x, period, settings).items():
        merge(daily, daily_name, name, judge(stream))
    ratio[~finite] = daily[~finite] = 0.0
    view[~finite] = ""
    alerts = np.zeros(x.shape, dtype=bool)
    for r in range(len(x)):
        alerts[r] = _decide(ratio[r], daily[r], view[r], daily_name[r], period, settings)
    from_daily = daily > ratio
    ratio = np.where(from_daily, daily, ratio)
    view = np.where(from_daily, daily_name, view)
    score = np.clip(0.5 * ratio / settings.threshold, 0.0, 1.0)
    return [
        DetectionResult(score=score[r], is_anomaly=alerts[r], ratio=ratio[r], view=view[r])
        for r in range(len(x))
    ]
