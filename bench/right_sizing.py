"""Right-sizing against an exhaustive search over the catalog, on generated fleets.

For each deployment of ``sandbox.synthetic_fleet`` a week of its metrics is generated (1-minute steps) and
reduced to what the capability reads: the p95 of requests/s and of KV-cache use per instance. Then:

* chosen: ``right_sizing.search`` (the capability's pruned search) on those figures;
* exhaustive: every (instance type, TP x PP split, replica count up to the GPU quota) of the catalog evaluated with the
  serving model under the same constraints (SLO at the planned peak, utilization cap, KV tokens), the
  cheapest kept: the oracle the search must match;
* clairvoyant: the same exhaustive search, but knowing the week's true peak load (the largest 1-minute sum
  over the deployment's instances) with no growth margin and no utilization cap: the most any config could
  save without breaking the SLO that week.

It prints the share of the oracles' savings the chosen configs keep (savings = current $/month - config
$/month, summed over the fleet) and SLO breaches: chosen configs whose predicted p95 at the true peak is over
the deployment's SLO.

    .venv/bin/python bench/right_sizing.py --instances 300 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from optiinfra_assets import sandbox
from optiinfra_assets.agents.cost.right_sizing import (
    Demand,
    _capacity,
    candidate_engine,
    parallel_splits,
    search,
    sized_config,
)
from optiinfra_assets.catalog import INSTANCE_TYPES, config_usd_hour, instance_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.serving import load_points


def exhaustive(model_name, current, demand: Demand, settings: DecisionSettings) -> float:
    """The cheapest $/hour over every type, split and replica count, no pruning."""
    best = math.inf
    counts = np.arange(1, settings.gpu_quota_per_family + 1, dtype=np.float64)  # 1-GPU types' most
    for itype in INSTANCE_TYPES.values():
        for tp, pp in parallel_splits(itype.gpu_count):
            engine = candidate_engine(current, itype, tp, pp)
            if isinstance(engine, str):
                continue
            cap = _capacity(model_name, itype.name, engine)
            if not cap.fits:
                continue
            points = load_points(cap, itype, demand.peak_requests_per_s / counts)
            ok = (
                (points["latency_p95_ms"] <= demand.slo_p95_ms)
                & (points["utilization"] <= demand.max_utilization)
                & (counts * cap.kv_cache_tokens >= demand.kv_tokens)
                & (counts * itype.gpu_count <= settings.gpu_quota_per_family)
                & (counts >= current.min_replicas)
            )
            if ok.any():
                n = int(counts[np.argmax(ok)])
                best = min(best, config_usd_hour(sized_config(current, itype, engine, n)))
    return best


def p95_at(model_name: str, config, peak: float) -> float:
    cap = _capacity(model_name, config.instance_type, config.engine)
    points = load_points(cap, instance_type(config.instance_type), np.array([peak / config.replicas]))
    return float(points["latency_p95_ms"][0])


def run(n_instances: int, seed: int, settings: DecisionSettings) -> dict[str, float]:
    now = datetime(2026, 6, 1, tzinfo=UTC)
    customers, deployments, instances = sandbox.synthetic_fleet(n_instances, seed, now)
    frames = sandbox.generate(
        customers,
        deployments,
        instances,
        [],
        now - timedelta(days=7),
        now,
        seed=seed,
        step_s=60,
        quality_sample_s=3600,
    )
    perf = frames[Domain.PERFORMANCE]
    per_instance = perf.group_by("deployment_id").agg(
        pl.col("requests_per_s").quantile(0.95, "linear").alias("load_p95"),
        pl.col("kv_cache_usage").quantile(0.95, "linear").alias("kv_p95"),
    )
    peaks = (
        perf.group_by("deployment_id", "ts")
        .agg(pl.col("requests_per_s").sum())
        .group_by("deployment_id")
        .agg(pl.col("requests_per_s").max().alias("true_peak"))
    )
    figures = {
        row["deployment_id"]: row
        for row in per_instance.join(peaks, on="deployment_id").iter_rows(named=True)
    }
    customer = {c.id: c for c in customers}
    margin, cap_util = settings.right_sizing_growth_margin, settings.right_sizing_max_utilization
    kept = exhaustive_savings = clairvoyant_savings = 0.0
    breaches = mismatches = 0
    search_s = 0.0
    for dep in deployments:
        row = figures[dep.id]
        current = dep.config
        slo = customer[dep.customer_id].slo_p95_latency_ms
        cap = _capacity(dep.model, current.instance_type, current.engine)
        demand = Demand(
            peak_requests_per_s=row["load_p95"] * current.replicas * (1 + margin),
            kv_tokens=row["kv_p95"] * cap.kv_cache_tokens * current.replicas * (1 + margin),
            slo_p95_ms=slo,
            max_utilization=cap_util,
        )
        t0 = time.perf_counter()
        chosen, _ = search(dep.model, current, demand, settings)
        search_s += time.perf_counter() - t0
        now_usd = config_usd_hour(current)
        chosen_usd = config_usd_hour(chosen) if chosen is not None else now_usd
        chosen_usd = min(chosen_usd, now_usd)  # nothing cheaper: the deployment stays as it is
        oracle_usd = min(exhaustive(dep.model, current, demand, settings), now_usd)
        clairvoyant = Demand(row["true_peak"], 0.0, slo, 1.0)
        clair_usd = min(exhaustive(dep.model, current, clairvoyant, settings), now_usd)
        if not math.isclose(chosen_usd, oracle_usd, rel_tol=1e-9):
            mismatches += 1
            print(f"  {dep.id}: chosen ${chosen_usd:.3f}/h, exhaustive ${oracle_usd:.3f}/h")
        hours = settings.hours_per_month
        kept += (now_usd - chosen_usd) * hours
        exhaustive_savings += (now_usd - oracle_usd) * hours
        clairvoyant_savings += (now_usd - clair_usd) * hours
        if chosen is not None and chosen_usd < now_usd and p95_at(dep.model, chosen, row["true_peak"]) > slo:
            breaches += 1
    return {
        "deployments": len(deployments),
        "savings_usd_month": kept,
        "exhaustive_usd_month": exhaustive_savings,
        "clairvoyant_usd_month": clairvoyant_savings,
        "kept_vs_exhaustive": kept / exhaustive_savings if exhaustive_savings else 1.0,
        "kept_vs_clairvoyant": kept / clairvoyant_savings if clairvoyant_savings else 1.0,
        "configs_differing_from_exhaustive": mismatches,
        "slo_breaches": breaches,
        "search_ms_per_deployment": 1000 * search_s / len(deployments),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    settings = DecisionSettings()
    totals: dict[str, float] = {}
    for seed in args.seeds:
        result = run(args.instances, seed, settings)
        print(f"seed={seed} " + " ".join(f"{k}={v:.4g}" for k, v in result.items()))
        for k, v in result.items():
            totals[k] = totals.get(k, 0.0) + v
    kept = totals["savings_usd_month"]
    print(
        f"all: deployments={totals['deployments']:.0f} "
        f"kept_vs_exhaustive={kept / totals['exhaustive_usd_month']:.4f} "
        f"kept_vs_clairvoyant={kept / totals['clairvoyant_usd_month']:.4f} "
        f"configs_differing_from_exhaustive={totals['configs_differing_from_exhaustive']:.0f} "
        f"slo_breaches={totals['slo_breaches']:.0f} "
        f"search_ms_per_deployment={totals['search_ms_per_deployment'] / len(args.seeds):.2f}"
    )


if __name__ == "__main__":
    main()
