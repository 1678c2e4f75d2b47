"""The sandbox fleet: seeded customers and deployments, and deterministic metric generation.

Every random-looking value is a pure function of (seed, instance id, timestamp) through a counter-based
hash (splitmix64), never a stateful RNG: generating [a, c) gives exactly the rows of [a, b) followed by
[b, c), and a row can be recomputed on its own. Generation is vectorized over a (time x instance) grid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from optiinfra_assets.catalog import instance_type, model
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import (
    Customer,
    Deployment,
    Fault,
    FaultKind,
    Instance,
    InstanceState,
    Lifecycle,
)
from optiinfra_assets.serving import ServingCapacity, load_points, serving_capacity

AZS = ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f")
DIURNAL_AMPLITUDE = 0.35  # peak-to-mean swing of demand over a day
PEAK_HOUR_UTC = 15.0  # afternoon in UTC: US morning and European afternoon overlap
WEEKEND_FACTOR = 0.7
LOAD_NOISE = 0.06  # relative noise of one instance's share (routing imbalance, bursts)
LATENCY_NOISE = 0.05
QUALITY_MEAN, QUALITY_SD = 0.88, 0.03
HALLUCINATION_MEAN, HALLUCINATION_SD = 0.05, 0.02
TOXICITY_MEAN, TOXICITY_SD = 0.01, 0.005
# A deployment with no running replica serves nothing: its latency is reported as the request timeout.
NO_SERVICE_LATENCY_MS = 600_000.0
_EPOCH_THURSDAY = 3  # 1970-01-01 was a Thursday: (days + 3) % 7 gives Monday = 0


# ---------------------------------------------------------------------------------------------- noise

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer over uint64 arrays (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _key(seed: int, name: str) -> int:
    """A stable 64-bit key of (seed, name): Python's hash() is salted per process, blake2b is not."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _uniform(key: int, ts_s: np.ndarray, stream: int) -> np.ndarray:
    """Uniform (0, 1) values, one per timestamp, for stream `stream` of an instance key."""
    with np.errstate(over="ignore"):
        x = np.uint64(key) ^ _splitmix64(ts_s.astype(np.uint64) * np.uint64(64) + np.uint64(stream))
    bits = _splitmix64(x) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / 2.0**53)


def _normal(key: int, ts_s: np.ndarray, stream: int) -> np.ndarray:
    """Standard normal values by Box-Muller over two uniform streams."""
    u1, u2 = _uniform(key, ts_s, 2 * stream), _uniform(key, ts_s, 2 * stream + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def new_instance_id(seed: int, deployment_id: str, n: int) -> str:
    """The n-th instance id ever launched for a deployment: 'i-' + 17 hex chars, as EC2 spells them."""
    return "i-" + hashlib.blake2b(f"{seed}:{deployment_id}:{n}".encode(), digest_size=9).hexdigest()[:17]


def pick_az(seed: int, instance_id: str) -> str:
    return AZS[_key(seed, "az:" + instance_id) % len(AZS)]


# ------------------------------------------------------------------------------------------ the fleet

CUSTOMERS: tuple[Customer, ...] = (
    # SLOs are p95 end-to-end latency of a whole response (~256 output tokens on average).
    Customer(
        id="acme", name="Acme Corp (chat assistant)", slo_p95_latency_ms=30_000, min_monthly_savings_usd=500
    ),
    Customer(id="globex", name="Globex (RAG search)", slo_p95_latency_ms=45_000, min_monthly_savings_usd=300),
    Customer(
        id="initech", name="Initech (code assistant)", slo_p95_latency_ms=20_000, min_monthly_savings_usd=1000
    ),
    Customer(
        id="umbrella",
        name="Umbrella (document summarization)",
        slo_p95_latency_ms=30_000,
        min_monthly_savings_usd=200,
        allow_spot=False,  # compliance says no spot, whatever it saves
    ),
)

# (id, customer, model, instance type, replicas, utilization at a normal weekday peak)
_DEPLOYMENTS: tuple[tuple[str, str, str, str, int, float], ...] = (
    # Good spot candidate: 5-10% band, 4 replicas (one loss leaves ~70% peak utilization), 58% savings.
    ("acme-chat-8b", "acme", "Llama-3.1-8B", "g6e.xlarge", 4, 0.52),
    # Lowest band (<5%) and 65% savings, but only 2 replicas: one loss overloads the other at peak.
    ("acme-chat-70b", "acme", "Llama-3.1-70B", "p4de.24xlarge", 2, 0.55),
    ("globex-rag-mistral", "globex", "Mistral-7B-Instruct-v0.2", "g5.2xlarge", 3, 0.50),
    ("globex-rag-qwen", "globex", "Qwen2.5-7B", "g6.xlarge", 3, 0.45),
    # Bad spot candidate: >20% band and a single replica, a spot loss is an outage.
    ("initech-code-72b", "initech", "Qwen2.5-72B", "p5.48xlarge", 1, 0.60),
    ("umbrella-sum-mixtral", "umbrella", "Mixtral-8x7B-v0.1", "p4d.24xlarge", 1, 0.50),
)
_PEAK_FACTOR = 1.0 + DIURNAL_AMPLITUDE  # weekday peak demand / mean demand
FLEET_AGE = timedelta(days=30)  # the initial instances were launched this long before `now`


def capacity(deployment: Deployment) -> ServingCapacity:
    return serving_capacity(model(deployment.model), instance_type(deployment.instance_type))


def _deployment(
    did: str, cid: str, model_name: str, itype: str, replicas: int, peak_util: float
) -> Deployment:
    cap = serving_capacity(model(model_name), instance_type(itype))
    # Mean load such that the weekday peak sits at `peak_util` of the deployment's capacity.
    base = round(peak_util * replicas * cap.max_requests_per_s / _PEAK_FACTOR, 3)
    return Deployment(
        id=did,
        customer_id=cid,
        model=model_name,
        instance_type=itype,
        replicas=replicas,
        base_requests_per_s=base,
    )


def initial_fleet(seed: int, now: datetime) -> tuple[list[Customer], list[Deployment], list[Instance]]:
    customers = [c.model_copy() for c in CUSTOMERS]
    deployments = [_deployment(*row) for row in _DEPLOYMENTS]
    launched = _utc(now).replace(second=0, microsecond=0) - FLEET_AGE
    instances = []
    for d in deployments:
        for n in range(d.replicas):
            iid = new_instance_id(seed, d.id, n)
            instances.append(
                Instance(
                    id=iid,
                    deployment_id=d.id,
                    instance_type=d.instance_type,
                    lifecycle=Lifecycle.ON_DEMAND,
                    az=pick_az(seed, iid),
                    launched_at=launched,
                )
            )
    return customers, deployments, instances


# ------------------------------------------------------------------------------------------ time grid


def _utc(dt: datetime) -> datetime:
    """Naive datetimes (as some databases return them) are UTC."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _epoch_ms(dt: datetime) -> int:
    return round(_utc(dt).timestamp() * 1000)


def _grid(start: datetime, end: datetime, step_s: int) -> np.ndarray:
    """Epoch seconds that are multiples of step_s in [start, end): aligned, so ranges concatenate."""
    first = -(-_epoch_ms(start) // (step_s * 1000)) * step_s
    last_ms = _epoch_ms(end)
    ts = np.arange(first, (last_ms + 999) // 1000, step_s, dtype=np.int64)
    return ts[ts * 1000 < last_ms]


def _running_mask(instances: Sequence[Instance], ts_s: np.ndarray) -> np.ndarray:
    """(T, N) bool: instance n runs at ts[t] (launched_at <= ts < ended_at)."""
    mask = np.zeros((ts_s.size, len(instances)), dtype=bool)
    for n, inst in enumerate(instances):
        if inst.ended_at is None and inst.state != InstanceState.RUNNING:
            continue  # ended without a recorded time: treat as never having served
        lo = _epoch_ms(inst.launched_at)
        hi = _epoch_ms(inst.ended_at) if inst.ended_at is not None else np.iinfo(np.int64).max
        ms = ts_s * 1000
        mask[:, n] = (ms >= lo) & (ms < hi)
    return mask


def demand_factor(ts_s: np.ndarray) -> np.ndarray:
    """Relative demand at each epoch second: diurnal with an afternoon (UTC) peak, weekends lower."""
    hour = (ts_s % 86_400) / 3600.0
    weekday = (ts_s // 86_400 + _EPOCH_THURSDAY) % 7
    diurnal = 1.0 + DIURNAL_AMPLITUDE * np.cos(2.0 * np.pi * (hour - PEAK_HOUR_UTC) / 24.0)
    return diurnal * np.where(weekday >= 5, WEEKEND_FACTOR, 1.0)


# ------------------------------------------------------------------------------------------ generation


class _Fleet:
    """Instances sorted by id with what generation needs about each, looked up once."""

    def __init__(self, customers: Sequence[Customer], deployments: Sequence[Deployment], instances):
        dep_by_id = {d.id: d for d in deployments}
        known = {c.id for c in customers}
        self.instances = sorted((i for i in instances if i.deployment_id in dep_by_id), key=lambda i: i.id)
        self.deployments = [dep_by_id[i.deployment_id] for i in self.instances]
        self.customer_ids = [d.customer_id if d.customer_id in known else "" for d in self.deployments]
        self.caps = {d.id: capacity(d) for d in deployments if d.id in {x.id for x in self.deployments}}

    def __len__(self) -> int:
        return len(self.instances)


def _frame(domain: Domain, fleet: _Fleet, ts_s: np.ndarray, idx: np.ndarray, values: dict) -> pl.DataFrame:
    """Rows (ts_s[k], instance idx[k]) in the domain's exact schema."""
    schema = SCHEMAS[domain].polars_schema
    ids = pl.Series(values=[i.id for i in fleet.instances], dtype=pl.String)
    gather = pl.Series(idx, dtype=pl.UInt32)
    columns: dict[str, pl.Series] = {
        "ts": pl.Series(ts_s * 1000, dtype=pl.Int64).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
        "customer_id": pl.Series(fleet.customer_ids, dtype=pl.String).gather(gather),
        "deployment_id": pl.Series([d.id for d in fleet.deployments], dtype=pl.String).gather(gather),
        "instance_id": ids.gather(gather),
    }
    for name, vals in values.items():
        columns[name] = vals if isinstance(vals, pl.Series) else pl.Series(name, vals, dtype=schema[name])
    return pl.DataFrame({name: columns[name].alias(name) for name in schema}, schema=schema)


def _empty(domain: Domain) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[domain].polars_schema)


def _instance_load(fleet: _Fleet, ts_s: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """(T, N) requests/s each instance receives: its deployment's demand split over the running ones."""
    demand = demand_factor(ts_s)
    load = np.zeros(mask.shape)
    for dep_id in {d.id for d in fleet.deployments}:
        cols = [n for n, d in enumerate(fleet.deployments) if d.id == dep_id]
        running = mask[:, cols].sum(axis=1)
        share = fleet.deployments[cols[0]].base_requests_per_s * demand / np.maximum(running, 1)
        for n in cols:
            noise = 1.0 + LOAD_NOISE * _normal(_key(seed, fleet.instances[n].id), ts_s, 0)
            load[:, n] = np.maximum(share * noise, 0.0)
    return load


def _per_second(fleet: _Fleet, ts_s: np.ndarray, seed: int) -> dict[Domain, pl.DataFrame]:
    mask = _running_mask(fleet.instances, ts_s)
    load = _instance_load(fleet, ts_s, mask, seed)
    t_idx, n_idx = np.nonzero(mask)  # row-major: ordered by ts, then instance id
    perf_cols = [m.name for m in SCHEMAS[Domain.PERFORMANCE].measures]
    res_cols = ["gpu_util_pct", "gpu_mem_used_gib", "power_w"]
    out = {name: np.empty(t_idx.size) for name in [*perf_cols, *res_cols, "gpu_mem_total_gib"]}
    for n, (inst, dep) in enumerate(zip(fleet.instances, fleet.deployments, strict=True)):
        rows = n_idx == n
        if not rows.any():
            continue
        ts_n = ts_s[t_idx[rows]]
        itype = instance_type(inst.instance_type)
        points = load_points(fleet.caps[dep.id], itype, load[t_idx[rows], n])
        key = _key(seed, inst.id)
        jitter = 1.0 + LATENCY_NOISE * _normal(key, ts_n, 1)
        for name in ("ttft_ms", "itl_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            points[name] = points[name] * np.maximum(jitter, 0.5)
        points["gpu_util_pct"] = np.clip(points["gpu_util_pct"] + 2.0 * _normal(key, ts_n, 2), 0.0, 100.0)
        points["power_w"] = np.maximum(points["power_w"] * (1.0 + 0.02 * _normal(key, ts_n, 3)), 0.0)
        points["gpu_mem_total_gib"] = np.full(ts_n.size, itype.gpu_memory_gib_total)
        for name in out:
            out[name][rows] = points[name]
    ts_rows = ts_s[t_idx]
    perf = _frame(Domain.PERFORMANCE, fleet, ts_rows, n_idx, {c: out[c] for c in perf_cols})
    res_names = [m.name for m in SCHEMAS[Domain.RESOURCE].measures]
    res = _frame(Domain.RESOURCE, fleet, ts_rows, n_idx, {c: out[c] for c in res_names})
    return {Domain.PERFORMANCE: perf, Domain.RESOURCE: res}


def _cost(fleet: _Fleet, start: datetime, end: datetime) -> pl.DataFrame:
    ts_s = _grid(start, end, 60)
    mask = _running_mask(fleet.instances, ts_s)
    t_idx, n_idx = np.nonzero(mask)
    prices = np.array([instance_type(i.instance_type).price_usd_hour(i.lifecycle) for i in fleet.instances])
    lifecycles = pl.Series([str(i.lifecycle) for i in fleet.instances], dtype=pl.String)
    itypes = pl.Series([i.instance_type for i in fleet.instances], dtype=pl.String)
    gather = pl.Series(n_idx, dtype=pl.UInt32)
    price = prices[n_idx] if n_idx.size else np.empty(0)
    return _frame(
        Domain.COST,
        fleet,
        ts_s[t_idx],
        n_idx,
        {
            "instance_type": itypes.gather(gather),
            "lifecycle": lifecycles.gather(gather),
            "price_usd_per_hour": price,
            "cost_usd": price / 60.0,
        },
    )


def _quality_drop(fleet: _Fleet, faults: Sequence[Fault], ts_s: np.ndarray, n_idx: np.ndarray) -> np.ndarray:
    """Fraction by which each sampled request's quality is lowered by active quality faults."""
    drop = np.zeros(ts_s.size)
    for fault in faults:
        if not fault.active or fault.kind != FaultKind.QUALITY_DEGRADATION:
            continue
        scope = fault.params.get("scope", "all")
        hit = np.array(
            [
                d.id == fault.deployment_id and (scope != "spot" or i.lifecycle == Lifecycle.SPOT)
                for i, d in zip(fleet.instances, fleet.deployments, strict=True)
            ],
            dtype=bool,
        )
        since = ts_s * 1000 >= _epoch_ms(fault.created_at)
        drop += np.where(hit[n_idx] & since, float(fault.params.get("drop_pct", 10)) / 100.0, 0.0)
    return np.minimum(drop, 1.0)


def _quality(fleet: _Fleet, faults: Sequence[Fault], ts_s: np.ndarray, seed: int) -> pl.DataFrame:
    mask = _running_mask(fleet.instances, ts_s)
    t_idx, n_idx = np.nonzero(mask)
    ts_rows = ts_s[t_idx]
    z = np.empty((3, ts_rows.size))
    for n, inst in enumerate(fleet.instances):
        rows = n_idx == n
        key = _key(seed, "quality:" + inst.id)
        for k in range(3):
            z[k, rows] = _normal(key, ts_rows[rows], k)
    drop = _quality_drop(fleet, faults, ts_rows, n_idx)
    quality = (QUALITY_MEAN + QUALITY_SD * z[0]) * (1.0 - drop)
    hallucination = HALLUCINATION_MEAN + HALLUCINATION_SD * z[1] + drop / 2.0
    toxicity = TOXICITY_MEAN + TOXICITY_SD * np.abs(z[2])
    ids = pl.Series([i.id for i in fleet.instances], dtype=pl.String).gather(
        pl.Series(n_idx, dtype=pl.UInt32)
    )
    request_id = (
        pl.DataFrame({"i": ids, "t": pl.Series(ts_rows, dtype=pl.Int64)})
        .select(pl.format("q-{}-{}", "i", "t"))
        .to_series()
    )
    return _frame(
        Domain.QUALITY,
        fleet,
        ts_rows,
        n_idx,
        {
            "request_id": request_id,
            "quality_score": np.clip(quality, 0.0, 1.0),
            "hallucination_score": np.clip(hallucination, 0.0, 1.0),
            "toxicity_score": np.clip(toxicity, 0.0, 1.0),
        },
    )


def generate(
    customers: Sequence[Customer],
    deployments: Sequence[Deployment],
    instances: Sequence[Instance],
    faults: Sequence[Fault],
    start: datetime,
    end: datetime,
    *,
    seed: int,
    step_s: int = 1,
    quality_sample_s: int = 10,
) -> dict[Domain, pl.DataFrame]:
    """Metric rows of [start, end) in the SCHEMAS of each domain, ordered by ts then instance id."""
    fleet = _Fleet(customers, deployments, instances)
    if not len(fleet) or _epoch_ms(end) <= _epoch_ms(start):
        return {d: _empty(d) for d in Domain}
    frames = _per_second(fleet, _grid(start, end, step_s), seed)
    frames[Domain.COST] = _cost(fleet, start, end)
    frames[Domain.QUALITY] = _quality(fleet, faults, _grid(start, end, quality_sample_s), seed)
    return {d: frames[d] for d in Domain}


def observe(
    customers: Sequence[Customer],
    deployments: Sequence[Deployment],
    instances: Sequence[Instance],
    faults: Sequence[Fault],
    deployment_id: str,
    at: datetime,
    seconds: int,
    *,
    seed: int,
) -> dict[str, float]:
    """The deployment's aggregate metrics over the next `seconds` at the current fleet."""
    mine = [i for i in instances if i.deployment_id == deployment_id]
    running = [i for i in mine if _running_mask([i], np.array([_epoch_ms(at) // 1000]))[0, 0]]
    end = _utc(at) + timedelta(seconds=seconds)
    frames = generate(
        customers, deployments, mine, faults, at, end, seed=seed, step_s=1, quality_sample_s=1
    )  # a judged request every second per replica: enough samples for a short soak
    perf, res, qual = frames[Domain.PERFORMANCE], frames[Domain.RESOURCE], frames[Domain.QUALITY]
    n_ts = max(perf["ts"].n_unique(), 1)
    served = perf.height > 0
    return {
        "quality_mean": float(qual["quality_score"].mean()) if qual.height else 0.0,
        "hallucination_mean": float(qual["hallucination_score"].mean()) if qual.height else 1.0,
        "latency_p95_ms": float(perf["latency_p95_ms"].mean()) if served else NO_SERVICE_LATENCY_MS,
        "ttft_ms": float(perf["ttft_ms"].mean()) if served else NO_SERVICE_LATENCY_MS,
        "tokens_per_s": float(perf["tokens_per_s"].sum()) / n_ts,
        "gpu_util_pct": float(res["gpu_util_pct"].mean()) if served else 0.0,
        "requests_per_s": float(perf["requests_per_s"].sum()) / n_ts,
        "running_replicas": float(len(running)),
        "spot_replicas": float(sum(i.lifecycle == Lifecycle.SPOT for i in running)),
    }
