"""The performance agent's four capabilities: what they propose on the sandbox's situations, and how long
one analysis takes over a synthetic fleet of 1,000 instances.

Baselines are the serving model's own figures at each deployment's weekday peak (requests/s p95 at the
peak, KV-cache use there), so the run needs no store: it times the analysis itself, which is what grows
with the fleet (each capability forecasts a handful of candidate configs per deployment).

    .venv/bin/python bench/perf_capabilities.py [--instances 1000]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from optiinfra_assets import sandbox
from optiinfra_assets.agents.capability import Proposal
from optiinfra_assets.agents.performance import forecast_config
from optiinfra_assets.agents.performance.batch_tuning import BatchTuning
from optiinfra_assets.agents.performance.kv_cache_tuning import KvCacheTuning
from optiinfra_assets.agents.performance.parallelism import Parallelism
from optiinfra_assets.agents.performance.quantization import QuantizationCapability
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot

CAPABILITIES = (KvCacheTuning(), QuantizationCapability(), BatchTuning(), Parallelism())


def peak_snapshot(customers: list[Customer], deployments: list[Deployment]) -> FleetSnapshot:
    """The fleet with baselines at its weekday peak, as the serving model predicts them."""
    baselines = {}
    for dep in deployments:
        peak = dep.base_requests_per_s * (1.0 + sandbox.DIURNAL_AMPLITUDE)
        forecast = forecast_config(dep.model, dep.config, peak)
        per = peak / dep.replicas
        kv = forecast.kv_cache_usage if forecast.fits else 0.0
        baselines[dep.id] = {
            "requests_per_s": BaselineStat(0.7 * per, 0.1 * per, 0.3 * per, per, 10_080),
            "kv_cache_usage": BaselineStat(0.7 * kv, 0.05, 0.1 * kv, kv, 10_080),
        }
    return FleetSnapshot(customers=customers, deployments=deployments, instances=[], baselines=baselines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=1000)
    args = parser.parse_args()
    settings = DecisionSettings()
    now = datetime.now(UTC)

    customers, deployments, _ = sandbox.initial_fleet(42, now)
    snapshot = peak_snapshot(customers, deployments)
    print("sandbox situations (weekday peak):")
    for cap in CAPABILITIES:
        for item in cap.analyze(snapshot, settings):
            if isinstance(item, Proposal):
                print(f"  {cap.kind:16} {item.deployment_id:24} {item.summary}")

    customers, deployments, _ = sandbox.synthetic_fleet(args.instances, 42, now)
    snapshot = peak_snapshot(customers, deployments)
    print(f"synthetic fleet: {len(deployments)} deployments on {args.instances} instances")
    for cap in CAPABILITIES:
        start = time.perf_counter()
        items = list(cap.analyze(snapshot, settings))
        seconds = time.perf_counter() - start
        proposals = sum(isinstance(i, Proposal) for i in items)
        print(f"  {cap.kind:16} {seconds:6.2f} s  proposals={proposals}")


if __name__ == "__main__":
    main()
