"""Consolidation at scale: generated fleets of 10, 100 and 1,000 replicas packed by the MILP (HiGHS) and by
greedy first-fit; prints each one's saving against today's fleet and the solve time.

Fleets are generated from a seed: deployments of catalog models (mostly 7-8B, some 70B) with 1-8 replicas,
each on an instance type drawn from those that hold it (so some run on more GPUs, or dearer GPUs, than they
need: the waste consolidation removes), a peak load per replica drawn so that the current placement holds
the SLO, a 30% share of spot replicas where the customer allows spot, 10% of customers dedicated-hardware
and 10% no-spot. The MILP runs under DecisionSettings.consolidation_time_limit_s (20 s) in all, and the
plan is never worse than greedy (it takes greedy's where greedy is cheaper; the status says so).

Last line: ``replicas=1000 milp_saving_usd_hour=... greedy_saving_usd_hour=... solve_s=... status=...``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optiinfra_assets.agents.resource.autoscaling import replica_rate_limit
from optiinfra_assets.agents.resource.consolidation import (
    ReplicaGroup,
    consolidate,
    replica_fit,
)
from optiinfra_assets.catalog import INSTANCE_TYPES, default_engine, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Lifecycle
from optiinfra_assets.serving import serving_capacity

MODELS = ("Llama-3.1-8B", "Mistral-7B-Instruct-v0.2", "Qwen2.5-7B", "Llama-3.1-70B")
MODEL_WEIGHTS = (0.35, 0.25, 0.25, 0.15)
GPU_KINDS = ("L4", "A10G", "L40S", "A100 80GB", "H100 SXM")
SLOS_MS = (30_000.0, 45_000.0)
REPLICA_WEIGHTS = (0.3, 0.25, 0.15, 0.1, 0.08, 0.05, 0.04, 0.03)  # P(1..8)


def generate(n_replicas: int, seed: int) -> list[ReplicaGroup]:
    rng = np.random.default_rng(seed)
    kinds = [k for k in GPU_KINDS if any(t.gpu.name == k for t in INSTANCE_TYPES.values())]
    groups: list[ReplicaGroup] = []
    total, d = 0, 0
    n_customers = max(1, n_replicas // 25)
    dedicated = set(rng.choice(n_customers, size=max(0, n_customers // 10), replace=False).tolist())
    no_spot = set(rng.choice(n_customers, size=max(0, n_customers // 10), replace=False).tolist())
    while total < n_replicas:
        name = str(rng.choice(MODELS, p=MODEL_WEIGHTS))
        replicas = min(int(rng.choice(np.arange(1, 9), p=REPLICA_WEIGHTS)), n_replicas - total)
        customer = int(rng.integers(n_customers))
        slo = float(rng.choice(SLOS_MS))
        # the instance types that hold the model at light load; today's type is any of them
        holding = []
        for itype in INSTANCE_TYPES.values():
            if itype.gpu.name not in kinds:
                continue
            fit = replica_fit(name, itype.gpu.name, 0.05, slo)
            bigger = fit.gpus and itype.gpu_count > fit.gpus and rng.random() < 0.3
            if not ((fit.gpus and itype.gpu_count == fit.gpus) or bigger):
                continue
            cap = serving_capacity(model(name), itype, default_engine(itype.gpu, itype.gpu_count))
            if cap.fits:
                holding.append((itype, cap))
        if not holding:
            continue
        current, cap = holding[int(rng.integers(len(holding)))]
        # a peak per replica the current placement holds: a share of what it takes within the SLO
        peak = round(float(rng.uniform(0.3, 0.8)) * replica_rate_limit(cap, current, slo), 3)
        allow_spot = customer not in no_spot
        spot = round(replicas * 0.3) if allow_spot and current.spot_usd_hour is not None else 0
        for lifecycle, count in ((Lifecycle.ON_DEMAND, replicas - spot), (Lifecycle.SPOT, spot)):
            if count:
                groups.append(
                    ReplicaGroup(
                        deployment_id=f"dep-{d:04d}",
                        customer_id=f"cust-{customer:03d}",
                        model=name,
                        lifecycle=lifecycle,
                        replicas=count,
                        spread_over=replicas,
                        peak_rps_per_replica=peak,
                        slo_p95_ms=slo,
                        allow_spot=allow_spot,
                        dedicated=customer in dedicated,
                        current_instance_type=current.name,
                    )
                )
        total += replicas
        d += 1
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    limit = DecisionSettings().consolidation_time_limit_s
    line = ""
    for size in args.sizes:
        groups = generate(size, args.seed)
        started = time.perf_counter()
        result = consolidate(groups, GPU_KINDS, limit)
        wall = time.perf_counter() - started
        assert result.optimum is not None and result.greedy is not None, result.infeasible
        assert result.optimum.cost_usd_hour <= result.greedy.cost_usd_hour + 1e-6
        line = (
            f"replicas={size} deployments={len({g.deployment_id for g in groups})} "
            f"current_usd_hour={result.current_cost_usd_hour:.2f} "
            f"milp_saving_usd_hour={result.saving_usd_hour:.2f} "
            f"greedy_saving_usd_hour={result.greedy_saving_usd_hour:.2f} "
            f"milp_instances={result.optimum.instances} greedy_instances={result.greedy.instances} "
            f"solve_s={wall:.2f} status={result.optimum.status.replace(' ', '_')}"
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
