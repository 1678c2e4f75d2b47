"""The sandbox's traced load (issue 9): the resource agent's deployments follow a real trace's day shape
and bursts (ServeGen m-small, reduced by scripts/derive_load_shape.py), the others the shared daily curve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.metrics import Domain

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared/datasets/load_dev/servegen_m_small_rpm.csv"
WEDNESDAY = datetime(2026, 11, 25, tzinfo=UTC)
TRACED, UNTRACED = "initech-pack-qwen14b-a", "acme-chat-8b"


def _load_by_minute() -> pl.DataFrame:
    customers, deployments, instances = sandbox.initial_fleet(3, WEDNESDAY - timedelta(days=40))
    chosen = [d for d in deployments if d.id in (TRACED, UNTRACED)]
    frames = sandbox.generate(
        customers, chosen, instances, [], WEDNESDAY, WEDNESDAY + timedelta(days=1), seed=3, step_s=60
    )
    return frames[Domain.PERFORMANCE].group_by("deployment_id", "ts").agg(pl.col("requests_per_s").sum())


def test_the_shipped_shape_is_the_traces_reduction() -> None:
    if not TRACE.exists():
        pytest.skip(f"{TRACE} is not on this machine")
    import importlib.util

    spec = importlib.util.spec_from_file_location("derive", ROOT / "scripts/derive_load_shape.py")
    assert spec and spec.loader
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    shape, bursts = derive.derive(str(TRACE))
    assert np.allclose(sandbox.TRACE_DAY_SHAPE, shape, atol=5e-4)
    assert np.allclose(sandbox.TRACE_BURST_QUANTILES, bursts, atol=5e-4)


def test_traced_deployments_follow_the_trace_and_the_others_the_daily_curve() -> None:
    load = _load_by_minute()
    traced = load.filter(pl.col("deployment_id") == TRACED).sort("ts")["requests_per_s"].to_numpy()
    untraced = load.filter(pl.col("deployment_id") == UNTRACED).sort("ts")["requests_per_s"].to_numpy()
    ts_s = np.arange(WEDNESDAY.timestamp(), WEDNESDAY.timestamp() + 86_400, 60)
    # The other deployments' load is untouched: the shared cosine curve, peaking at 15:00 UTC.
    expected = sandbox.demand_factor(ts_s)
    assert np.corrcoef(untraced, expected)[0, 1] > 0.95
    assert 14 <= int(np.argmax(untraced.reshape(24, 60).mean(axis=1))) <= 16
    # The traced one: the trace's late-evening peak and morning trough, hour by hour.
    slot_means = np.array(sandbox.TRACE_DAY_SHAPE).reshape(24, 6).mean(axis=1)
    hourly = traced.reshape(24, 60).mean(axis=1)
    assert np.corrcoef(hourly, slot_means)[0, 1] > 0.8
    assert int(np.argmax(hourly)) in range(19, 24) and int(np.argmin(hourly)) in range(1, 8)
    # Bursty: 10-minute windows depart from the day shape as the trace's do (a step at the window edge).
    windows = traced.reshape(144, 10).mean(axis=1) / np.array(sandbox.TRACE_DAY_SHAPE)
    assert windows.max() / np.median(windows) > 1.2
    assert _window_wiggle(traced) > 2 * _window_wiggle(untraced)


def _window_wiggle(per_minute: np.ndarray) -> float:
    """How far a day's 10-minute means stray from their hour's mean (relative standard deviation)."""
    windows = per_minute.reshape(144, 10).mean(axis=1)
    return float(np.std(windows / np.repeat(per_minute.reshape(24, 60).mean(axis=1), 6)))
