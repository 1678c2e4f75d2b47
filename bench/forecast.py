"""Forecast accuracy on the load development set (../shared/datasets/load_dev): the shared forecaster
against seasonal-naive and last-value naive forecasts, and how often its 80% and 95% bands hold.

For every series, origins are taken every hour over the last ``--test-days`` days; from each origin
the forecaster sees only the history up to it and forecasts one hour ahead (6 steps at 10 minutes).
The baselines forecast the same targets from the same origins: last-value naive repeats the last
value; seasonal naive repeats the value one day earlier (same time of day). Reported per series:

* ``mase_vs_snaive`` = MAE(forecaster) / MAE(seasonal naive) and ``mase_vs_naive`` = MAE(forecaster)
  / MAE(naive) over the same targets (relative MAE: below 1 beats the baseline);
* ``cov80`` / ``cov95``: share of targets inside the 80% / 95% band.

ServeGen targets equal to 0 are left out of every figure: they are whole-trace collection gaps (see the
set's README), not traffic. The Mooncake traces last 58 minutes, so they cannot be forecast an hour
ahead: they are scored at 10 minutes from every origin after the first 24 minutes, and have no
seasonal-naive baseline (no day in them). The last line is a key=value summary over the four ServeGen
series (means of the per-series figures).

    .venv/bin/python bench/forecast.py [--data ../shared/datasets/load_dev] [--test-days 4]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optiinfra_assets.agents.forecast import forecast, step_seconds

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "load_dev"
HOUR_S = 3600
DAY_S = 86_400


@dataclass
class Score:
    name: str
    method: str
    mae: float
    mae_snaive: float | None
    mae_naive: float
    cov80: float
    cov95: float
    targets: int

    def line(self) -> str:
        snaive = f"{self.mae / self.mae_snaive:.3f}" if self.mae_snaive else "n/a"
        return (
            f"{self.name:36s} targets={self.targets:4d} mase_vs_snaive={snaive:>5s} "
            f"mase_vs_naive={self.mae / self.mae_naive:.3f} cov80={self.cov80:.3f} "
            f"cov95={self.cov95:.3f} method={self.method}"
        )


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = np.array([r["timestamp"] for r in rows], dtype="datetime64[s]")
    return np.array([float(r["value"]) for r in rows]), stamps


def evaluate(
    name: str, y: np.ndarray, t: np.ndarray, horizon: int, origins: np.ndarray, skip_zero: bool
) -> Score:
    step = step_seconds(t)
    day = round(DAY_S / step) if DAY_S % step == 0 else None
    err, err_sn, err_nv, in80, in95 = [], [], [], [], []
    methods: dict[str, int] = {}
    for origin in origins:
        fc = forecast(y[: origin + 1], t[: origin + 1], horizon)
        methods[fc.method.split("(")[0]] = methods.get(fc.method.split("(")[0], 0) + 1
        for h in range(1, horizon + 1):
            target = origin + h
            if target >= len(y) or (skip_zero and y[target] == 0):
                continue
            actual = y[target]
            err.append(abs(actual - fc.point[h - 1]))
            err_nv.append(abs(actual - y[origin]))
            if day is not None and target - day >= 0:
                # the same time one day earlier, but never from after the origin
                k = -(-h // day)
                err_sn.append(abs(actual - y[target - k * day]))
            in80.append(fc.lower_80[h - 1] <= actual <= fc.upper_80[h - 1])
            in95.append(fc.lower_95[h - 1] <= actual <= fc.upper_95[h - 1])
    return Score(
        name=name,
        method=", ".join(f"{m} x{c}" for m, c in sorted(methods.items())),
        mae=float(np.mean(err)),
        mae_snaive=float(np.mean(err_sn)) if err_sn and day is not None else None,
        mae_naive=float(np.mean(err_nv)),
        cov80=float(np.mean(in80)),
        cov95=float(np.mean(in95)),
        targets=len(err),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--test-days", type=float, default=4.0)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    servegen: list[Score] = []
    for path in sorted(args.data.glob("*.csv")):
        y, t = read_series(path)
        step = step_seconds(t)
        if path.name.startswith("servegen"):
            horizon = round(HOUR_S / step)
            first = len(y) - 1 - round(args.test_days * DAY_S / step)
            origins = np.arange(first, len(y) - 1, horizon)
            score = evaluate(path.stem, y, t, horizon, origins, skip_zero=True)
            servegen.append(score)
        else:
            horizon = 10
            origins = np.arange(24, len(y) - 1)
            score = evaluate(path.stem + " (10 min)", y, t, horizon, origins, skip_zero=False)
        print(score.line(), flush=True)
    print(f"seconds={time.perf_counter() - started:.1f}")
    print(
        f"mase_vs_seasonal_naive={np.mean([s.mae / s.mae_snaive for s in servegen if s.mae_snaive]):.3f} "
        f"mase_vs_naive={np.mean([s.mae / s.mae_naive for s in servegen]):.3f} "
        f"coverage_80={np.mean([s.cov80 for s in servegen]):.3f} "
        f"coverage_95={np.mean([s.cov95 for s in servegen]):.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
