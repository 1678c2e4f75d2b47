"""Replay real request-rate traces through the serving model under three scaling policies.

Traces: every ``*_rpm.csv`` of ``../shared/datasets/load_dev/`` (ServeGen's 10-minute aggregates and
Mooncake's per-minute conversation trace; requests/min). The replay runs minute by minute:

* demand: the trace in requests/s; a 10-minute series is interpolated linearly between its windows' centres
  (the shape of the real trace, minute by minute). ServeGen's zero windows are missing data, not idle
  traffic (see the dataset's README): no policy sees a metric there, so both hold their replicas, and no
  SLO minute is counted in them.
* serving: one deployment of Llama-3.1-8B on p5.4xlarge (1 x H100, vLLM defaults) with a 30 s p95 SLO; p95 of
  a minute is the serving model's (serving.load_point) at the minute's rate spread over the ready replicas.
  A new replica serves ``autoscaling_lead_time_s`` after it is ordered (launch + loading weights) and costs
  GPU time from the order; a removed one stops at once.
* policies, all with the same DecisionSettings (hysteresis, cooldown, lead time), none tuned per trace:
  predictive - the autoscaler's own decision (agents/resource/autoscaling.py): the shared forecaster on the
  trace's native step, re-run when a new point arrives, its upper-95% peak over the lead window, at least the
  last 1-minute observation, raised by how far that observation is above the forecast for the step in
  progress, and at least the rise of the last minute carried on over the lead time (a ramp under way), sized
  for the SLO through the serving model;
  reactive - HPA-like: replicas = ceil(load / (replica capacity x target utilization)) on 1-minute metrics;
  peak - a fixed fleet sized for the trace's peak minute with the same SLO sizing.

Prints a line per trace and policy, then the totals as the last line:
``slo_violation_minutes_predictive=... slo_violation_minutes_reactive=... gpu_hours_predictive=...
gpu_hours_reactive=... gpu_hours_peak=...``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optiinfra_assets.agents.resource.autoscaling import (  # noqa: E402
    ReplicaSizing,
    decide_replicas,
    forecast_rate,
    replica_sizing,
)
from optiinfra_assets.catalog import default_config  # noqa: E402
from optiinfra_assets.config import DecisionSettings  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "load_dev"
MODEL, INSTANCE_TYPE, SLO_P95_MS = "Llama-3.1-8B", "p5.4xlarge", 30_000.0
MAX_REPLICAS = 10_000
MINUTE = np.timedelta64(60, "s")


@dataclass
class Trace:
    name: str
    native_ts: np.ndarray  # datetime64[s]
    native_rps: np.ndarray
    minute_ts: np.ndarray
    minute_rps: np.ndarray
    minute_missing: np.ndarray  # bool: the trace has no data for this minute


def load_trace(path: Path) -> Trace:
    frame = pl.read_csv(path)
    ts = np.array(frame["timestamp"].to_list(), dtype="datetime64[s]")
    rps = frame["value"].to_numpy().astype(np.float64) / 60.0
    step = np.median(np.diff(ts))
    minutes = np.arange(ts[0], ts[-1] + step, MINUTE)
    window = np.searchsorted(ts, minutes, side="right") - 1
    missing = rps[window] <= 0.0
    ok = rps > 0
    centres = (ts[ok] + step / 2 - ts[0]).astype(np.float64)
    at = (minutes + MINUTE / 2 - ts[0]).astype(np.float64)
    minute_rps = np.interp(at, centres, rps[ok]) if step > MINUTE else rps[window]
    return Trace(path.stem, ts, rps, minutes, np.where(missing, 0.0, minute_rps), missing)


@dataclass
class Replay:
    violation_minutes: int
    gpu_hours: float
    scalings: int
    fallback_minutes: int


def replay(trace: Trace, sizing: ReplicaSizing, settings: DecisionSettings, policy: str) -> Replay:
    """Minute-by-minute replay of one policy (see the module doc)."""
    lead_min = settings.autoscaling_lead_time_s // 60
    gpus = sizing.itype.gpu_count
    n = trace.minute_ts.size
    # Warm start: every policy begins with the replicas the first minute needs, already serving.
    first = trace.minute_rps[~trace.minute_missing][0]
    if policy == "peak":
        fixed = sizing.replicas_for(float(trace.minute_rps[~trace.minute_missing].max()))
        ready_at = [-lead_min] * fixed
    else:
        ready_at = [-lead_min] * sizing.replicas_for(first)
    last_change: int | None = None
    violations = scalings = fallback = 0
    gpu_minutes = 0.0
    rate_forecast = None
    seen = 0  # native points known to the forecaster
    for t in range(n):
        rate = float(trace.minute_rps[t])
        missing = bool(trace.minute_missing[t])
        ready = sum(1 for r in ready_at if r <= t)
        if not missing:
            p95 = sizing.p95_ms(rate, ready)
            violations += p95 > sizing.slo_p95_ms
        gpu_minutes += len(ready_at) * gpus
        if policy == "peak" or missing:
            continue  # a fixed fleet; or no metric this minute: hold
        if policy == "predictive":
            # The native points that have completed by the end of this minute feed the forecaster.
            step = trace.native_ts[1] - trace.native_ts[0]
            known = int(np.searchsorted(trace.native_ts + step, trace.minute_ts[t] + MINUTE, side="right"))
            if known != seen or rate_forecast is None:
                seen = known
                history = trace.native_rps[:known]
                filled = _carry_forward(history)
                rate_forecast = forecast_rate(filled, trace.native_ts[:known], settings)
            decision_forecast = rate_forecast
        else:
            decision_forecast = None
        since = None if last_change is None else (t - last_change) * 60.0
        # The 1-minute metric's rise since the previous minute (none across a missing minute).
        slope = (
            (rate - float(trace.minute_rps[t - 1])) / 60.0
            if t > 0 and not trace.minute_missing[t - 1]
            else 0.0
        )
        decision = decide_replicas(
            rate, decision_forecast, len(ready_at), 1, MAX_REPLICAS, sizing, settings, since, slope
        )
        fallback += decision.method == "reactive_fallback"
        if decision.target_replicas > len(ready_at):
            ready_at += [t + lead_min] * (decision.target_replicas - len(ready_at))
        elif decision.target_replicas < len(ready_at):
            ready_at = sorted(ready_at)[: decision.target_replicas]  # the newest (still booting) go first
        if decision.changes:
            last_change, scalings = t, scalings + 1
    return Replay(violations, gpu_minutes / 60.0, scalings, fallback)


def _carry_forward(values: np.ndarray) -> np.ndarray:
    """Missing (zero) windows take the last known rate: the forecaster sees a gap filled, not a crash."""
    out = values.copy()
    for i in range(1, out.size):
        if out[i] <= 0:
            out[i] = out[i - 1]
    if out.size and out[0] <= 0:
        nonzero = out[out > 0]
        out[out <= 0] = nonzero[0] if nonzero.size else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit-minutes", type=int, default=0, help="replay only the first N minutes")
    parser.add_argument(
        "--trace",
        action="append",
        default=[],
        help="replay only traces whose name contains this (repeatable)",
    )
    args = parser.parse_args()
    settings = DecisionSettings()
    sizing = replica_sizing(MODEL, default_config(INSTANCE_TYPE, 1), SLO_P95_MS, settings)
    print(
        f"{MODEL} on {INSTANCE_TYPE}: SLO p95 {SLO_P95_MS:.0f} ms, sized at {sizing.target_p95_ms:.0f} ms -> "
        f"{sizing.max_rps_per_replica:.2f} req/s per replica (capacity {sizing.capacity.max_requests_per_s:.2f}); "
        f"lead {settings.autoscaling_lead_time_s} s, cooldown {settings.autoscaling_cooldown_s} s, "
        f"hysteresis {settings.autoscaling_scale_down_hysteresis:.0%}, "
        f"reactive target {settings.autoscaling_target_utilization:.0%}"
    )
    totals = {p: [0, 0.0] for p in ("predictive", "reactive", "peak")}
    for path in sorted(args.data.glob("*_rpm.csv")):
        if args.trace and not any(part in path.stem for part in args.trace):
            continue
        trace = load_trace(path)
        if args.limit_minutes:
            trace.minute_ts = trace.minute_ts[: args.limit_minutes]
            trace.minute_rps = trace.minute_rps[: args.limit_minutes]
            trace.minute_missing = trace.minute_missing[: args.limit_minutes]
        for policy in totals:
            r = replay(trace, sizing, settings, policy)
            totals[policy][0] += r.violation_minutes
            totals[policy][1] += r.gpu_hours
            print(
                f"trace={trace.name} policy={policy} minutes={trace.minute_ts.size} "
                f"slo_violation_minutes={r.violation_minutes} gpu_hours={r.gpu_hours:.1f} "
                f"scalings={r.scalings} reactive_fallback_minutes={r.fallback_minutes}",
                flush=True,
            )
    print(
        f"slo_violation_minutes_predictive={totals['predictive'][0]} "
        f"slo_violation_minutes_reactive={totals['reactive'][0]} "
        f"gpu_hours_predictive={totals['predictive'][1]:.1f} gpu_hours_reactive={totals['reactive'][1]:.1f} "
        f"gpu_hours_peak={totals['peak'][1]:.1f}"
    )


if __name__ == "__main__":
    main()
