"""The shared forecaster: a univariate series in, a point forecast with 80% and 95% intervals out.

Used for budget forecasts and predictive autoscaling; ``optiinfra forecast`` exposes the same function.
Pure numpy, no stores, no Dagster.

How it forecasts:

1. **Step and season from the data.** The step is the median spacing of the timestamps. A daily and a
   weekly season are candidates when the step divides them and the history holds
   ``season_min_periods`` of them; a candidate is kept only if the series' autocorrelation at that lag
   is at least ``season_min_acf`` (a trace with no daily cycle gets no seasonal model).
2. **Candidates.** Simple exponential smoothing of the level (``alpha = 1`` is the last-value naive
   forecast), and, per kept season, the same smoothing of the series minus a seasonal profile: the
   median of the last ``profile_periods`` values at the same phase (and its neighbours), which
   shrugs off a missing day or a burst. Every profile is computed from the past of each origin only.
3. **Choice by backtest.** Each candidate forecasts from the last ``backtest_origins`` origins of the
   history at the requested horizon; the one with the lowest mean absolute error wins.
4. **Intervals from its own errors.** The 80% and 95% bands are empirical quantiles of the winner's
   backtest errors at each step ahead (split-conformal style), so they are as wide as the method
   has actually been wrong on this series; with too few origins they fall back to a normal band
   from the one-step errors, widened with the square root of the horizon.

Too little history raises ``ValueError`` naming what is missing; callers fall back and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SECONDS_PER_DAY = 86_400
SEASONS: dict[str, int] = {"daily": SECONDS_PER_DAY, "weekly": 7 * SECONDS_PER_DAY}
# Two-sided normal quantiles for the fallback band.
Z = {80: 1.2815515655446004, 95: 1.959963984540054}


class ForecastSettings(BaseModel):
    """Every knob of the forecaster."""

    model_config = ConfigDict(frozen=True)

    min_rows: int = Field(12, ge=3, description="Fewest points of history accepted.")
    max_horizon_fraction: float = Field(
        0.5, gt=0, le=1, description="The horizon may be at most this fraction of the history."
    )
    season_min_periods: int = Field(2, ge=2, description="Full seasons of history a season needs.")
    season_min_acf: float = Field(0.2, ge=0, lt=1, description="Autocorrelation at the season's lag.")
    profile_periods: int = Field(4, ge=1, description="Past seasons whose median is the profile.")
    profile_halfwidth: int = Field(1, ge=0, description="Neighbouring phases pooled into the profile.")
    alphas: tuple[float, ...] = Field(
        (0.1, 0.2, 0.3, 0.5, 0.7, 1.0), description="Level smoothing weights tried (1.0 = naive)."
    )
    backtest_origins: int = Field(288, ge=1, description="Most recent origins backtested.")
    min_backtest_origins: int = Field(20, ge=1, description="Origins needed for empirical intervals.")


DEFAULT_SETTINGS = ForecastSettings()


@dataclass(frozen=True)
class Forecast:
    """The forecast of the next ``horizon`` points of a series."""

    timestamps: np.ndarray  # datetime64[ms], continuing the series at its step
    point: np.ndarray
    lower_80: np.ndarray
    upper_80: np.ndarray
    lower_95: np.ndarray
    upper_95: np.ndarray
    method: str  # e.g. "seasonal_ses(daily, alpha=0.5)" or "ses(alpha=1)" (last-value naive)
    season: str | None  # "daily", "weekly" or None: the season the method uses
    season_points: int | None  # points per season
    step_seconds: float


@dataclass(frozen=True)
class _Candidate:
    alpha: float
    season: str | None
    period: int | None

    @property
    def name(self) -> str:
        if self.season is None:
            return f"ses(alpha={self.alpha:g})"
        return f"seasonal_ses({self.season}, alpha={self.alpha:g})"


# --- pieces ------------------------------------------------------------------------------------------


def step_seconds(timestamps: np.ndarray) -> float:
    """The series' step: the median spacing of its timestamps, in seconds."""
    seconds = _as_seconds(timestamps)
    gaps = np.diff(seconds)
    if len(gaps) == 0 or np.any(gaps <= 0):
        raise ValueError("timestamps must be strictly increasing")
    return float(np.median(gaps))


def _as_seconds(timestamps: np.ndarray) -> np.ndarray:
    t = np.asarray(timestamps)
    if np.issubdtype(t.dtype, np.datetime64):
        return t.astype("datetime64[ms]").astype(np.int64) / 1000.0
    return t.astype(np.float64)


def autocorrelation(y: np.ndarray, lag: int) -> float:
    """Sample autocorrelation of y at ``lag`` (0 when undefined)."""
    if lag <= 0 or lag >= len(y):
        return 0.0
    d = y - y.mean()
    denom = float(d @ d)
    return float(d[:-lag] @ d[lag:]) / denom if denom > 0 else 0.0


def detect_seasons(y: np.ndarray, step: float, s: ForecastSettings) -> dict[str, int]:
    """The seasons (name -> points per season) the data supports; see the module doc."""
    found: dict[str, int] = {}
    for name, seconds in SEASONS.items():
        per = seconds / step
        if abs(per - round(per)) > 1e-6 or round(per) < 2:
            continue
        period = round(per)
        if len(y) >= s.season_min_periods * period and autocorrelation(y, period) >= s.season_min_acf:
            found[name] = period
    return found


def seasonal_profile(
    y: np.ndarray, origins: np.ndarray, horizon: int, period: int, s: ForecastSettings
) -> np.ndarray:
    """Seasonal estimate h = 1..horizon steps after each origin, from y[:origin + 1] only: the median
    of the values one, two, ... ``profile_periods`` seasons before the target (and
    ``profile_halfwidth`` phases either side), starting from the first season back that is in the
    past. Shape (len(origins), horizon); NaN where no such value exists."""
    steps = np.arange(1, horizon + 1)
    first = -(-steps // period)  # first season back that lies at or before the origin
    seasons = first[:, None] + np.arange(s.profile_periods)[None, :]  # (horizon, periods)
    offsets = np.arange(-s.profile_halfwidth, s.profile_halfwidth + 1)
    back = (steps[:, None] - period * seasons)[:, :, None] + offsets[None, None, :]
    idx = origins[:, None, None] + back.reshape(horizon, -1)[None, :, :]  # (origins, horizon, k)
    valid = (idx >= 0) & (idx <= origins[:, None, None])
    vals = np.where(valid, y[np.clip(idx, 0, len(y) - 1)], np.nan)
    out = np.full(vals.shape[:2], np.nan)
    has = valid.any(axis=2)
    out[has] = np.nanmedian(vals[has], axis=1)
    return out


def _causal_profile(y: np.ndarray, period: int, s: ForecastSettings) -> np.ndarray:
    """The seasonal estimate at every index t from y[:t] (one step ahead); NaN without a past season."""
    n = len(y)
    offsets = np.arange(-s.profile_halfwidth, s.profile_halfwidth + 1)
    ks = np.arange(1, s.profile_periods + 1)
    idx = np.arange(n)[:, None, None] - period * ks[None, :, None] + offsets[None, None, :]
    idx = idx.reshape(n, -1)
    valid = (idx >= 0) & (idx < np.arange(n)[:, None])
    vals = np.where(valid, y[np.clip(idx, 0, n - 1)], np.nan)
    out = np.full(n, np.nan)
    has = valid.any(axis=1)
    out[has] = np.nanmedian(vals[has], axis=1)
    return out


def _smoothed_levels(d: np.ndarray, alpha: float) -> np.ndarray:
    """Exponentially smoothed level after each point of d (NaNs skipped: the level carries over)."""
    levels = np.empty(len(d))
    level = np.nan
    for i, v in enumerate(d.tolist()):
        if v == v:  # not NaN
            level = v if level != level else level + alpha * (v - level)
        levels[i] = level
    return levels


# --- the forecaster ----------------------------------------------------------------------------------


class _Model:
    """One candidate fitted to one series: forecasts from any origin, using only data up to it."""

    def __init__(self, y: np.ndarray, cand: _Candidate, s: ForecastSettings) -> None:
        self.y, self.cand, self.s = y, cand, s
        if cand.period is None:
            self.levels = _smoothed_levels(y, cand.alpha)
        else:
            self.levels = _smoothed_levels(y - _causal_profile(y, cand.period, s), cand.alpha)

    def predict(self, origins: np.ndarray, horizon: int) -> np.ndarray:
        """Forecasts (len(origins), horizon), each from the data up to its origin."""
        level = self.levels[origins][:, None]
        if self.cand.period is None:
            return np.repeat(level, horizon, axis=1)
        return level + seasonal_profile(self.y, origins, horizon, self.cand.period, self.s)


def _backtest_errors(model: _Model, origins: np.ndarray, horizon: int) -> np.ndarray:
    """errors[o, h] = actual - forecast, h steps ahead of each origin (NaN past the data)."""
    targets = origins[:, None] + np.arange(1, horizon + 1)[None, :]
    actual = np.where(targets < len(model.y), model.y[np.minimum(targets, len(model.y) - 1)], np.nan)
    return actual - model.predict(origins, horizon)


def _bands(
    point: np.ndarray, errors: np.ndarray, s: ForecastSettings
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Lower/upper bands per coverage: empirical error quantiles per step ahead, or a normal fallback."""
    horizon = len(point)
    counts = np.sum(~np.isnan(errors), axis=0)
    bands = {}
    for cover in (80, 95):
        tail = (100 - cover) / 2
        if horizon and counts.min() >= s.min_backtest_origins:
            lo = np.nanpercentile(errors, tail, axis=0)
            hi = np.nanpercentile(errors, 100 - tail, axis=0)
        else:
            one_step = errors[:, 0][~np.isnan(errors[:, 0])]
            sigma = float(np.sqrt(np.mean(one_step**2))) if len(one_step) else 0.0
            half = Z[cover] * sigma * np.sqrt(np.arange(1, horizon + 1))
            lo, hi = -half, half
        bands[cover] = (point + np.minimum(lo, 0.0), point + np.maximum(hi, 0.0))
    return bands


def forecast(
    values: np.ndarray,
    timestamps: np.ndarray,
    horizon: int,
    settings: ForecastSettings = DEFAULT_SETTINGS,
) -> Forecast:
    """Forecast the next ``horizon`` points of the series (see the module doc).

    ``timestamps`` (datetime64 or epoch seconds, strictly increasing) set the step and the seasons.
    Raises ``ValueError`` on a bad horizon, bad timestamps, non-finite values or too little history.
    """
    y = np.asarray(values, dtype=np.float64)
    n = len(y)
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    if len(timestamps) != n:
        raise ValueError(f"{len(timestamps)} timestamps for {n} values")
    if not np.all(np.isfinite(y)):
        raise ValueError("values must be finite numbers")
    need = max(settings.min_rows, int(np.ceil(horizon / settings.max_horizon_fraction)))
    if n < need:
        raise ValueError(
            f"{n} points of history are too few for a {horizon}-step forecast: need at least {need}"
        )
    step = step_seconds(timestamps)

    seasons = detect_seasons(y, step, settings)
    candidates = [_Candidate(a, None, None) for a in settings.alphas] + [
        _Candidate(a, name, period) for name, period in seasons.items() for a in settings.alphas
    ]
    # Origins leave a full horizon of actuals after them where the history allows.
    last_origin = n - 1 - horizon
    first_origin = max(settings.min_rows - 1, last_origin - settings.backtest_origins + 1)
    origins = (
        np.arange(first_origin, last_origin + 1) if last_origin >= first_origin else np.arange(n - 2, n - 1)
    )

    best: tuple[float, _Model, np.ndarray] | None = None
    for cand in candidates:
        model = _Model(y, cand, settings)
        errors = _backtest_errors(model, origins, horizon)
        mae = float(np.nanmean(np.abs(errors))) if np.any(~np.isnan(errors)) else np.inf
        if best is None or mae < best[0]:
            best = (mae, model, errors)
    assert best is not None
    _, model, errors = best

    point = model.predict(np.array([n - 1]), horizon)[0]
    if np.any(np.isnan(point)):  # a profile with no past phase: fall back to the level alone
        point = np.where(np.isnan(point), model.levels[n - 1], point)
    bands = _bands(point, errors, settings)
    last = np.asarray(timestamps)[-1]
    if np.issubdtype(np.asarray(timestamps).dtype, np.datetime64):
        start = last.astype("datetime64[ms]")
    else:
        start = np.datetime64(round(float(last) * 1000), "ms")
    future = start + (np.arange(1, horizon + 1) * round(step * 1000)).astype("timedelta64[ms]")
    return Forecast(
        timestamps=future,
        point=point,
        lower_80=bands[80][0],
        upper_80=bands[80][1],
        lower_95=bands[95][0],
        upper_95=bands[95][1],
        method=model.cand.name,
        season=model.cand.season,
        season_points=model.cand.period,
        step_seconds=step,
    )
