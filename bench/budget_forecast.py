"""How often the budget forecast's interval of a sum holds, on the load development set
(../shared/datasets/load_dev): the four 14-day ServeGen request-rate traces stand in for hourly spend.

Each 10-minute trace is summed to hours (a stand-in for one customer's hourly spend). From an origin every
6 hours over the last ``--test-days`` days, budget_forecast.forecast_sum sees only the hours up to the origin
and forecasts the sum of the next ``--horizon-hours`` hours (the rest of a month is such a sum); the actual
sum is checked against the 80% and 95% intervals. Reported per series and for all of them: coverage, and the
mean absolute percentage error of the point sum. Hours with collection gaps (zero in the trace: see the
set's README) are carried forward from the previous hour, as the budget forecast does with missing hours.

    .venv/bin/python bench/budget_forecast.py [--data ../shared/datasets/load_dev] [--test-days 5]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optiinfra_assets.agents.cost.budget_forecast import forecast_sum

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "load_dev"
SERIES = (
    "servegen_m_mid_rpm.csv",
    "servegen_m_small_rpm.csv",
    "servegen_m_mid_client60_rpm.csv",
    "servegen_m_small_client5_rpm.csv",
)


def hourly(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    ts = np.array([np.datetime64(r["timestamp"].replace(" ", "T"), "ms") for r in rows])
    values = np.array([float(r["value"]) for r in rows])
    values[values == 0] = np.nan  # a collection gap, not traffic
    hour = ts.astype("datetime64[h]")
    hours = np.unique(hour)
    sums = np.array(
        [np.nansum(values[hour == h]) if np.isfinite(values[hour == h]).any() else np.nan for h in hours]
    )
    ok = np.isfinite(sums)
    idx = np.maximum.accumulate(np.where(ok, np.arange(len(sums)), 0))
    return hours.astype("datetime64[ms]"), sums[idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--test-days", type=int, default=5)
    parser.add_argument("--horizon-hours", type=int, default=72)
    parser.add_argument("--every-hours", type=int, default=6)
    args = parser.parse_args()
    hits80 = hits95 = total = 0
    errors: list[float] = []
    for name in SERIES:
        hours, spend = hourly(args.data / name)
        n, h = len(spend), args.horizon_hours
        origins = range(n - args.test_days * 24, n - h + 1, args.every_hours)
        s80 = s95 = 0
        errs = []
        for origin in origins:
            sums, _ = forecast_sum(hours[:origin], spend[:origin], h)
            actual = float(spend[origin : origin + h].sum())
            s80 += sums["lower_80"] <= actual <= sums["upper_80"]
            s95 += sums["lower_95"] <= actual <= sums["upper_95"]
            errs.append(abs(sums["point"] - actual) / actual)
        k = len(errs)
        print(f"{name}: origins={k} cov80={s80 / k:.2f} cov95={s95 / k:.2f} mape={np.mean(errs):.3f}")
        hits80, hits95, total, errors = hits80 + s80, hits95 + s95, total + k, errors + errs
    print(
        f"horizon_h={args.horizon_hours} origins={total} cov80={hits80 / total:.2f} cov95={hits95 / total:.2f} "
        f"mape={np.mean(errors):.3f}"
    )


if __name__ == "__main__":
    main()
