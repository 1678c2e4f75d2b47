"""GPU-aware consolidation: pack deployments' replicas onto fewer or cheaper instances, as a mixed-integer
program (scipy.optimize.milp / HiGHS), with a greedy first-fit beside it for comparison.

**The model of several replicas per instance** (the smallest honest one): a replica occupies whole GPUs of
one instance - ``tensor_parallel_size`` of them, never a fraction of a GPU (no MIG, no time-slicing) - and
runs the same vLLM engine it would alone, so its memory and latency are the serving model's for that many
GPUs of that kind. An instance is either

* **solo**: one replica on an instance type whose GPU count is the replica's (how the fleet runs today), or
* **shared**: a multi-GPU instance hosting replicas of one or several deployments whose GPUs add up to at
  most the instance's (e.g. two TP-2 replicas on a 4-GPU g6e.12xlarge).

For each deployment and candidate GPU kind the serving model decides the GPUs a replica needs (the smallest
power-of-two TP that holds the weights and the KV cache for the replica's peak concurrency) and whether p95
at the replica's peak load holds the customer's SLO. The MILP then minimises $/hour subject to: every replica
placed; GPUs per instance; replicas of a deployment with two or more on at least two instances; a
dedicated-hardware customer's replicas share an instance with no other customer (its own pool of instances);
a no-spot customer only on on-demand capacity (lifecycles are kept: spot replicas are placed on spot,
on-demand on on-demand; moving to spot is spot migration's job).

A replica is offered a shared instance type only where its GPUs there cost less than its cheapest solo
placement (AWS prices multi-GPU types higher per GPU, so this keeps the program small); the optimum is
optimal within that offer. HiGHS runs under a time limit; on hitting it the best solution found so far is
reported as such, and the greedy plan is taken whenever it is cheaper (the solver is never worse than greedy).

**Applied**: a deployment the optimum puts alone on one type is proposed as a move to that type; one it puts on
shared instances of one type as slices (``DeploymentConfig.gpus_per_replica``: the replica's GPUs, an engine
of that TP), whose evidence names the deployments planned on the same instances and the saving that needs all
of them to move. The sandbox target packs slices onto hosts (fullest first, a dedicated customer on its own,
spread over two or more hosts: resources/targets.py) and bills a host's price to its slices by GPUs.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from optiinfra_assets.agents import performance
from optiinfra_assets.agents.capability import Capability, Estimate, Evidence, Objective, Proposal, Skip
from optiinfra_assets.agents.resource import AGENT
from optiinfra_assets.catalog import (
    INSTANCE_TYPES,
    InstanceType,
    config_usd_hour,
    default_engine,
    model,
    slice_type,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment, DeploymentConfig, Lifecycle
from optiinfra_assets.serving import load_point, serving_capacity
from optiinfra_assets.snapshot import FleetSnapshot

KIND = "consolidation"
TP_SIZES = (1, 2, 4, 8)


# ---- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaGroup:
    """The replicas of one deployment on one lifecycle: what is placed."""

    deployment_id: str
    customer_id: str
    model: str
    lifecycle: Lifecycle
    replicas: int  # of this lifecycle
    spread_over: int  # replicas of the whole deployment: two or more must sit on two or more instances
    peak_rps_per_replica: float
    slo_p95_ms: float
    allow_spot: bool
    dedicated: bool
    current_instance_type: str
    current_gpus_per_replica: int | None = None  # a slice of a shared host today (None: a whole instance)

    @property
    def current_usd_hour(self) -> float:
        """What its replicas cost today: whole instances, or their slices' share of their hosts."""
        itype = slice_type(INSTANCE_TYPES[self.current_instance_type], self.current_gpus_per_replica)
        return self.replicas * itype.price_usd_hour(self.lifecycle)


@dataclass(frozen=True)
class Fit:
    """How a replica of a group runs on one GPU kind: GPUs needed, and why it does or does not fit."""

    gpus: int  # 0: does not fit
    p95_ms: float
    weights_gib: float
    kv_gib_needed: float  # KV for the peak concurrency, per GPU
    reason: str


@cache
def _types_by_gpu() -> dict[str, dict[int, InstanceType]]:
    """GPU kind -> GPU count -> the cheapest instance type with exactly that many of them."""
    out: dict[str, dict[int, InstanceType]] = defaultdict(dict)
    for itype in INSTANCE_TYPES.values():
        known = out[itype.gpu.name].get(itype.gpu_count)
        if known is None or itype.ondemand_usd_hour < known.ondemand_usd_hour:
            out[itype.gpu.name][itype.gpu_count] = itype
    return dict(out)


@cache
def replica_fit(model_name: str, gpu_name: str, peak_rps: float, slo_p95_ms: float) -> Fit:
    """The fewest GPUs of a kind one replica needs: weights and the KV cache of its peak concurrency in
    memory, and p95 at its peak load within the SLO (the serving model's, on that many GPUs)."""
    spec = model(model_name)
    sizes = _types_by_gpu().get(gpu_name, {})
    why = f"no instance type has {gpu_name} GPUs"
    for tp in TP_SIZES:
        larger = [t for count, t in sorted(sizes.items()) if count >= tp]
        if not larger:
            continue
        # A replica on tp GPUs of a larger instance serves as on an instance of exactly tp of them (its own
        # GPUs, its own engine): model it as that instance.
        itype = larger[0] if larger[0].gpu_count == tp else replace(larger[0], gpu_count=tp)
        engine = default_engine(itype.gpu, tp)
        cap = serving_capacity(spec, itype, engine)
        if not cap.fits:
            why = f"memory: {cap.reason}"
            continue
        point = load_point(cap, itype, peak_rps)
        plan = cap.memory
        assert plan is not None
        kv_needed = point.kv_cache_usage * plan.kv_gib
        if point.latency_p95_ms > slo_p95_ms:
            why = f"SLO: p95 {point.latency_p95_ms:.0f} ms at {peak_rps:.2f} req/s > {slo_p95_ms:.0f} ms on {tp} x {gpu_name}"
            continue
        return Fit(
            tp,
            point.latency_p95_ms,
            plan.weights_gib,
            kv_needed,
            f"{tp} x {gpu_name}: {plan.weights_gib:.1f} GiB weights + {kv_needed:.1f} GiB KV at peak per GPU, "
            f"p95 {point.latency_p95_ms:.0f} ms",
        )
    return Fit(0, math.inf, 0.0, 0.0, why)


@dataclass(frozen=True)
class Option:
    """One way to host a group's replicas: solo on ``itype`` or on a shared instance of ``itype``."""

    itype: InstanceType
    lifecycle: Lifecycle
    gpus: int  # per replica
    shared: bool

    @property
    def price(self) -> float:
        return self.itype.price_usd_hour(self.lifecycle)

    @property
    def key(self) -> tuple[str, str]:
        return self.itype.name, self.lifecycle.value


def options(group: ReplicaGroup, gpu_kinds: Sequence[str]) -> tuple[list[Option], list[str]]:
    """The placements offered to a group, and why every other one is not (constraint named)."""
    solo: list[Option] = []
    shared: list[Option] = []
    rejected: list[str] = []
    if group.lifecycle is Lifecycle.SPOT and not group.allow_spot:
        return [], [f"no spot: customer {group.customer_id} does not allow spot capacity"]
    for gpu_name in gpu_kinds:
        fit = replica_fit(group.model, gpu_name, group.peak_rps_per_replica, group.slo_p95_ms)
        if fit.gpus == 0:
            rejected.append(f"{gpu_name}: {fit.reason}")
            continue
        for count, itype in _types_by_gpu()[gpu_name].items():
            if count < fit.gpus or (group.lifecycle is Lifecycle.SPOT and itype.spot_usd_hour is None):
                continue
            (solo if count == fit.gpus else shared).append(
                Option(itype, group.lifecycle, fit.gpus, count != fit.gpus)
            )
    if not solo and not shared:
        return [], rejected
    cheapest_solo = min((o.price for o in solo), default=math.inf)
    # A shared instance is offered only where the replica's GPUs there cost less than running it alone.
    shared = [o for o in shared if o.price * o.gpus / o.itype.gpu_count < cheapest_solo]
    return solo + shared, rejected


# ---- the plan ------------------------------------------------------------------------------------


class SharedInstance(BaseModel):
    instance_type: str
    lifecycle: str
    price_usd_hour: float
    replicas: dict[str, int]  # deployment_id -> replicas on this instance
    gpus_per_replica: dict[str, int] = Field(default_factory=dict)  # deployment_id -> GPUs one replica holds


class Placement(BaseModel):
    """Where one group's replicas go: solo instances by type, and its share of shared instances."""

    deployment_id: str
    lifecycle: str
    solo: dict[str, int] = Field(default_factory=dict)  # instance type -> replicas alone on one each
    shared: dict[int, int] = Field(default_factory=dict)  # shared instance index -> replicas on it


class PackingPlan(BaseModel):
    method: str  # "milp" | "greedy first-fit"
    status: str  # "optimal", "time limit: best found so far", "greedy (better than the MILP's best)", ...
    cost_usd_hour: float
    placements: list[Placement]
    shared_instances: list[SharedInstance]
    solve_s: float = 0.0
    instances: int = 0


class ConsolidationResult(BaseModel):
    current_cost_usd_hour: float
    optimum: PackingPlan | None
    greedy: PackingPlan | None
    infeasible: list[str] = Field(default_factory=list)  # the constraint each unplaceable group breaks

    @property
    def saving_usd_hour(self) -> float:
        return 0.0 if self.optimum is None else self.current_cost_usd_hour - self.optimum.cost_usd_hour

    @property
    def greedy_saving_usd_hour(self) -> float:
        return 0.0 if self.greedy is None else self.current_cost_usd_hour - self.greedy.cost_usd_hour


@dataclass
class _Pool:
    """Groups packed together: all shared customers, or one dedicated customer's."""

    name: str
    groups: list[ReplicaGroup]
    offered: list[list[Option]] = field(default_factory=list)


def current_cost(groups: Sequence[ReplicaGroup]) -> float:
    return sum(g.current_usd_hour for g in groups)


def _shared_gpus(offered: Sequence[Option], key: tuple[str, str]) -> int:
    """GPUs one replica takes on a shared instance type it is offered."""
    return next(o.gpus for o in offered if o.shared and o.key == key)


def greedy_pack(pool: _Pool) -> PackingPlan:
    """First-fit decreasing: the largest replicas first; each goes into the first open shared instance it is
    offered and fits (never its whole deployment into one), else onto its cheapest option per GPU."""
    placements = {
        i: Placement(deployment_id=g.deployment_id, lifecycle=g.lifecycle.value)
        for i, g in enumerate(pool.groups)
    }
    shared: list[tuple[Option, dict[int, int], int]] = []  # (option, group index -> replicas, free GPUs)
    order = sorted(range(len(pool.groups)), key=lambda i: -min(o.gpus for o in pool.offered[i]))
    cost = 0.0
    for i in order:
        group, offered = pool.groups[i], pool.offered[i]
        cap_per_instance = (
            group.replicas - 1
            if group.spread_over >= 2 and group.replicas == group.spread_over
            else group.replicas
        )
        gpus_on = {o.key: o.gpus for o in offered if o.shared}
        for _ in range(group.replicas):
            placed = False
            for k, (opt, members, free) in enumerate(shared):
                need = gpus_on.get(opt.key)
                if need is not None and need <= free and members.get(i, 0) < max(cap_per_instance, 1):
                    members[i] = members.get(i, 0) + 1
                    shared[k] = (opt, members, free - need)
                    placed = True
                    break
            if placed:
                continue
            best = min(offered, key=lambda o: (o.price * o.gpus / o.itype.gpu_count, o.price))
            if best.shared:
                shared.append((best, {i: 1}, best.itype.gpu_count - best.gpus))
                cost += best.price
            else:
                placements[i].solo[best.itype.name] = placements[i].solo.get(best.itype.name, 0) + 1
                cost += best.price
    instances = []
    for k, (opt, members, _) in enumerate(shared):
        for i, n in members.items():
            placements[i].shared[k] = n
        instances.append(
            _shared_instance(
                opt,
                {pool.groups[i].deployment_id: n for i, n in members.items()},
                {pool.groups[i].deployment_id: _shared_gpus(pool.offered[i], opt.key) for i in members},
            )
        )
    solo = sum(sum(p.solo.values()) for p in placements.values())
    return PackingPlan(
        method="greedy first-fit",
        status="heuristic",
        cost_usd_hour=round(cost, 4),
        placements=list(placements.values()),
        shared_instances=instances,
        instances=solo + len(instances),
    )


def _shared_instance(opt: Option, replicas: dict[str, int], gpus: dict[str, int]) -> SharedInstance:
    return SharedInstance(
        instance_type=opt.itype.name,
        lifecycle=opt.lifecycle.value,
        price_usd_hour=opt.price,
        replicas=replicas,
        gpus_per_replica=gpus,
    )


def milp_pack(pool: _Pool, time_limit_s: float) -> PackingPlan | None:
    """The MILP (module doc): integer solo counts per (group, type), and per shared instance slot a binary
    'open' and integer replicas per group. None when HiGHS found no solution within the limit."""
    started = time.perf_counter()
    groups, offered = pool.groups, pool.offered
    cols_cost: list[float] = []
    cols_int: list[int] = []
    lo: list[float] = []
    hi: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    row_lo: list[float] = []
    row_hi: list[float] = []

    def var(cost: float, upper: float) -> int:
        cols_cost.append(cost)
        cols_int.append(1)
        lo.append(0.0)
        hi.append(upper)
        return len(cols_cost) - 1

    def row(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(row_lo)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        row_lo.append(low)
        row_hi.append(high)

    placed: list[list[tuple[int, float]]] = [[] for _ in groups]
    solo_vars: list[tuple[int, int, Option]] = []
    # Shared instance slots per offered type: enough to hold every replica offered it.
    demand: dict[tuple[str, str], float] = defaultdict(float)
    shared_opt: dict[tuple[str, str], Option] = {}
    for i, group in enumerate(groups):
        for opt in offered[i]:
            if opt.shared:
                demand[opt.key] += group.replicas * opt.gpus
                shared_opt[opt.key] = opt
            else:
                v = var(opt.price, group.replicas)
                solo_vars.append((v, i, opt))
                placed[i].append((v, 1.0))
    slots: list[tuple[int, Option, list[tuple[int, int]]]] = []  # (open var, option, [(x var, group)])
    for key, gpus in demand.items():
        opt = shared_opt[key]
        n_slots = math.ceil(gpus / opt.itype.gpu_count)
        previous = None
        for _ in range(n_slots):
            y = var(opt.price, 1)
            members: list[tuple[int, int]] = []
            capacity: list[tuple[int, float]] = [(y, -float(opt.itype.gpu_count))]
            for i, group in enumerate(groups):
                mine = next((o for o in offered[i] if o.shared and o.key == key), None)
                if mine is None:
                    continue
                spread_cap = (
                    group.replicas - 1
                    if group.spread_over >= 2 and group.replicas == group.spread_over
                    else group.replicas
                )
                x = var(0.0, max(spread_cap, 0))
                members.append((x, i))
                placed[i].append((x, 1.0))
                capacity.append((x, float(mine.gpus)))
            row(capacity, -np.inf, 0.0)
            if previous is not None:  # symmetry: slots of a type open in order
                row([(previous, 1.0), (y, -1.0)], 0.0, np.inf)
            previous = y
            slots.append((y, opt, members))
    for i, group in enumerate(groups):
        row(placed[i], group.replicas, group.replicas)
    n = len(cols_cost)
    if n == 0:
        return None
    matrix = coo_array((vals, (rows, cols)), shape=(len(row_lo), n)).tocsr()
    result = milp(
        c=np.array(cols_cost),
        integrality=np.array(cols_int),
        bounds=Bounds(np.array(lo), np.array(hi)),
        constraints=LinearConstraint(matrix, np.array(row_lo), np.array(row_hi)),
        options={"time_limit": time_limit_s, "disp": False},
    )
    elapsed = time.perf_counter() - started
    if result.x is None:
        return None
    x = np.round(result.x).astype(int)
    placements = {
        i: Placement(deployment_id=g.deployment_id, lifecycle=g.lifecycle.value) for i, g in enumerate(groups)
    }
    for v, i, opt in solo_vars:
        if x[v]:
            placements[i].solo[opt.itype.name] = placements[i].solo.get(opt.itype.name, 0) + int(x[v])
    instances: list[SharedInstance] = []
    for y, opt, members in slots:
        if not x[y]:
            continue
        used = {i: int(x[v]) for v, i in members if x[v]}
        if not used:
            continue
        for i, count in used.items():
            placements[i].shared[len(instances)] = count
        instances.append(
            _shared_instance(
                opt,
                {groups[i].deployment_id: c for i, c in used.items()},
                {groups[i].deployment_id: _shared_gpus(offered[i], opt.key) for i in used},
            )
        )
    cost = sum(opt.price * int(x[v]) for v, _, opt in solo_vars) + sum(s.price_usd_hour for s in instances)
    status = "optimal" if result.status == 0 else "time limit: best found so far"
    return PackingPlan(
        method="milp",
        status=status,
        cost_usd_hour=round(cost, 4),
        placements=list(placements.values()),
        shared_instances=instances,
        solve_s=round(elapsed, 3),
        instances=sum(sum(p.solo.values()) for p in placements.values()) + len(instances),
    )


def _merge(plans: list[PackingPlan], method: str) -> PackingPlan:
    placements: list[Placement] = []
    instances: list[SharedInstance] = []
    for plan in plans:
        offset = len(instances)
        for p in plan.placements:
            placements.append(p.model_copy(update={"shared": {k + offset: v for k, v in p.shared.items()}}))
        instances += plan.shared_instances
    statuses = sorted({p.status for p in plans})
    return PackingPlan(
        method=method,
        status=", ".join(statuses),
        cost_usd_hour=round(sum(p.cost_usd_hour for p in plans), 4),
        placements=placements,
        shared_instances=instances,
        solve_s=round(sum(p.solve_s for p in plans), 3),
        instances=sum(p.instances for p in plans),
    )


def consolidate(
    groups: Sequence[ReplicaGroup], gpu_kinds: Sequence[str], time_limit_s: float
) -> ConsolidationResult:
    """The optimum (MILP, never worse than greedy) and the greedy plan for ``groups`` on ``gpu_kinds``.

    A group no offered placement can hold makes the whole consolidation infeasible: the result names the
    constraint each such group breaks and proposes nothing."""
    now_cost = round(current_cost(groups), 4)
    infeasible: list[str] = []
    pools: dict[str, _Pool] = {}
    for group in groups:
        offered, rejected = options(group, gpu_kinds)
        if not offered:
            infeasible.append(f"{group.deployment_id} ({group.lifecycle.value}): " + "; ".join(rejected))
            continue
        name = f"dedicated:{group.customer_id}" if group.dedicated else "shared"
        pool = pools.setdefault(name, _Pool(name, []))
        pool.groups.append(group)
        pool.offered.append(offered)
    if infeasible:
        return ConsolidationResult(
            current_cost_usd_hour=now_cost, optimum=None, greedy=None, infeasible=infeasible
        )
    deadline = time.perf_counter() + time_limit_s
    greedy_plans, best_plans = [], []
    for pool in pools.values():
        greedy = greedy_pack(pool)
        greedy_plans.append(greedy)
        remaining = max(0.5, deadline - time.perf_counter())
        solved = milp_pack(pool, remaining)
        if solved is None:
            best_plans.append(
                greedy.model_copy(update={"status": "greedy (the MILP found no solution in time)"})
            )
        elif solved.cost_usd_hour > greedy.cost_usd_hour + 1e-9:
            best_plans.append(
                greedy.model_copy(
                    update={
                        "status": f"greedy (better than the MILP's {solved.status})",
                        "solve_s": solved.solve_s,
                    }
                )
            )
        else:
            best_plans.append(solved)
    return ConsolidationResult(
        current_cost_usd_hour=now_cost,
        optimum=_merge(best_plans, "milp"),
        greedy=_merge(greedy_plans, "greedy first-fit"),
    )


# ---- the capability ------------------------------------------------------------------------------


class ConsolidationEvidence(Evidence):
    kind: Literal["consolidation"] = KIND
    deployment_id: str
    from_instance_type: str
    to_instance_type: str
    replicas: int
    fleet_cost_usd_hour: float
    optimum_cost_usd_hour: float
    greedy_cost_usd_hour: float
    fleet_saving_usd_hour: float
    greedy_saving_usd_hour: float
    solver_status: str
    solve_s: float
    deployment_saving_usd_hour: float
    fit: str
    rollout: str = "make-before-break: new instances serve before the old ones are released"
    # A shared placement: the GPUs one replica takes of each shared instance, the other deployments the
    # optimum puts on the same instances, and the saving of all of them together, which needs every one to
    # move (alone, its slices leave GPUs of a host idle that it pays for).
    gpus_per_replica: int | None = None
    shared_with: list[str] = Field(default_factory=list)
    shared_instances: int = 0
    shared_saving_usd_hour: float = 0.0


def fleet_groups(snapshot: FleetSnapshot, settings: DecisionSettings) -> list[ReplicaGroup]:
    """The fleet's replicas as groups per deployment and lifecycle, with their peak load per replica."""
    groups: list[ReplicaGroup] = []
    for deployment in snapshot.deployments:
        customer = snapshot.customer_by_id.get(deployment.customer_id)
        if customer is None:
            continue
        stat = snapshot.baseline(deployment.id, "requests_per_s")
        # peak per replica: the baseline's p95 per instance (the load is split evenly over replicas)
        peak = stat.p95 * (1.0 + settings.peak_growth_margin) if stat else deployment.base_requests_per_s
        config = deployment.config
        for lifecycle in Lifecycle:
            count = config.replicas_on(lifecycle)
            if count:
                groups.append(_group(deployment, customer, lifecycle, count, peak))
    return groups


def _group(
    deployment: Deployment, customer: Customer, lifecycle: Lifecycle, count: int, peak: float
) -> ReplicaGroup:
    return ReplicaGroup(
        deployment_id=deployment.id,
        customer_id=customer.id,
        model=deployment.model,
        lifecycle=lifecycle,
        replicas=count,
        spread_over=deployment.replicas,
        peak_rps_per_replica=peak,
        slo_p95_ms=customer.slo_p95_latency_ms,
        allow_spot=customer.allow_spot,
        dedicated=customer.dedicated_hardware,
        current_instance_type=deployment.instance_type,
        current_gpus_per_replica=deployment.config.gpus_per_replica,
    )


class Consolidation(Capability):
    kind: ClassVar[str] = KIND
    agent: ClassVar[str] = AGENT
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = (
        "Pack replicas onto fewer or cheaper instances (MILP with HiGHS, greedy first-fit for comparison) "
        "within GPU memory, the SLO, spread and customer preferences; rolled out make-before-break."
    )
    evidence_model = ConsolidationEvidence
    # New instances serve before old ones go (the target's pools move make-before-break). Packing spends
    # latency headroom on purpose (fewer or slower GPUs per replica, the MILP's p95 at peak within the SLO), so
    # the stage check is the SLO itself: a canary slower than its control is the plan, not a regression.
    stage_checks = (performance.latency_within_slo,)

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterator[Proposal | Skip]:
        groups = fleet_groups(snapshot, settings)
        gpu_kinds = sorted({INSTANCE_TYPES[g.current_instance_type].gpu.name for g in groups})
        result = consolidate(groups, gpu_kinds, settings.consolidation_time_limit_s)
        if result.optimum is None or result.greedy is None:
            why = "consolidation infeasible, nothing proposed: " + " | ".join(result.infeasible)
            for deployment in snapshot.deployments:
                yield Skip(deployment_id=deployment.id, reason=why)
            return
        by_deployment: dict[str, list[Placement]] = defaultdict(list)
        for p in result.optimum.placements:
            by_deployment[p.deployment_id].append(p)
        for deployment in snapshot.deployments:
            yield self._deployment(
                snapshot, deployment, by_deployment.get(deployment.id, []), result, settings
            )

    def _deployment(
        self,
        snapshot: FleetSnapshot,
        deployment: Deployment,
        placements: list[Placement],
        result: ConsolidationResult,
        settings: DecisionSettings,
    ) -> Proposal | Skip:
        if not placements:
            return Skip(deployment_id=deployment.id, reason="not placed (unknown customer)")
        if any(p.shared for p in placements):
            return self._shared(snapshot, deployment, placements, result, settings)
        types = {t for p in placements for t in p.solo}
        if len(types) != 1:
            return Skip(
                deployment_id=deployment.id, reason=f"the optimum splits it over {sorted(types)}: not applied"
            )
        (target,) = types
        if target == deployment.instance_type and deployment.config.gpus_per_replica is None:
            return Skip(deployment_id=deployment.id, reason=f"already on its optimal type {target}")
        config = deployment.config
        new_type = INSTANCE_TYPES[target]
        engine = default_engine(new_type.gpu, new_type.gpu_count)
        desired = config.model_copy(
            update={"instance_type": target, "engine": engine, "gpus_per_replica": None}
        )
        return self._propose(
            snapshot,
            deployment,
            desired,
            result,
            settings,
            move=f"{config.replicas} x {deployment.instance_type} -> {target}",
            to=target,
        )

    def _shared(
        self,
        snapshot: FleetSnapshot,
        deployment: Deployment,
        placements: list[Placement],
        result: ConsolidationResult,
        settings: DecisionSettings,
    ) -> Proposal | Skip:
        """A shared placement as a change: every replica a slice of ``gpus`` GPUs of the shared type (the
        target packs the slices onto hosts, spread over two or more)."""
        optimum, greedy = result.optimum, result.greedy
        assert optimum is not None and greedy is not None
        if any(p.solo for p in placements):
            return Skip(
                deployment_id=deployment.id,
                reason="the optimum runs it partly alone, partly on shared instances: not applied",
            )
        mine = [optimum.shared_instances[k] for p in placements for k in p.shared]
        kinds = {(si.instance_type, si.gpus_per_replica[deployment.id]) for si in mine}
        if len(kinds) != 1:
            return Skip(
                deployment_id=deployment.id,
                reason=f"the optimum splits it over shared {sorted(kinds)} (type, GPUs): not applied",
            )
        ((target, gpus),) = kinds
        config = deployment.config
        if config.instance_type == target and config.gpus_per_replica == gpus:
            return Skip(
                deployment_id=deployment.id, reason=f"already on its optimum: {gpus} GPUs of shared {target}"
            )
        new_type = INSTANCE_TYPES[target]
        desired = config.model_copy(
            update={
                "instance_type": target,
                "gpus_per_replica": gpus,
                "engine": default_engine(new_type.gpu, gpus),
            }
        )
        members = sorted({d for si in mine for d in si.replicas})
        partners = [d for d in members if d != deployment.id]
        deployments = {d.id: d for d in snapshot.deployments}
        together = sum(config_usd_hour(deployments[d].config) for d in members if d in deployments)
        hosts = [si for si in optimum.shared_instances if set(si.replicas) & set(members)]
        shared_saving = together - sum(si.price_usd_hour for si in hosts)
        return self._propose(
            snapshot,
            deployment,
            desired,
            result,
            settings,
            move=f"{config.replicas} x {deployment.instance_type} -> {gpus} GPUs each of shared {target} "
            f"(with {', '.join(partners) or 'no one'})",
            to=f"{gpus} GPUs of shared {target}",
            shared={
                "gpus_per_replica": gpus,
                "shared_with": partners,
                "shared_instances": len(hosts),
                "shared_saving_usd_hour": round(shared_saving, 4),
            },
            shared_reason=f"shared with {', '.join(partners) or 'no other deployment'} on {len(hosts)} x "
            f"{target}: ${shared_saving:.2f}/h together, which needs every one of them to move",
        )

    def _propose(
        self,
        snapshot: FleetSnapshot,
        deployment: Deployment,
        desired: DeploymentConfig,
        result: ConsolidationResult,
        settings: DecisionSettings,
        *,
        move: str,
        to: str,
        shared: dict[str, object] | None = None,
        shared_reason: str | None = None,
    ) -> Proposal | Skip:
        """The change from the deployment's config to ``desired`` (solo or shared), if it saves the customer's
        minimum: the fleet optimum beside greedy as evidence, the replica's fit at its peak."""
        optimum, greedy = result.optimum, result.greedy
        assert optimum is not None and greedy is not None
        config = deployment.config
        saving = config_usd_hour(config) - config_usd_hour(desired)
        customer = snapshot.customer_by_id[deployment.customer_id]
        if saving * settings.hours_per_month < customer.min_monthly_savings_usd:
            return Skip(
                deployment_id=deployment.id,
                reason=f"moving to {to} saves ${saving * settings.hours_per_month:,.0f}/month, under the "
                "customer's minimum",
            )
        stat = snapshot.baseline(deployment.id, "requests_per_s")
        peak = stat.p95 if stat else deployment.base_requests_per_s
        new_type = INSTANCE_TYPES[desired.instance_type]
        fit = replica_fit(deployment.model, new_type.gpu.name, peak, customer.slo_p95_latency_ms)
        reasons = [
            f"fleet optimum ${optimum.cost_usd_hour:.2f}/h ({optimum.status}) vs greedy first-fit "
            f"${greedy.cost_usd_hour:.2f}/h vs today ${result.current_cost_usd_hour:.2f}/h",
            f"{deployment.id}: {move} ({fit.reason})",
        ]
        evidence = ConsolidationEvidence(
            deployment_id=deployment.id,
            from_instance_type=deployment.instance_type,
            to_instance_type=desired.instance_type,
            replicas=config.replicas,
            fleet_cost_usd_hour=result.current_cost_usd_hour,
            optimum_cost_usd_hour=optimum.cost_usd_hour,
            greedy_cost_usd_hour=greedy.cost_usd_hour,
            fleet_saving_usd_hour=round(result.saving_usd_hour, 4),
            greedy_saving_usd_hour=round(result.greedy_saving_usd_hour, 4),
            solver_status=optimum.status,
            solve_s=optimum.solve_s,
            deployment_saving_usd_hour=round(saving, 4),
            fit=fit.reason,
            reasons=[*reasons, shared_reason] if shared_reason else reasons,
            **(shared or {}),
        )
        monthly = saving * settings.hours_per_month
        return Proposal(
            kind=KIND,
            customer_id=deployment.customer_id,
            deployment_id=deployment.id,
            current=config,
            desired=desired,
            evidence=evidence,
            estimate=Estimate(monthly_savings_usd=round(monthly, 2)),
            risk_score=0.3,
            summary=f"Consolidate {deployment.id}: {move}, saving ${monthly:,.0f}/month (fleet optimum "
            f"{optimum.status})",
        )
