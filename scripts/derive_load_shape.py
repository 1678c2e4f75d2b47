"""Derive the sandbox's traced load shape (optiinfra_assets/sandbox.py TRACE_DAY_SHAPE, TRACE_BURST_QUANTILES)
from a real request-rate trace, and print them as Python to paste there. Run by hand; the sandbox never reads
the trace.

The trace: ServeGen language/m-small, all 43 clients summed (alibaba/ServeGen @ f891d1189eb32b3868dfc443800c4150548c282a,
``data/language/m-small/chunk-*-trace.csv``, Apache-2.0), as ``shared/datasets/load_dev/servegen_m_small_rpm.csv``:
14 days of requests per minute at 10-minute steps. Windows of 0 are gaps in the published data (its README),
not quiet times, and are left out.

- day shape: per 10-minute slot of the day, the median over the days of the slot's rate over its day's mean
  (so that the two weeks' growth does not count as a shape), scaled to mean 1;
- bursts: quantiles of each window's rate over its slot's day-shape value (what is left after the daily
  cycle: bursts and lulls, one 10-minute window each).

    .venv/bin/python scripts/derive_load_shape.py ../shared/datasets/load_dev/servegen_m_small_rpm.csv
"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl

SLOTS_PER_DAY = 144  # 10-minute windows
BURST_LEVELS = np.linspace(0.0, 1.0, 21)


def derive(path: str) -> tuple[np.ndarray, np.ndarray]:
    values = pl.read_csv(path)["value"].to_numpy().astype(np.float64)
    days = values.size // SLOTS_PER_DAY
    grid = values[: days * SLOTS_PER_DAY].reshape(days, SLOTS_PER_DAY)
    grid = np.where(grid > 0, grid, np.nan)
    relative = grid / np.nanmean(grid, axis=1, keepdims=True)
    shape = np.nanmedian(relative, axis=0)
    shape /= shape.mean()
    ratio = (relative / shape)[np.isfinite(relative)]
    return shape, np.quantile(ratio / ratio.mean(), BURST_LEVELS)


def main() -> None:
    shape, bursts = derive(sys.argv[1])
    print(f"TRACE_DAY_SHAPE: tuple[float, ...] = ({', '.join(f'{v:.3f}' for v in shape)})")
    print(f"TRACE_BURST_QUANTILES: tuple[float, ...] = ({', '.join(f'{v:.3f}' for v in bursts)})")


if __name__ == "__main__":
    main()
