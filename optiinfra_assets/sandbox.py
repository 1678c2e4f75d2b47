"""The sandbox fleet: seeded customers and deployments, and deterministic metric generation.

Every random-looking value is a pure function of (seed, instance id, timestamp) through a counter-based
hash (splitmix64), never a stateful RNG: generating [a, c) gives exactly the rows of [a, b) followed by
[b, c), and a row can be recomputed on its own. Generation is vectorized over a (time x instance) grid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import polars as pl

from optiinfra_assets.catalog import (
    INSTANCE_TYPES,
    MODELS,
    InstanceType,
    default_config,
    instance_type,
    model,
    replica_type,
    slice_type,
)
from optiinfra_assets.metrics import KEY_COLUMNS, SCHEMAS, Domain, ThrottleReason
from optiinfra_assets.models import (
    Customer,
    Deployment,
    EngineConfig,
    Fault,
    FaultKind,
    Instance,
    InstanceState,
    Lifecycle,
    Risk,
)
from optiinfra_assets.request_text import (
    ITEMS_PER_KIND,
    MODE_INDEX,
    DegradationMode,
    RequestKind,
    degraded_share,
    render,
    score_table,
)
from optiinfra_assets.serving import ServingCapacity, load_points, quality_factor, serving_capacity

AZS = ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f")
DIURNAL_AMPLITUDE = 0.35  # peak-to-mean swing of demand over a day
PEAK_HOUR_UTC = 15.0  # afternoon in UTC: US morning and European afternoon overlap
WEEKEND_FACTOR = 0.7
LOAD_NOISE = 0.06  # relative noise of one instance's share (routing imbalance, bursts)
LATENCY_NOISE = 0.05
QUALITY_MEAN, QUALITY_SD = 0.88, 0.03
KEY_NAMES = tuple(KEY_COLUMNS)
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


def _uniform(key: int | np.ndarray, ts_s: np.ndarray, stream: int) -> np.ndarray:
    """Uniform (0, 1) values, one per timestamp, for stream `stream` of an instance key (or of each row's
    key, given an array of keys as long as ts_s)."""
    with np.errstate(over="ignore"):
        counter = ts_s.astype(np.uint64) * np.uint64(64) + np.uint64(stream)
        x = np.asarray(key, dtype=np.uint64) ^ _splitmix64(counter)
    bits = _splitmix64(x) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * (1.0 / 2.0**53)


def _normal(key: int | np.ndarray, ts_s: np.ndarray, stream: int) -> np.ndarray:
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
        id="acme", name="Acme Corp (chat assistant)", slo_p95_latency_ms=45_000, min_monthly_savings_usd=500
    ),
    Customer(id="globex", name="Globex (RAG search)", slo_p95_latency_ms=45_000, min_monthly_savings_usd=300),
    Customer(
        id="initech",
        name="Initech (code assistant)",
        slo_p95_latency_ms=40_000,
        min_monthly_savings_usd=1000,
        autoscaling=True,  # a written autoscaling policy: scaled within min/max replicas (issue 9)
    ),
    Customer(
        id="umbrella",
        name="Umbrella (document summarization)",
        slo_p95_latency_ms=30_000,
        min_monthly_savings_usd=200,
        allow_spot=False,  # compliance says no spot, whatever it saves
    ),
    # Cost agent (issue 7): a customer near its budget. Its only deployment (hooli-support-qwen7b, two g6.xlarge
    # on demand) spends ~$1,082 a 28-day month; the budget is 3% under that, so the month-end forecast crosses
    # it in every month (budget_alerts, budget_forecasts' check).
    Customer(
        id="hooli",
        name="Hooli (support bot on a budget)",
        slo_p95_latency_ms=45_000,
        min_monthly_savings_usd=100,
        monthly_budget_usd=round(0.97 * 2 * instance_type("g6.xlarge").ondemand_usd_hour * 24 * 28, 2),
    ),
    # Application agent (issue 10): a customer whose written policy approves low-risk changes, so that the
    # A/B rollback of vandelay-rag-llama8b happens without a click (once: the rollback, remembered, makes
    # the next proposal medium risk, which waits for a person).
    Customer(
        id="vandelay",
        name="Vandelay (RAG support, auto-approves)",
        slo_p95_latency_ms=45_000,
        min_monthly_savings_usd=300,
        auto_approve_max_risk=Risk.LOW,
    ),
    # Resource agent (issue 9, shared placements): a customer on dedicated hardware whose two 32B models each
    # run on all four L40S of g6e.12xlarge instances, where two L40S hold one replica (initrode-* below).
    Customer(
        id="initrode",
        name="Initrode (contract review, dedicated hardware)",
        slo_p95_latency_ms=30_000,
        min_monthly_savings_usd=500,
        allow_spot=False,  # contracts under review stay off capacity the cloud may reclaim
        dedicated_hardware=True,
    ),
)

# (id, customer, model, instance type, replicas, utilization at a normal weekday peak[, engine overrides])
_DEPLOYMENTS: tuple[
    tuple[str, str, str, str, int, float] | tuple[str, str, str, str, int, float, dict], ...
] = (
    # Good spot candidate: 5-10% band, 4 replicas (one loss leaves ~70% peak utilization), 58% savings.
    ("acme-chat-8b", "acme", "Llama-3.1-8B", "g6e.xlarge", 4, 0.52),
    # Lowest band (<5%) and 65% savings, but only 2 replicas: one loss overloads the other at peak.
    ("acme-chat-70b", "acme", "Llama-3.1-70B", "p4de.24xlarge", 2, 0.55),
    ("globex-rag-mistral", "globex", "Mistral-7B-Instruct-v0.2", "g5.2xlarge", 3, 0.50),
    ("globex-rag-qwen", "globex", "Qwen2.5-7B", "g6.xlarge", 3, 0.42),
    # Bad spot candidate: >20% band and a single replica, a spot loss is an outage.
    ("initech-code-72b", "initech", "Qwen2.5-72B", "p5.48xlarge", 1, 0.60),
    ("umbrella-sum-mixtral", "umbrella", "Mixtral-8x7B-v0.1", "p4d.24xlarge", 1, 0.50),
    # Performance agent (issue 8): one deployment per situation its capabilities act on.
    # KV pressure: a 32B model's bf16 weights leave 27 sequences of KV cache on one H100; the weekday peak
    # overloads it (KV cache full, preemptions, queueing). kv_cache_tuning: FP8 KV cache, more memory.
    ("globex-kv-qwen32b", "globex", "Qwen2.5-32B", "p5.4xlarge", 2, 1.3),
    # An FP16 model on FP8 hardware running hot, with room in its KV cache. quantization: FP8.
    (
        "acme-fp16-llama8b",
        "acme",
        "Llama-3.1-8B",
        "p5.4xlarge",
        2,
        1.05,
        {"quantization": "fp16", "max_num_seqs": 256},
    ),
    # A batch limit that wastes throughput: 16 sequences where the KV cache holds ~400. batch_tuning.
    ("globex-batch16-qwen7b", "globex", "Qwen2.5-7B", "g6e.xlarge", 2, 0.9, {"max_num_seqs": 16}),
    # An 8B model split over 4 PCIe-linked L40S that one L40S serves. parallelism: fewer GPUs.
    ("acme-tp4-llama8b", "acme", "Llama-3.1-8B", "g6e.12xlarge", 1, 0.3),
    # Cost agent (issue 7): right-sizing and reserved capacity.
    # Over-provisioned hardware: one A10G on a 64-vCPU g5.16xlarge at 15% weekday-peak utilization, which one
    # replica cannot scale below; a g6.xlarge (L4) holds the SLO for a fifth of the price. right_sizing.
    ("globex-oversized-llama8b", "globex", "Llama-3.1-8B", "g5.16xlarge", 1, 0.15),
    # Steady 24/7 on-demand (a customer that rules out spot), already right-sized: reserved_capacity.
    ("umbrella-steady-mistral7b", "umbrella", "Mistral-7B-Instruct-v0.2", "g5.xlarge", 2, 0.45),
    # Cost agent (issue 7): cost anomalies and budget forecasts.
    # A cost spike: scaled from 2 to 4 replicas three hours before the fleet was seeded, for no more load
    # (_RECENT_REPLICAS): its hourly spend doubles. cost_anomalies explains it as a scale-up.
    ("initech-spike-llama8b", "initech", "Llama-3.1-8B", "g6e.xlarge", 4, 0.45),
    # The near-budget customer's only deployment (CUSTOMERS: hooli).
    ("hooli-support-qwen7b", "hooli", "Qwen2.5-7B", "g6.xlarge", 2, 0.5),
    # Application agent (issue 10): deployments whose answers go wrong in the text itself, from the fleet's
    # seeding on (INITIAL_QUALITY_FAULTS). A broken model version inventing facts in RAG answers
    # (quality_drift: a hallucination finding quoting them); a bad fine-tune insulting users (a toxicity
    # finding).
    ("globex-rag-broken-llama8b", "globex", "Llama-3.1-8B", "g6.xlarge", 2, 0.45),
    ("acme-chat-toxic-qwen7b", "acme", "Qwen2.5-7B", "g6.xlarge", 2, 0.45),
    # A good spot candidate (like acme-chat-8b) whose spot replicas serve a broken build: its customer's
    # policy approves the spot migration, and the A/B test between stages rolls it back. At 58% of peak
    # the autoscaler keeps its 4 replicas (at 52% it would scale to 3 and, outranking cost, escalate the
    # spot migration) and one spot loss still holds the SLO (at 62% it would not).
    ("vandelay-rag-llama8b", "vandelay", "Llama-3.1-8B", "g6e.xlarge", 4, 0.58),
    # Resource agent (issue 9). Idle GPUs: two L40S replicas at 6% weekday-peak utilization, under the 20% line
    # all day (gpu_utilization: idle; autoscaling: fewer replicas within the bounds).
    ("initech-idle-mistral7b", "initech", "Mistral-7B-Instruct-v0.2", "g6e.xlarge", 2, 0.06),
    # Small deployments that fit together: a 14B model on all four L4s of a g6.12xlarge, one replica per
    # instance, where two L4s hold it (consolidation: two replicas per 4-GPU instance, or a cheaper 1-GPU type).
    ("initech-pack-qwen14b-a", "initech", "Qwen2.5-14B", "g6.12xlarge", 2, 0.3),
    ("initech-pack-qwen14b-b", "initech", "Qwen2.5-14B", "g6.12xlarge", 2, 0.3),
    # Resource agent (issue 9): shared placements. Two 32B deployments of a dedicated-hardware customer, each
    # on two 4-GPU g6e.12xlarge where two L40S hold a replica within its 30 s SLO and AWS sells no 2-GPU
    # L40S type: consolidation's optimum puts one TP-2 replica of each on each of two g6e.12xlarge (spread
    # over two hosts, its own hosts only), half the hosts; the target packs them.
    ("initrode-review-qwen32b-a", "initrode", "Qwen2.5-32B", "g6e.12xlarge", 2, 0.08),
    ("initrode-review-qwen32b-b", "initrode", "Qwen2.5-32B", "g6e.12xlarge", 2, 0.08),
)
# (deployment, degradation mode, drop of mean quality %, scope) the sandbox suffers from its seeding on.
INITIAL_QUALITY_FAULTS: tuple[tuple[str, str, float, str], ...] = (
    ("globex-rag-broken-llama8b", "hallucination", 20.0, "all"),
    ("acme-chat-toxic-qwen7b", "toxicity", 15.0, "all"),
    ("vandelay-rag-llama8b", "hallucination", 20.0, "spot"),
)
# Replicas that joined a deployment shortly before the fleet was seeded: deployment -> (how many of its
# replicas, how long before the seeding hour). The others were launched FLEET_AGE before.
_RECENT_REPLICAS: dict[str, tuple[int, timedelta]] = {"initech-spike-llama8b": (2, timedelta(hours=3))}
_PEAK_FACTOR = 1.0 + DIURNAL_AMPLITUDE  # weekday peak demand / mean demand
FLEET_AGE = timedelta(days=30)  # the initial instances were launched this long before `now`


def capacity(deployment: Deployment) -> ServingCapacity:
    return serving_capacity(
        model(deployment.model), replica_type(deployment.config), deployment.config.engine
    )


def _deployment(
    did: str,
    cid: str,
    model_name: str,
    itype: str,
    replicas: int,
    peak_util: float,
    engine: dict[str, object] | None = None,
) -> Deployment:
    config = default_config(itype, replicas, **(engine or {}))
    cap = serving_capacity(model(model_name), instance_type(itype), config.engine)
    # Mean load such that the weekday peak sits at `peak_util` of the deployment's capacity.
    base = round(peak_util * replicas * cap.max_requests_per_s / _PEAK_FACTOR, 3)
    return Deployment(id=did, customer_id=cid, model=model_name, config=config, base_requests_per_s=base)


def initial_fleet(seed: int, now: datetime) -> tuple[list[Customer], list[Deployment], list[Instance]]:
    customers = [c.model_copy() for c in CUSTOMERS]
    deployments = [_deployment(*row) for row in _DEPLOYMENTS]
    return customers, deployments, _launch(seed, deployments, now)


# A synthetic fleet shaped like the measured production one (428 deployments on 1,000 instances), for
# bench/full_pass.py and scale tests: any (model, instance type) pair of the catalog that fits, mostly
# small deployments.
SYNTHETIC_REPLICA_WEIGHTS = (0.45, 0.22, 0.12, 0.08, 0.05, 0.04, 0.02, 0.02)  # P(1..8): mean 2.36 replicas
SYNTHETIC_INSTANCES_PER_CUSTOMER = 40
SYNTHETIC_PEAK_UTIL = (0.4, 0.7)  # weekday peak utilization, drawn per deployment
SYNTHETIC_SLOS_MS = (20_000.0, 30_000.0, 45_000.0)
SYNTHETIC_NO_SPOT_SHARE = 0.1  # customers whose compliance rules out spot


def _launch(seed: int, deployments: Sequence[Deployment], now: datetime) -> list[Instance]:
    """Each deployment's replicas, on demand, launched FLEET_AGE before ``now`` (_RECENT_REPLICAS later)."""
    launched = _utc(now).replace(second=0, microsecond=0) - FLEET_AGE

    def launched_at(d: Deployment, n: int) -> datetime:
        recent, before = _RECENT_REPLICAS.get(d.id, (0, timedelta(0)))
        if n < d.replicas - recent:
            return launched
        return _utc(now).replace(minute=0, second=0, microsecond=0) - before

    return [
        Instance(
            id=(iid := new_instance_id(seed, d.id, n)),
            deployment_id=d.id,
            instance_type=d.instance_type,
            lifecycle=Lifecycle.ON_DEMAND,
            engine=d.config.engine,
            az=pick_az(seed, iid),
            launched_at=launched_at(d, n),
        )
        for d in deployments
        for n in range(d.replicas)
    ]


def synthetic_fleet(
    n_instances: int, seed: int, now: datetime
) -> tuple[list[Customer], list[Deployment], list[Instance]]:
    """Exactly ``n_instances`` instances in deployments of 1-8 replicas, spread over one customer per
    SYNTHETIC_INSTANCES_PER_CUSTOMER instances; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    pairs = [
        (m, t)
        for m in MODELS
        for t in INSTANCE_TYPES
        if _serving_group(m, t, default_config(t, 1).engine)[0].fits
    ]
    customers = [
        Customer(
            id=f"cust-{k:04d}",
            name=f"Synthetic customer {k}",
            slo_p95_latency_ms=float(rng.choice(SYNTHETIC_SLOS_MS)),
            min_monthly_savings_usd=float(rng.integers(1, 11) * 100),
            allow_spot=bool(rng.random() >= SYNTHETIC_NO_SPOT_SHARE),
        )
        for k in range(max(1, -(-n_instances // SYNTHETIC_INSTANCES_PER_CUSTOMER)))
    ]
    deployments: list[Deployment] = []
    placed = 0
    while placed < n_instances:
        replicas = int(rng.choice(len(SYNTHETIC_REPLICA_WEIGHTS), p=SYNTHETIC_REPLICA_WEIGHTS)) + 1
        replicas = min(replicas, n_instances - placed)
        model_name, itype = pairs[rng.integers(len(pairs))]
        customer = customers[rng.integers(len(customers))]
        peak_util = float(rng.uniform(*SYNTHETIC_PEAK_UTIL))
        did = f"{customer.id}-d{len(deployments):05d}"
        deployments.append(_deployment(did, customer.id, model_name, itype, replicas, peak_util))
        placed += replicas
    return customers, deployments, _launch(seed, deployments, now)


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


def _running_bounds_ms(instances: Sequence[Instance]) -> tuple[np.ndarray, np.ndarray]:
    """Per instance, the epoch-ms range [launched_at, ended_at) it runs in; an empty one for an instance
    that ended without a recorded time (treated as never having served)."""
    lo = np.zeros(len(instances), dtype=np.int64)
    hi = np.zeros(len(instances), dtype=np.int64)
    for n, inst in enumerate(instances):
        if inst.ended_at is None and inst.state != InstanceState.RUNNING:
            continue
        lo[n] = _epoch_ms(inst.launched_at)
        hi[n] = _epoch_ms(inst.ended_at) if inst.ended_at is not None else np.iinfo(np.int64).max
    return lo, hi


def _running_mask(instances: Sequence[Instance], ts_s: np.ndarray) -> np.ndarray:
    """(T, N) bool: instance n runs at ts[t] (launched_at <= ts < ended_at)."""
    lo, hi = _running_bounds_ms(instances)
    ms = (ts_s * 1000)[:, None]
    return (ms >= lo) & (ms < hi)


# The load of the deployments in TRACE_SHAPED_DEPLOYMENTS has a real trace's shape: ServeGen language/m-small,
# all 43 clients summed (alibaba/ServeGen @ f891d1189eb32b3868dfc443800c4150548c282a, Apache-2.0), 14 days of
# requests/min at 10-minute steps, reduced by scripts/derive_load_shape.py (which documents how) to:
# - the day's shape: per 10-minute slot from 00:00 UTC, the slot's rate over its day's mean (median of the days),
#   with a late-evening peak of 1.45 and a morning trough of 0.63;
TRACE_SLOT_S = 600
# fmt: off
TRACE_DAY_SHAPE: tuple[float, ...] = (
    0.912, 0.874, 0.843, 0.814, 0.785, 0.753, 0.731, 0.703, 0.691, 0.674, 0.675, 0.690,
    0.729, 0.680, 0.727, 0.719, 0.729, 0.724, 0.723, 0.706, 0.704, 0.674, 0.673, 0.633,
    0.642, 0.644, 0.661, 0.672, 0.669, 0.680, 0.680, 0.675, 0.686, 0.704, 0.701, 0.692,
    0.720, 0.747, 0.738, 0.753, 0.781, 0.809, 0.809, 0.830, 0.811, 0.833, 0.881, 0.908,
    0.919, 1.014, 1.003, 1.040, 1.042, 1.051, 1.058, 1.134, 1.058, 1.173, 1.162, 1.189,
    1.091, 1.124, 1.110, 1.116, 1.093, 1.106, 1.115, 1.125, 1.090, 1.093, 1.114, 1.118,
    1.039, 1.008, 1.073, 1.070, 1.001, 1.042, 1.081, 1.045, 1.035, 1.044, 1.021, 1.019,
    1.049, 1.030, 1.075, 1.056, 1.042, 1.047, 1.016, 0.989, 1.018, 1.024, 1.053, 1.064,
    1.006, 1.044, 1.051, 1.081, 1.058, 1.063, 1.038, 1.053, 1.056, 1.051, 1.023, 1.000,
    1.002, 1.034, 1.027, 1.032, 1.024, 1.051, 1.086, 1.144, 1.188, 1.209, 1.244, 1.284,
    1.372, 1.428, 1.452, 1.432, 1.445, 1.418, 1.385, 1.451, 1.449, 1.449, 1.411, 1.413,
    1.407, 1.384, 1.364, 1.328, 1.287, 1.262, 1.225, 1.166, 1.130, 1.075, 1.048, 0.997,
)
# fmt: on
# - its bursts: quantiles (0%, 5%, ..., 100%) of each window's rate over its slot's shape value, one draw per
#   deployment and 10-minute window (a burst of up to 2x, a lull down to 0.56x).
# fmt: off
TRACE_BURST_QUANTILES: tuple[float, ...] = (
    0.563, 0.746, 0.795, 0.841, 0.875, 0.900, 0.919, 0.937, 0.954, 0.968, 0.978,
    0.989, 1.006, 1.024, 1.043, 1.064, 1.095, 1.147, 1.223, 1.342, 1.979,
)
# fmt: on
TRACE_SHAPED_DEPLOYMENTS = frozenset(
    {"initech-idle-mistral7b", "initech-pack-qwen14b-a", "initech-pack-qwen14b-b"}
)
_TRACE_DAY = np.array(TRACE_DAY_SHAPE)
_TRACE_BURSTS = np.array(TRACE_BURST_QUANTILES)
_BURST_LEVELS = np.linspace(0.0, 1.0, _TRACE_BURSTS.size)
_BURST_STREAM = 40  # a noise stream of the deployment's key no other draw uses


def demand_factor(ts_s: np.ndarray) -> np.ndarray:
    """Relative demand at each epoch second: diurnal with an afternoon (UTC) peak, weekends lower."""
    hour = (ts_s % 86_400) / 3600.0
    weekday = (ts_s // 86_400 + _EPOCH_THURSDAY) % 7
    diurnal = 1.0 + DIURNAL_AMPLITUDE * np.cos(2.0 * np.pi * (hour - PEAK_HOUR_UTC) / 24.0)
    return diurnal * np.where(weekday >= 5, WEEKEND_FACTOR, 1.0)


def traced_demand_factor(ts_s: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Relative demand with the trace's shape at each epoch second (``keys``: each row's deployment key): the
    slot's TRACE_DAY_SHAPE value scaled so that the day's peak is the other deployments' (a row's
    utilization at the weekday peak keeps its meaning), times the window's burst, weekends lower."""
    slot = ((ts_s % 86_400) // TRACE_SLOT_S).astype(np.int64)
    window = ts_s // TRACE_SLOT_S
    burst = np.interp(_uniform(keys, window, _BURST_STREAM), _BURST_LEVELS, _TRACE_BURSTS)
    weekday = (ts_s // 86_400 + _EPOCH_THURSDAY) % 7
    day = _TRACE_DAY[slot] * (_PEAK_FACTOR / _TRACE_DAY.max())
    return day * burst * np.where(weekday >= 5, WEEKEND_FACTOR, 1.0)


# ------------------------------------------------------------------------------------------ generation


@cache
def _serving_group(
    model_name: str, itype_name: str, engine: EngineConfig, gpus: int | None = None
) -> tuple[ServingCapacity, float]:
    """Capacity and quality factor of one serving group (``gpus``: a slice of a shared host of that many GPUs):
    computed once per process, pure in its arguments."""
    spec = model(model_name)
    itype = slice_type(instance_type(itype_name), gpus)
    return serving_capacity(spec, itype, engine), quality_factor(spec, engine)


class _Fleet:
    """Instances sorted by id, and what generation needs about each as arrays indexed like them.

    Instances that serve alike (same model, instance type and engine) form one serving group whose
    capacity is computed once, so that generation works on whole groups of rows, never per instance.
    """

    def __init__(
        self,
        customers: Sequence[Customer],
        deployments: Sequence[Deployment],
        instances: Sequence[Instance],
        seed: int,
    ) -> None:
        dep_by_id = {d.id: d for d in deployments}
        known = {c.id for c in customers}
        self.instances = sorted((i for i in instances if i.deployment_id in dep_by_id), key=lambda i: i.id)
        self.deployments = [dep_by_id[i.deployment_id] for i in self.instances]
        self.customer_ids = [d.customer_id if d.customer_id in known else "" for d in self.deployments]
        dep_ids = list(dict.fromkeys(d.id for d in self.deployments))
        dep_index = {did: k for k, did in enumerate(dep_ids)}
        self.dep_idx = np.array([dep_index[d.id] for d in self.deployments], dtype=np.int64)
        self.base_rps = np.array([dep_by_id[did].base_requests_per_s for did in dep_ids], dtype=np.float64)
        self.traced = np.array([did in TRACE_SHAPED_DEPLOYMENTS for did in dep_ids], dtype=bool)
        self.burst_keys = np.array([_key(seed, "burst:" + did) for did in dep_ids], dtype=np.uint64)
        # (capacity, instance type, quality factor) per serving group; group_idx: each instance's group.
        self.groups: list[tuple[ServingCapacity, InstanceType, float]] = []
        group_of: dict[tuple[str, str, EngineConfig, int | None], int] = {}
        group_idx = []
        for inst, dep in zip(self.instances, self.deployments, strict=True):
            key = (dep.model, inst.instance_type, inst.engine, inst.gpus)
            if key not in group_of:
                group_of[key] = len(self.groups)
                cap, quality = _serving_group(*key)
                self.groups.append((cap, slice_type(instance_type(inst.instance_type), inst.gpus), quality))
            group_idx.append(group_of[key])
        self.group_idx = np.array(group_idx, dtype=np.int64)
        # Slices of shared hosts: each instance's host (-1: a whole instance) and the GPUs it holds of it.
        host_ids = list(dict.fromkeys(i.host_id for i in self.instances if i.host_id))
        host_index = {hid: k for k, hid in enumerate(host_ids)}
        self.host_idx = np.array(
            [host_index.get(i.host_id or "", -1) for i in self.instances], dtype=np.int64
        )
        self.slice_gpus = np.array([i.gpus or 0 for i in self.instances], dtype=np.float64)
        self.noise_keys = np.array([_key(seed, i.id) for i in self.instances], dtype=np.uint64)
        self.quality_keys = np.array([_key(seed, "quality:" + i.id) for i in self.instances], dtype=np.uint64)
        self._lo_ms, self._hi_ms = _running_bounds_ms(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def n_deployments(self) -> int:
        return self.base_rps.size

    def running(self, ts_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(t_idx, n_idx) of every (timestamp, instance) where the instance runs, ordered by ts then id."""
        ms = (ts_s * 1000)[:, None]
        t_idx, n_idx = np.nonzero((ms >= self._lo_ms) & (ms < self._hi_ms))
        return t_idx, n_idx


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


def _instance_load(
    fleet: _Fleet, ts_s: np.ndarray, t_idx: np.ndarray, n_idx: np.ndarray, keys: np.ndarray
) -> np.ndarray:
    """Requests/s of each running (ts, instance) row: its deployment's demand at ts split over the
    deployment's instances running then, times the instance's noise."""
    dep_rows = fleet.dep_idx[n_idx]
    # One cell per (ts, deployment): there are never more cells than rows, so the count stays linear.
    cell = t_idx * fleet.n_deployments + dep_rows
    running = np.bincount(cell, minlength=ts_s.size * fleet.n_deployments)[cell]
    factor = demand_factor(ts_s)[t_idx]
    traced = fleet.traced[dep_rows]
    if traced.any():
        factor[traced] = traced_demand_factor(ts_s[t_idx][traced], fleet.burst_keys[dep_rows][traced])
    share = fleet.base_rps[dep_rows] * factor / np.maximum(running, 1)
    noise = 1.0 + LOAD_NOISE * _normal(keys, ts_s[t_idx], 0)
    return np.maximum(share * noise, 0.0)


def _serve(fleet: _Fleet, n_idx: np.ndarray, load: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """load_points of every row, one call per serving group: rows are grouped by a stable sort."""
    group_rows = fleet.group_idx[n_idx]
    order = np.argsort(group_rows, kind="stable")
    bounds = np.searchsorted(group_rows[order], np.arange(len(fleet.groups) + 1))
    out = {name: np.empty(load.size) for name in names}
    for g, (cap, itype, _) in enumerate(fleet.groups):
        rows = order[bounds[g] : bounds[g + 1]]
        if rows.size:
            points = load_points(cap, itype, load[rows])
            for name in names:
                out[name][rows] = points[name]
    return out


_LATENCIES = ("ttft_ms", "itl_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
# Max boost SM clocks (MHz) from NVIDIA's data sheets; a GPU not listed boosts to the default.
_BOOST_CLOCK_MHZ = {
    "H100 SXM": 1980.0,
    "H200": 1980.0,
    "H100 PCIe": 1755.0,
    "A100 40GB": 1410.0,
    "A100 80GB": 1410.0,
    "L40S": 2520.0,
    "L4": 2040.0,
    "A10G": 1710.0,
    "T4": 1590.0,
}
_DEFAULT_BOOST_CLOCK_MHZ = 1800.0
# A GPU drawing this share of its power limit is held at the limit by the driver's software power cap
# (NVML reason 4, as an H100 reports under a matmul at its 700 W limit), which lowers the SM clock...
POWER_CAP_SHARE = 0.97
# ... by up to this share at the limit and beyond (an H100 at 700 W runs ~1.7 GHz of its 1.98 GHz boost).
POWER_CAPPED_CLOCK_DROP = 0.15


def _group_boost_mhz(fleet: _Fleet) -> np.ndarray:
    return np.array(
        [_BOOST_CLOCK_MHZ.get(itype.gpu.name, _DEFAULT_BOOST_CLOCK_MHZ) for _, itype, _ in fleet.groups]
    )


def _clocks(fleet: _Fleet, n_idx: np.ndarray, power_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SM clock (MHz) and throttle reasons of each row from its power draw: full boost below the power
    cap, lower and flagged as power-capped at it. The sandbox has no temperature, so no thermal reason."""
    group_limit_w = np.array([itype.gpu_count * itype.gpu.tdp_w for _, itype, _ in fleet.groups])
    group_boost = _group_boost_mhz(fleet)
    groups = fleet.group_idx[n_idx]
    share = power_w / group_limit_w[groups]
    capped = share >= POWER_CAP_SHARE
    depth = np.clip((share - POWER_CAP_SHARE) / (1.0 - POWER_CAP_SHARE), 0.0, 1.0)
    # Once capped, at least 30% of the drop: the cap's control loop lowers the clock in coarse steps.
    drop = np.where(capped, POWER_CAPPED_CLOCK_DROP * np.maximum(depth, 0.3), 0.0)
    clock = group_boost[groups] * (1.0 - drop)
    reasons = np.where(capped, float(ThrottleReason.SW_POWER_CAP), 0.0)
    return np.round(clock), reasons


def _per_second(fleet: _Fleet, ts_s: np.ndarray) -> dict[Domain, pl.DataFrame]:
    t_idx, n_idx = fleet.running(ts_s)
    ts_rows, keys = ts_s[t_idx], fleet.noise_keys[n_idx]
    perf_cols = [m.name for m in SCHEMAS[Domain.PERFORMANCE].measures]
    res_cols = [m.name for m in SCHEMAS[Domain.RESOURCE].measures]
    derived = ("gpu_mem_total_gib", "sm_clock_mhz", "throttle_reasons")  # not from the serving model
    served = [name for name in (*perf_cols, *res_cols) if name not in derived]
    out = _serve(fleet, n_idx, _instance_load(fleet, ts_s, t_idx, n_idx, keys), served)
    jitter = np.maximum(1.0 + LATENCY_NOISE * _normal(keys, ts_rows, 1), 0.5)
    for name in _LATENCIES:
        out[name] = out[name] * jitter
    out["gpu_util_pct"] = np.clip(out["gpu_util_pct"] + 2.0 * _normal(keys, ts_rows, 2), 0.0, 100.0)
    out["power_w"] = np.maximum(out["power_w"] * (1.0 + 0.02 * _normal(keys, ts_rows, 3)), 0.0)
    out["sm_clock_mhz"], out["throttle_reasons"] = _clocks(fleet, n_idx, out["power_w"])
    mem_total = np.array([itype.gpu_memory_gib_total for _, itype, _ in fleet.groups])
    out["gpu_mem_total_gib"] = mem_total[fleet.group_idx[n_idx]]
    perf = _frame(Domain.PERFORMANCE, fleet, ts_rows, n_idx, {c: out[c] for c in perf_cols})
    res = _frame(Domain.RESOURCE, fleet, ts_rows, n_idx, {c: out[c] for c in res_cols})
    gpu = _per_gpu(fleet, ts_rows, n_idx, out)
    return {Domain.PERFORMANCE: perf, Domain.RESOURCE: res, Domain.GPU: gpu}


GPU_STEP_S = 10  # per-GPU rows on the multiples of 10 s the per-instance grid has (SCHEMAS[Domain.GPU])


def _gpu_counts(fleet: _Fleet, n: np.ndarray) -> np.ndarray:
    """The GPUs of each instance ``n`` (of its slice, for a slice of a shared host)."""
    return np.array([itype.gpu_count for _, itype, _ in fleet.groups], dtype=np.int64)[fleet.group_idx[n]]


def throttled_gpu(fleet: _Fleet, n: np.ndarray) -> np.ndarray:
    """Which GPU of each instance ``n`` a power cap holds back: one per instance, fixed by its noise key
    (in a real tensor-parallel group the first GPU to reach its limit caps, and the others wait for it)."""
    gpus = _gpu_counts(fleet, n)
    return (fleet.noise_keys[n] % gpus.astype(np.uint64)).astype(np.int64)


def _per_gpu(
    fleet: _Fleet, ts_rows: np.ndarray, n_idx: np.ndarray, out: dict[str, np.ndarray]
) -> pl.DataFrame:
    """One row per GPU of each per-instance row on the GPU_STEP_S grid, from the instance's figures: the GPUs
    of a tensor-parallel group equally loaded (utilization, memory and power split evenly), and a throttled
    instance's throttling on ONE GPU (throttled_gpu) at the instance's clock, its siblings at full boost, so
    that the instance's slowest clock and OR-ed reasons are what an NVML host would report."""
    rows = np.flatnonzero(ts_rows % GPU_STEP_S == 0)
    n = n_idx[rows]
    gpus = _gpu_counts(fleet, n)
    rep = np.repeat(rows, gpus)  # the per-instance row of each GPU row
    starts = np.repeat(np.cumsum(gpus) - gpus, gpus)
    index = np.arange(rep.size) - starts  # each GPU's index on its instance
    n_rep = n_idx[rep]
    held = index == np.repeat(throttled_gpu(fleet, n), gpus)
    per = np.repeat(gpus, gpus).astype(np.float64)
    boost = _group_boost_mhz(fleet)[fleet.group_idx[n_rep]] if rep.size else np.empty(0)
    uuid_prefix = pl.Series([f"GPU-{i.id.removeprefix('i-')}-" for i in fleet.instances], dtype=pl.String)
    label = pl.Series(index, dtype=pl.Int64).cast(pl.String)
    values = {
        "gpu_index": label,
        "gpu_uuid": uuid_prefix.gather(pl.Series(n_rep, dtype=pl.UInt32)) + label,
        "gpu_util_pct": out["gpu_util_pct"][rep],
        "gpu_mem_used_gib": out["gpu_mem_used_gib"][rep] / per,
        "gpu_mem_total_gib": out["gpu_mem_total_gib"][rep] / per,
        "power_w": out["power_w"][rep] / per,
        "sm_clock_mhz": np.where(held, out["sm_clock_mhz"][rep], boost),
        "throttle_reasons": np.where(held, out["throttle_reasons"][rep], 0.0),
    }
    return _frame(Domain.GPU, fleet, ts_rows[rep], n_rep, values)


def _cost(fleet: _Fleet, start: datetime, end: datetime) -> pl.DataFrame:
    ts_s = _grid(start, end, 60)
    t_idx, n_idx = fleet.running(ts_s)
    prices = np.array([instance_type(i.instance_type).price_usd_hour(i.lifecycle) for i in fleet.instances])
    lifecycles = pl.Series([str(i.lifecycle) for i in fleet.instances], dtype=pl.String)
    itypes = pl.Series([i.instance_type for i in fleet.instances], dtype=pl.String)
    gather = pl.Series(n_idx, dtype=pl.UInt32)
    price = prices[n_idx] if n_idx.size else np.empty(0)
    price = _host_shares(fleet, t_idx, n_idx, price)
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


def _host_shares(fleet: _Fleet, t_idx: np.ndarray, n_idx: np.ndarray, price: np.ndarray) -> np.ndarray:
    """Each row's price with a slice charged its host's price x its GPUs / the GPUs the host's running slices
    hold at that minute: a host's unused GPUs are paid by its tenants in proportion, so the rows of one minute
    add up to every running host's and whole instance's price (the fleet's bill). Shares are over the
    instances given: generate them with every slice of a host (as collection does)."""
    host_rows = fleet.host_idx[n_idx]
    sliced = host_rows >= 0
    if not sliced.any():
        return price
    price = price.copy()
    gpus = fleet.slice_gpus[n_idx[sliced]]
    _, cell = np.unique(
        t_idx[sliced] * (int(fleet.host_idx.max()) + 1) + host_rows[sliced], return_inverse=True
    )
    held = np.bincount(cell, weights=gpus)
    price[sliced] *= gpus / held[cell]
    return price


# What each customer's deployments serve, so their sampled requests are text of that kind.
REQUEST_KINDS: dict[str, RequestKind] = {
    "acme": RequestKind.CHAT,
    "globex": RequestKind.RAG,
    "initech": RequestKind.CODE,
    "umbrella": RequestKind.SUMMARIZATION,
    "vandelay": RequestKind.RAG,
}


def initial_faults(now: datetime) -> list[Fault]:
    """The quality faults of INITIAL_QUALITY_FAULTS, starting ``now`` (the history before is healthy)."""
    return [
        Fault(
            deployment_id=deployment_id,
            kind=FaultKind.QUALITY_DEGRADATION,
            params={"mode": mode, "drop_pct": drop_pct, "scope": scope},
            created_at=_utc(now),
        )
        for deployment_id, mode, drop_pct, scope in INITIAL_QUALITY_FAULTS
    ]


_KINDS = tuple(RequestKind)


def _fault_mode(fault: Fault) -> DegradationMode:
    """How a quality fault shows in the text: ``params["mode"]``, a broken model version by default."""
    return DegradationMode(fault.params.get("mode", DegradationMode.HALLUCINATION))


@dataclass(frozen=True)
class _Draws:
    """Which request each sampled (ts, instance) row is, and how it was answered."""

    t_idx: np.ndarray
    n_idx: np.ndarray
    kind_idx: np.ndarray  # index into _KINDS
    item: np.ndarray  # corpus item
    mode_idx: np.ndarray  # index into DegradationMode (0: clean)


def _draws(fleet: _Fleet, faults: Sequence[Fault], ts_s: np.ndarray) -> _Draws:
    """Each row's request and answer mode: an active quality fault answers the share of its scope's
    requests (request_text.degraded_share) that makes mean quality drop by its ``drop_pct``."""
    t_idx, n_idx = fleet.running(ts_s)
    ts_rows, keys = ts_s[t_idx], fleet.quality_keys[n_idx]
    kinds = np.array(
        [_KINDS.index(REQUEST_KINDS.get(c, RequestKind.CHAT)) for c in fleet.customer_ids], dtype=np.int64
    )
    kind_idx = kinds[n_idx] if n_idx.size else np.zeros(0, dtype=np.int64)
    item = np.floor(_uniform(keys, ts_rows, 40) * ITEMS_PER_KIND).astype(np.int64)
    degrade_u = _uniform(keys, ts_rows, 41)
    mode_idx = np.zeros(ts_rows.size, dtype=np.int64)
    for fault in faults:
        if not fault.active or fault.kind != FaultKind.QUALITY_DEGRADATION:
            continue
        scope, mode = fault.params.get("scope", "all"), _fault_mode(fault)
        hit = np.array(
            [
                d.id == fault.deployment_id and (scope != "spot" or i.lifecycle == Lifecycle.SPOT)
                for i, d in zip(fleet.instances, fleet.deployments, strict=True)
            ],
            dtype=bool,
        )
        drop_pct = float(fault.params.get("drop_pct", 10))
        share = np.array([degraded_share(k, mode, drop_pct) for k in _KINDS])[kind_idx]
        since = ts_rows * 1000 >= _epoch_ms(fault.created_at)
        mode_idx = np.where(
            hit[n_idx] & since & (degrade_u < share) & (mode_idx == 0), MODE_INDEX[mode], mode_idx
        )
    return _Draws(t_idx, n_idx, kind_idx, item, mode_idx)


def _request_ids(fleet: _Fleet, ts_rows: np.ndarray, n_idx: np.ndarray) -> pl.Series:
    ids = pl.Series([i.id for i in fleet.instances], dtype=pl.String).gather(
        pl.Series(n_idx, dtype=pl.UInt32)
    )
    return (
        pl.DataFrame({"i": ids, "t": pl.Series(ts_rows, dtype=pl.Int64)})
        .select(pl.format("q-{}-{}", "i", "t"))
        .to_series()
    )


def _quality(fleet: _Fleet, faults: Sequence[Fault], ts_s: np.ndarray) -> pl.DataFrame:
    """Scores of each sampled request's text (request_text.score_table: the offline scorer's verdict),
    the quality times the answer's usefulness (which no scorer reads from the text: a noise around
    QUALITY_MEAN) and the serving model's quality factor of the instance's engine."""
    d = _draws(fleet, faults, ts_s)
    ts_rows, keys = ts_s[d.t_idx], fleet.quality_keys[d.n_idx]
    quality_text, hallucination, toxicity = (np.empty(ts_rows.size) for _ in range(3))
    for k, kind in enumerate(_KINDS):
        rows = d.kind_idx == k
        if rows.any():
            table = score_table(kind)
            at = (d.mode_idx[rows], d.item[rows])
            quality_text[rows] = table.quality[at]
            hallucination[rows] = table.hallucination[at]
            toxicity[rows] = table.toxicity[at]
    usefulness = QUALITY_MEAN + QUALITY_SD * _normal(keys, ts_rows, 0)
    engine_factor = np.array([factor for _, _, factor in fleet.groups])[fleet.group_idx[d.n_idx]]
    return _frame(
        Domain.QUALITY,
        fleet,
        ts_rows,
        d.n_idx,
        {
            "request_id": _request_ids(fleet, ts_rows, d.n_idx),
            "quality_score": np.clip(usefulness * quality_text * engine_factor, 0.0, 1.0),
            "hallucination_score": np.clip(hallucination, 0.0, 1.0),
            "toxicity_score": np.clip(toxicity, 0.0, 1.0),
        },
    )


REQUEST_TEXT_COLUMNS = ("prompt", "context", "response")


def request_samples(
    customers: Sequence[Customer],
    deployments: Sequence[Deployment],
    instances: Sequence[Instance],
    faults: Sequence[Fault],
    start: datetime,
    end: datetime,
    *,
    seed: int,
    quality_sample_s: int = 10,
) -> pl.DataFrame:
    """The text of the requests :func:`generate` scores in [start, end): the quality frame's keys and
    request_id with each request's prompt, context and response."""
    fleet = _Fleet(customers, deployments, instances, seed)
    text_schema = {n: SCHEMAS[Domain.QUALITY].polars_schema[n] for n in (*KEY_NAMES, "request_id")}
    text_schema |= dict.fromkeys(REQUEST_TEXT_COLUMNS, pl.String())
    if not len(fleet) or _epoch_ms(end) <= _epoch_ms(start):
        return pl.DataFrame(schema=text_schema)
    ts_s = _grid(start, end, quality_sample_s)
    d = _draws(fleet, faults, ts_s)
    modes = tuple(DegradationMode)
    texts = [
        render(_KINDS[k], item, modes[m])
        for k, item, m in zip(d.kind_idx.tolist(), d.item.tolist(), d.mode_idx.tolist(), strict=True)
    ]
    keys = _quality(fleet, faults, ts_s).select(*KEY_NAMES, "request_id")  # the same rows, same order
    return keys.with_columns(
        pl.Series(name, [getattr(t, name) for t in texts], dtype=pl.String) for name in REQUEST_TEXT_COLUMNS
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
    fleet = _Fleet(customers, deployments, instances, seed)
    if not len(fleet) or _epoch_ms(end) <= _epoch_ms(start):
        return {d: _empty(d) for d in Domain}
    frames = _per_second(fleet, _grid(start, end, step_s))
    frames[Domain.COST] = _cost(fleet, start, end)
    frames[Domain.QUALITY] = _quality(fleet, faults, _grid(start, end, quality_sample_s))
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


def observe_samples(
    customers: Sequence[Customer],
    deployments: Sequence[Deployment],
    instances: Sequence[Instance],
    faults: Sequence[Fault],
    deployment_id: str,
    at: datetime,
    seconds: int,
    canary: Collection[tuple[str, Lifecycle, EngineConfig]],
    *,
    seed: int,
) -> dict[str, list[float]]:
    """Per-request samples of the next ``seconds`` split into canary (instances in a ``canary`` pool:
    instance type, lifecycle, engine) and control (the others), for the A/B test between stages:
    ``quality_canary``, ``quality_control`` (each judged request) and ``latency_canary``,
    ``latency_control`` (each instance's per-second p95)."""
    mine = [i for i in instances if i.deployment_id == deployment_id]
    end = _utc(at) + timedelta(seconds=seconds)
    frames = generate(customers, deployments, mine, faults, at, end, seed=seed, step_s=1, quality_sample_s=1)
    in_canary = [i.id for i in mine if (i.instance_type, i.lifecycle, i.engine) in canary]
    out: dict[str, list[float]] = {}
    for name, domain, column in (
        ("quality", Domain.QUALITY, "quality_score"),
        ("latency", Domain.PERFORMANCE, "latency_p95_ms"),
    ):
        frame = frames[domain].with_columns(pl.col("instance_id").is_in(in_canary).alias("__canary"))
        out[f"{name}_canary"] = frame.filter(pl.col("__canary"))[column].to_list()
        out[f"{name}_control"] = frame.filter(~pl.col("__canary"))[column].to_list()
    return out
