"""What the detectors share: walking the fleet's hourly series, and asking the shared anomaly detector
(agents/anomaly.py) whether a series' newest hour is anomalous and against what usual level.

Plain functions over a :class:`FleetSnapshot` and numpy arrays: no store, no Dagster.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from optiinfra_assets.agents.anomaly import DETECT_BATCH_ROWS, DetectionResult, detect_many
from optiinfra_assets.models import Deployment
from optiinfra_assets.snapshot import FleetSnapshot


def hourly_series(
    snapshot: FleetSnapshot, domain: str, min_hours: int = 1
) -> Iterator[tuple[Deployment, pl.DataFrame]]:
    """Each deployment with at least ``min_hours`` hourly rows of ``domain``, with those rows."""
    for deployment in snapshot.deployments:
        rows = snapshot.hourly_of(domain, deployment.id)
        if rows.height >= min_hours:
            yield deployment, rows


def usual_before(values: np.ndarray, last: int) -> float:
    """The usual level before hour ``last``: the median of the hours before it (the hour itself if first)."""
    return float(np.median(values[:last])) if last else float(values[last])


@dataclass(frozen=True)
class NewestHour:
    """The newest hour of a series, flagged by the shared detector."""

    last: int  # its index in the series
    value: float
    usual: float  # usual_before(values, last)
    score: float  # the detector's score, 0.5 at its alert threshold
    view: str  # the detector's view that found it unusual


def newest_hour_anomaly(values: np.ndarray, hours: np.ndarray) -> NewestHour | None:
    """The newest hour of ``values`` (hourly, at ``hours``) if the shared detector flags it, else None."""
    return newest_hour_anomalies([(values, hours)])[0]


def newest_hour_anomalies(
    series: Sequence[tuple[np.ndarray, np.ndarray]], batch_rows: int = DETECT_BATCH_ROWS
) -> list[NewestHour | None]:
    """:func:`newest_hour_anomaly` of each ``(values, hours)``, in order: the whole fleet's series through
    the shared detector at once (``detect_many``: the same results as one series at a time, a fraction of
    the time for a fleet of short hourly series)."""
    results = detect_many(series, batch_rows=batch_rows)
    return [_newest(values, result) for (values, _), result in zip(series, results, strict=True)]


def _newest(values: np.ndarray, result: DetectionResult) -> NewestHour | None:
    last = len(values) - 1
    if not bool(result.is_anomaly[last]):
        return None
    return NewestHour(
        last=last,
        value=float(values[last]),
        usual=usual_before(values, last),
        score=float(result.score[last]),
        view=str(result.view[last]),
    )
