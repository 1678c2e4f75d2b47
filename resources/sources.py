"""Where raw metrics come from: the sandbox fleet, vLLM/TGI Prometheus endpoints, or NVML.

Every source answers `collect(fleet, start, end)` with frames in the metric SCHEMAS and a status line; a
source that cannot reach its metrics says so in the status and returns what it has, never a traceback.
A source reading a real server may not get every measure: it leaves those null ("not reported") rather
than writing a number nobody measured, and says so with ``may_omit_measures``.

Instances a source reads that the fleet does not manage (a user pointing OptiInfra at their own server)
are reported under customer ``unmanaged`` and deployment ``unmanaged:<instance_id>`` (see
:func:`owner_of`); collection records them as observed instances and stores their rows.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import socket
import statistics
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import InstanceState
from optiinfra_assets.request_log import RequestLogReader
from optiinfra_assets.sandbox import generate, request_samples
from optiinfra_assets.snapshot import FleetSnapshot
from resources.errors import mask_secrets, mask_url

Measures = dict[str, float | None]  # measure -> value, None when the server did not report it


@dataclass
class SourceBatch:
    frames: dict[Domain, pl.DataFrame]
    status: str  # 'ok', or what went wrong and what was not reported, e.g. 'NVML unavailable: ...'
    # Sampled requests as text (optiinfra_assets.request_samples): ingested as the quality domain's rows,
    # their text stored beside them. None: the source has no request text.
    requests: pl.DataFrame | None = None


class MetricSource(Protocol):
    name: str
    # True: collect() can produce any past window (the sandbox replays its history). False: it reads
    # the present (a scrape, an NVML read), so each collection is one window ending now.
    replays_history: bool
    # True: a measure the server did not report is null in its row, for ingestion to keep as "not
    # reported"; False: every measure is always produced, and a null is a defect to quarantine.
    may_omit_measures: bool

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch: ...


class SourceState(Protocol):
    """Where a source keeps what it needs from one collection to the next (the state store), so that it
    survives the process: every Dagster run, and every `optiinfra collect`, is a new one."""

    def get_source_state(self, key: str) -> dict[str, Any] | None: ...

    def put_source_state(self, key: str, body: dict[str, Any]) -> None: ...


# The convention for instances the fleet does not manage: one customer for all of them, one deployment
# per instance (nothing says which of them serve together). Analysis only proposes changes for the
# fleet's deployments, so these rows are observed, never acted on, until a person adopts the instance.
UNMANAGED_CUSTOMER = "unmanaged"


def unmanaged_owner(instance_id: str) -> tuple[str, str]:
    return UNMANAGED_CUSTOMER, f"{UNMANAGED_CUSTOMER}:{instance_id}"


def owner_of(owners: Mapping[str, tuple[str, str]], instance_id: str) -> tuple[str, str]:
    """(customer_id, deployment_id) of an instance: the fleet's, else the unmanaged convention."""
    return owners.get(instance_id) or unmanaged_owner(instance_id)


def empty_frames() -> dict[Domain, pl.DataFrame]:
    return {d: pl.DataFrame(schema=SCHEMAS[d].polars_schema) for d in Domain}


def _rows_frame(domain: Domain, rows: list[dict]) -> pl.DataFrame:
    schema = SCHEMAS[domain]
    if not rows:
        return pl.DataFrame(schema=schema.polars_schema)
    # Every measure column present, null where a row did not report it.
    return pl.DataFrame(
        [{name: row.get(name) for name in schema.columns} for row in rows], schema=schema.polars_schema
    )


def _ts(epoch_s: float) -> datetime:
    """Wall-clock seconds as the millisecond UTC timestamp every metric row carries."""
    return datetime.fromtimestamp(round(epoch_s, 3), UTC)


def _status(problems: list[str]) -> str:
    return "; ".join(problems) or "ok"


def _row_keys(owners: Mapping[str, tuple[str, str]], instance_id: str, epoch_s: float) -> dict[str, Any]:
    customer_id, deployment_id = owner_of(owners, instance_id)
    return {
        "ts": _ts(epoch_s),
        "customer_id": customer_id,
        "deployment_id": deployment_id,
        "instance_id": instance_id,
    }


# ---------------------------------------------------------------------------------------------- sandbox


class SandboxSource:
    """The deterministic sandbox fleet (optiinfra_assets.sandbox.generate)."""

    name = "sandbox"
    replays_history = True
    may_omit_measures = False

    def __init__(self, seed: int, step_s: int = 1) -> None:
        self.seed = seed
        self.step_s = step_s

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        frames = generate(
            fleet.customers,
            fleet.deployments,
            fleet.instances,
            fleet.faults,
            start,
            end,
            seed=self.seed,
            step_s=self.step_s,
        )
        if self.step_s != 1:  # a backfill keeps the scores of its sampled requests, not their text
            return SourceBatch(frames, "ok")
        # Live: the sampled requests come as text, and their scores are the quality domain's rows.
        requests = request_samples(
            fleet.customers, fleet.deployments, fleet.instances, fleet.faults, start, end, seed=self.seed
        )
        frames[Domain.QUALITY] = frames[Domain.QUALITY].clear()
        return SourceBatch(frames, "ok", requests=requests)


# ------------------------------------------------------------------------------------------- Prometheus

Labels = tuple[tuple[str, str], ...]
Samples = dict[
    str, dict[Labels, float]
]  # sample name (with its _bucket/_sum/_count/_total) -> labels -> value
Match = Mapping[str, Collection[str]]  # label -> the values a series may have to be counted

QUANTILES = (0.5, 0.95, 0.99)
# vLLM's finished_reason values that mean a request was served: "abort" (the client left, or the engine
# gave up) is not a success, whatever the counter's name says.
COMPLETED = {"finished_reason": ("stop", "length")}


def parse_exposition(text: str) -> Samples:
    """The Prometheus text format through prometheus_client's parser.

    The parser names a sample of a counter declared without ``_total`` (TGI's metrics-rs exporter) with
    it, so a typed counter is always ``<name>_total``; an untyped one keeps the name it was written with.
    """
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = float(sample.value)
    return dict(samples)


def _matches(labels: Labels, match: Match) -> bool:
    # A series without the label is counted: an engine version that does not split by it counts it all.
    found = dict(labels)
    return all(found.get(key) is None or found[key] in allowed for key, allowed in match.items())


def _sum(samples: Samples, name: str, match: Match | None = None) -> float | None:
    """Sum over the series of ``name`` (those passing ``match``); None if the server does not export it."""
    if name not in samples:
        return None
    return sum(v for labels, v in samples[name].items() if _matches(labels, match or {}))


def _first(samples: Samples, *names: str) -> str | None:
    """The first of ``names`` the server exports (engines rename metrics across versions)."""
    return next((n for n in names if n in samples), None)


def _gauge_values(samples: Samples, *names: str) -> list[float]:
    # A NaN gauge is an exporter's "no value yet": not reported, rather than a number to carry on.
    name = _first(samples, *names)
    return [v for v in samples[name].values() if not math.isnan(v)] if name else []


def _gauge_total(samples: Samples, *names: str) -> float | None:
    """A count (waiting requests, ...) over every series: data-parallel engines each hold their own."""
    values = _gauge_values(samples, *names)
    return sum(values) if values else None


def _gauge_mean(samples: Samples, *names: str) -> float | None:
    """A fraction (KV-cache usage, ...) over every series: summing two engines' 0.6 would say 1.2. The
    engines of one server are configured alike (same model, same memory share), so the plain mean of
    their fractions is the fraction of their pooled capacity."""
    values = _gauge_values(samples, *names)
    return statistics.fmean(values) if values else None


def _delta(now: float, before: float) -> float:
    # A counter that went down was reset by a restart: everything since then is new.
    return now - before if now >= before else now


def increase(now: Samples, before: Samples) -> Samples:
    """How much each counter and histogram series grew between two scrapes, series by series (so that one
    engine restarting does not hide another's growth). A series new since ``before`` counts whole."""
    return {
        name: {labels: _delta(v, before.get(name, {}).get(labels, 0.0)) for labels, v in series.items()}
        for name, series in now.items()
    }


def histogram_quantile(q: float, cumulative: Mapping[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts: linear within the bucket; NaN when
    the histogram holds no observation, as in Prometheus."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return math.nan
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = cumulative[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # the quantile lies past the last finite bound: report that bound
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or math.isnan(seconds) else 1e3 * seconds


def _mean(inc: Samples, name: str, match: Match | None = None) -> float | None:
    """Mean observation of histogram ``name`` between two scrapes; None when nothing was observed."""
    total, count = _sum(inc, name + "_sum", match), _sum(inc, name + "_count", match)
    return total / count if total is not None and count else None


def _quantiles_ms(inc: Samples, name: str) -> list[float | None]:
    cumulative: dict[float, float] = defaultdict(float)
    for labels, value in inc.get(name + "_bucket", {}).items():
        cumulative[float(dict(labels)["le"])] += value
    return [_ms(histogram_quantile(q, cumulative)) for q in QUANTILES]


def _rate(inc: Samples, dt: float, *names: str, match: Match | None = None) -> float | None:
    name = _first(inc, *names)
    total = _sum(inc, name, match) if name else None
    return total / dt if total is not None else None


def _latencies(ttft_s: float | None, itl_s: float | None, e2e: list[float | None]) -> Measures:
    p50, p95, p99 = e2e
    return {
        "ttft_ms": _ms(ttft_s),
        "itl_ms": _ms(itl_s),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
    }


# vLLM: V1 names first, then the V0 (and early V1) names they replaced.
VLLM_ITL = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")


def vllm_performance(now: Samples, inc: Samples, dt: float) -> Measures:
    """One performance row from a vLLM scrape (gauges) and its counters' increase over ``dt`` seconds."""
    itl = _first(inc, *(name + "_count" for name in VLLM_ITL))
    return {
        "requests_per_s": _rate(inc, dt, "vllm:request_success_total", match=COMPLETED),
        **_latencies(
            _mean(inc, "vllm:time_to_first_token_seconds"),
            # Each observation is one token's interval, so the mean is per token.
            _mean(inc, itl.removesuffix("_count")) if itl else None,
            _quantiles_ms(inc, "vllm:e2e_request_latency_seconds"),
        ),
        "tokens_per_s": _rate(inc, dt, "vllm:generation_tokens_total"),
        "queue_length": _gauge_total(now, "vllm:num_requests_waiting"),
        "kv_cache_usage": _gauge_mean(now, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        # A counter (V0 and V1 alike): sequences the scheduler evicted for want of KV blocks, per second.
        "preemptions_per_s": _rate(inc, dt, "vllm:num_preemptions_total"),
    }


def tgi_performance(now: Samples, inc: Samples, dt: float) -> Measures:
    """The same row from TGI's router metrics, which have no TTFT histogram and no KV-cache gauge."""
    # TTFT is not exported: time queued plus the mean prefill forward pass is what a first token waits for.
    queue = _mean(inc, "tgi_request_queue_duration")
    prefill = _mean(inc, "tgi_batch_forward_duration", {"method": ("prefill",)})
    generated = _sum(inc, "tgi_request_generated_tokens_sum")
    inference = _sum(inc, "tgi_request_inference_duration_sum")
    return {
        "requests_per_s": _rate(inc, dt, "tgi_request_success_total", "tgi_request_success"),
        **_latencies(
            queue + prefill if queue is not None and prefill is not None else None,
            # tgi_request_mean_time_per_token_duration is one mean per request: averaging it weighs a
            # 5-token answer like a 2000-token one. Per token is inference time over tokens generated
            # (each request's mean is its inference time over its tokens).
            inference / generated if inference is not None and generated else None,
            _quantiles_ms(inc, "tgi_request_duration"),
        ),
        "tokens_per_s": generated / dt if generated is not None else None,
        "queue_length": _gauge_total(now, "tgi_queue_size"),
        # TGI exports no KV-cache usage: tgi_batch_current_max_tokens is the batch's token budget (what
        # it reserved, not what its cache holds), and the limit it would be a share of is only in /info.
        "kv_cache_usage": None,
        "preemptions_per_s": None,  # TGI exports no preemption count
    }


@dataclass(frozen=True)
class Engine:
    """A serving engine whose /metrics the scraper reads: how to recognize it, which counters and
    histograms its rates need from the previous scrape, and how a row is computed."""

    name: str
    prefix: str
    rate_families: tuple[str, ...]
    performance: Callable[[Samples, Samples, float], Measures]

    def rate_samples(self, samples: Samples) -> Samples:
        """Only what the next scrape's rates need, so that the kept state stays small."""
        wanted = {f + s for f in self.rate_families for s in ("", "_total", "_bucket", "_sum", "_count")}
        return {name: series for name, series in samples.items() if name in wanted}


# vLLM first: a vLLM server may also export TGI-compatible names, and reading it as TGI drops its own.
ENGINES = (
    Engine(
        "vllm",
        "vllm:",
        (
            "vllm:request_success",
            "vllm:generation_tokens",
            "vllm:time_to_first_token_seconds",
            *VLLM_ITL,
            "vllm:e2e_request_latency_seconds",
            "vllm:num_preemptions",
        ),
        vllm_performance,
    ),
    Engine(
        "tgi",
        "tgi_",
        (
            "tgi_request_success",
            "tgi_request_duration",
            "tgi_request_queue_duration",
            "tgi_batch_forward_duration",
            "tgi_request_inference_duration",
            "tgi_request_generated_tokens",
        ),
        tgi_performance,
    ),
)


def detect_engine(samples: Samples) -> Engine | None:
    return next((e for e in ENGINES if any(n.startswith(e.prefix) for n in samples)), None)


@dataclass(frozen=True)
class Scrape:
    """What is kept of one scrape for the next: when (wall clock, so that another process can compute
    the interval), from where, of which engine, and the samples its rates need."""

    url: str
    engine: str
    at: float  # seconds since the epoch
    samples: Samples

    def to_json(self) -> dict[str, Any]:
        # JSON has no NaN or infinity (and PostgreSQL refuses them): a counter is never one anyway.
        samples = {
            name: [[dict(labels), v] for labels, v in series.items() if math.isfinite(v)]
            for name, series in self.samples.items()
        }
        return {"url": self.url, "engine": self.engine, "at": self.at, "samples": samples}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Scrape:
        samples = {
            name: {tuple(sorted(labels.items())): float(v) for labels, v in series}
            for name, series in body["samples"].items()
        }
        return cls(str(body["url"]), str(body["engine"]), float(body["at"]), samples)


class PrometheusSource:
    """Scrapes vLLM or TGI /metrics; from the second scrape of a target on, one performance row each.

    Rates need the previous scrape, which is kept in the state store under ``prometheus:<instance_id>``:
    two collections in two processes (two Dagster runs, two `optiinfra collect`) rate against each other.
    """

    name = "prometheus"
    replays_history = False
    may_omit_measures = True

    def __init__(
        self,
        targets: Mapping[str, str],
        state: SourceState,
        *,
        timeout_s: float = 5.0,
        max_interval_s: float = 900.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.targets = dict(targets)  # instance_id -> http://host:port/metrics
        self.state = state
        self.timeout_s = timeout_s
        # A previous scrape older than this is not rated against: the row would be an average over hours
        # (OptiInfra was stopped) stamped as now.
        self.max_interval_s = max_interval_s
        self.clock = clock

    def _scrape(self, url: str) -> tuple[float, Samples]:
        with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
        return self.clock(), parse_exposition(text)

    def _previous(self, key: str, url: str, engine: Engine) -> Scrape | None:
        body = self.state.get_source_state(key)
        try:
            before = Scrape.from_json(body) if body else None
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # kept by an older version in another shape: start over
        # Counters of another server (the target moved) or engine are no base for a rate.
        return before if before and (before.url, before.engine) == (url, engine.name) else None

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        rows, problems = [], []
        owners = fleet.owners()
        for instance_id, url in sorted(self.targets.items()):
            try:
                at, samples = self._scrape(url)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                problems.append(
                    f"{instance_id} at {mask_url(url)} did not answer: {getattr(exc, 'reason', exc)}"
                )
                continue
            engine = detect_engine(samples)
            if engine is None:
                problems.append(f"{instance_id} at {mask_url(url)}: no vLLM (vllm:*) or TGI (tgi_*) metrics")
                continue
            key = f"prometheus:{instance_id}"
            before = self._previous(key, url, engine)
            kept = Scrape(url, engine.name, at, engine.rate_samples(samples))
            self.state.put_source_state(key, kept.to_json())
            dt = at - before.at if before else 0.0
            if before is None or not 0 < dt <= self.max_interval_s:
                problems.append(f"{instance_id}: scrape kept; its rates start with the next collection")
                continue
            measures = engine.performance(samples, increase(kept.samples, before.samples), dt)
            rows.append({**_row_keys(owners, instance_id, at), **measures})
        frames = empty_frames()
        frames[Domain.PERFORMANCE] = _rows_frame(Domain.PERFORMANCE, rows)
        return SourceBatch(frames, _status(problems))


def parse_targets(spec: str) -> dict[str, str]:
    """OPTIINFRA_PROMETHEUS_TARGETS ('i-1=http://h:8000/metrics,i-2=...') into instance_id -> URL."""
    targets = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        instance_id, sep, url = item.partition("=")
        if not sep or not url.strip():
            raise ValueError(
                f"OPTIINFRA_PROMETHEUS_TARGETS: bad target {mask_secrets(item)!r}: "
                "expected instance_id=http://host:port/metrics"
            )
        targets[instance_id.strip()] = url.strip()
    return targets


# ------------------------------------------------------------------------------------------------- NVML

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    """A GPU as NVML shows it: a whole GPU, or one MIG device of a GPU in MIG mode."""

    handle: Any
    index: int  # NVML index of the physical GPU (PCI order); a MIG device's is its parent's
    uuid: str  # GPU-... or MIG-...
    gpu_uuid: str  # the physical GPU's UUID (its own, for a whole GPU)
    mig_slot: int | None = None  # a MIG device's slot on its GPU; None for a whole GPU

    @property
    def label(self) -> str:
        """The gpu_index of its per-GPU rows: "3", or "3/1" for MIG device 1 of GPU 3."""
        return str(self.index) if self.mig_slot is None else f"{self.index}/{self.mig_slot}"


@dataclass(frozen=True)
class GpuInstances:
    """OPTIINFRA_NVML_INSTANCE_ID: which fleet instance each GPU belongs to.

    ``i-abc`` puts every GPU on one instance; ``0=i-abc,1=i-def`` (NVML index), ``GPU-<uuid>=i-abc`` or
    ``MIG-<uuid>=i-abc`` map GPUs one by one, and a bare id among them is the instance of the rest.
    Empty: the hostname. A GPU that maps to no instance is left out, and the status names it.
    """

    default: str | None
    by_gpu: dict[str, str] = field(default_factory=dict)  # index, GPU- or MIG- UUID -> instance id

    @classmethod
    def parse(cls, spec: str, hostname: str) -> GpuInstances:
        bare: list[str] = []
        by_gpu: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = (p.strip() for p in item.partition("="))
            if not sep:
                bare.append(item)
            elif key and value:
                by_gpu[key] = value
            else:
                raise ValueError(f"OPTIINFRA_NVML_INSTANCE_ID: bad entry {item!r}: expected GPU=instance")
        if len(bare) > 1:
            raise ValueError(
                f"OPTIINFRA_NVML_INSTANCE_ID: {spec!r} names {len(bare)} instances for all GPUs; "
                "expected one, or GPU=instance pairs (0=i-abc,GPU-<uuid>=i-def)"
            )
        return cls(bare[0] if bare else (None if by_gpu else hostname), by_gpu)

    def instance_of(self, gpu: Gpu) -> str | None:
        for key in (gpu.uuid, gpu.gpu_uuid, str(gpu.index)):
            if key in self.by_gpu:
                return self.by_gpu[key]
        return self.default


def visible_gpus(gpus: list[Gpu], cuda_visible_devices: str | None) -> list[Gpu]:
    """The GPUs CUDA_VISIBLE_DEVICES lets processes here use, read as CUDA reads it: unset, all of them;
    else the listed ones by index, GPU-<uuid> or MIG-<uuid> (a unique prefix is enough), up to the first
    entry that names none. A whole GPU listed brings its MIG devices. Indices are NVML's, in PCI order:
    CUDA numbers devices fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, so set it where they differ."""
    if cuda_visible_devices is None:
        return gpus
    shown: list[Gpu] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit():
            named = [g for g in gpus if g.index == int(entry)]
        elif entry.startswith("MIG-"):
            named = [g for g in gpus if g.uuid.startswith(entry)]
        elif entry.startswith("GPU-"):
            named = [g for g in gpus if g.gpu_uuid.startswith(entry)]
        else:
            named = []
        if not named:
            break
        shown += [g for g in named if g not in shown]
    return shown


def _cuda_visible_note() -> str:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "" if value is None else f" (CUDA_VISIBLE_DEVICES={value!r})"


def _fields(pynvml: Any) -> dict[str, Callable[[Any], float]]:
    """How each resource measure is read from one GPU handle."""
    return {
        "gpu_util_pct": lambda h: float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
        "gpu_mem_used_gib": lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).used / GIB,
        "gpu_mem_total_gib": lambda h: pynvml.nvmlDeviceGetMemoryInfo(h).total / GIB,
        "power_w": lambda h: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,  # milliwatts
        "sm_clock_mhz": lambda h: float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
        # The bitmask of nvmlClocksEventReason* bits (ThrottleReason); 0 when running at the asked clock.
        "throttle_reasons": lambda h: float(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)),
    }


_MEASURES = tuple(m.name for m in SCHEMAS[Domain.RESOURCE].measures)  # what _fields reads, per GPU


def _combine(measure: str, values: list[float | None]) -> float | None:
    """One instance's measure over its GPUs: utilization averaged, amounts (memory, power) summed, the SM
    clock the slowest GPU's (it holds back a tensor-parallel step), throttle reasons OR-ed."""
    reported = [v for v in values if v is not None]
    if measure == "gpu_util_pct":
        return statistics.fmean(reported) if reported else None
    if measure == "sm_clock_mhz":
        return min(reported) if reported else None
    if measure == "throttle_reasons":
        return float(functools.reduce(operator.or_, (int(v) for v in reported), 0)) if reported else None
    # A sum over some of the GPUs would understate the instance: not reported unless all of them are.
    return sum(reported) if reported and len(reported) == len(values) else None


class NvmlSource:
    """This machine's NVIDIA GPUs through NVML: one resource row per fleet instance they belong to, and one
    gpu row per GPU (a MIG device its own) with that GPU's own figures.

    Each measure of each GPU is read on its own, so that one a GPU does not support (power on many
    boards, utilization on MIG devices) is "not reported" for that GPU rather than the end of the read.
    """

    name = "nvml"
    replays_history = False
    may_omit_measures = True

    def __init__(self, instances: str = "", *, hostname: str | None = None) -> None:
        self.instances = GpuInstances.parse(instances, hostname or socket.gethostname())

    @staticmethod
    def _gpus(pynvml: Any, problems: list[str]) -> list[Gpu]:
        gpus: list[Gpu] = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
            except pynvml.NVMLError as exc:  # e.g. GpuIsLost: the others still count
                problems.append(f"GPU {index}: {exc}")
                continue
            gpus += NvmlSource._mig_devices(pynvml, handle, index, uuid) or [Gpu(handle, index, uuid, uuid)]
        return gpus

    @staticmethod
    def _mig_devices(pynvml: Any, handle: Any, index: int, uuid: str) -> list[Gpu]:
        """The MIG devices of a GPU in MIG mode, each with its own memory; [] when MIG is off, not
        supported, or no instance is configured (then the GPU reads as a whole)."""
        try:
            current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
            if current != pynvml.NVML_DEVICE_MIG_ENABLE:
                return []
            slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
        except pynvml.NVMLError:  # NotSupported: a GPU without MIG
            return []
        devices = []
        for slot in range(slots):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                devices.append(Gpu(mig, index, pynvml.nvmlDeviceGetUUID(mig), uuid, slot))
            except pynvml.NVMLError:  # NotFound: an empty slot
                continue
        return devices

    def _read(self, problems: list[str]) -> dict[str, list[tuple[Gpu, Measures]]]:
        """Each instance's GPUs with their own readings."""
        import pynvml  # nvidia-ml-py; imported here so that machines without it still load this module

        pynvml.nvmlInit()
        try:
            gpus = visible_gpus(self._gpus(pynvml, problems), os.environ.get("CUDA_VISIBLE_DEVICES"))
            if not gpus:
                raise RuntimeError("no GPU found" + _cuda_visible_note())
            fields = _fields(pynvml)
            per_instance: dict[str, list[tuple[Gpu, Measures]]] = defaultdict(list)
            for gpu in gpus:
                instance_id = self.instances.instance_of(gpu)
                if instance_id is None:
                    problems.append(f"{gpu.uuid} (GPU {gpu.index}) maps to no OPTIINFRA_NVML_INSTANCE_ID")
                    continue
                per_instance[instance_id].append((gpu, self._read_gpu(pynvml, gpu, fields, problems)))
        finally:
            pynvml.nvmlShutdown()
        return per_instance

    @staticmethod
    def _read_gpu(
        pynvml: Any, gpu: Gpu, fields: dict[str, Callable[[Any], float]], problems: list[str]
    ) -> Measures:
        measures: Measures = {}
        for measure, read in fields.items():
            try:
                measures[measure] = read(gpu.handle)
            except pynvml.NVMLError as exc:
                measures[measure] = None
                problems.append(f"{measure} not reported by {gpu.uuid}: {exc}")
        return measures

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        problems: list[str] = []
        try:
            readings = self._read(problems)
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ImportError, ...
            return SourceBatch(empty_frames(), f"NVML unavailable: {exc or type(exc).__name__}")
        owners, at = fleet.owners(), time.time()
        rows = [
            {
                **_row_keys(owners, instance_id, at),
                **{m: _combine(m, [r[m] for _, r in reads]) for m in _MEASURES},
            }
            for instance_id, reads in sorted(readings.items())
        ]
        # Beside each instance's row, one per GPU with its own figures (issue 9): the GPU that holds the
        # others back, idles or fails shows by its index.
        gpu_rows = [
            {**_row_keys(owners, instance_id, at), "gpu_index": gpu.label, "gpu_uuid": gpu.uuid, **measures}
            for instance_id, reads in sorted(readings.items())
            for gpu, measures in reads
        ]
        frames = empty_frames()
        frames[Domain.RESOURCE] = _rows_frame(Domain.RESOURCE, rows)
        frames[Domain.GPU] = _rows_frame(Domain.GPU, gpu_rows)
        return SourceBatch(frames, _status(problems))


# ------------------------------------------------------------------------------------------- the factory


@dataclass(frozen=True)
class SourceConfig:
    state: SourceState
    seed: int
    step_s: int
    prometheus_targets: str
    nvml_instance_id: str


def _open_prometheus(config: SourceConfig) -> PrometheusSource:
    targets = parse_targets(config.prometheus_targets)
    if not targets:
        raise ValueError(
            "OPTIINFRA_PROMETHEUS_TARGETS: empty; the prometheus source needs instance_id=http://host:port/metrics,..."
        )
    return PrometheusSource(targets, config.state)


# Every source, listed once: OPTIINFRA_METRICS_SOURCE names one of them.
SOURCES: dict[str, Callable[[SourceConfig], MetricSource]] = {
    "sandbox": lambda c: SandboxSource(seed=c.seed, step_s=c.step_s),
    "prometheus": _open_prometheus,
    "nvml": lambda c: NvmlSource(c.nvml_instance_id),
}


def open_metric_source(
    kind: str,
    *,
    state: SourceState,
    seed: int,
    step_s: int = 1,
    prometheus_targets: str = "",
    nvml_instance_id: str = "",
) -> MetricSource:
    """The configured source. A bad setting is a ValueError naming the variable and the value."""
    if kind not in SOURCES:
        raise ValueError(f"OPTIINFRA_METRICS_SOURCE: unknown source {kind!r} ({' | '.join(SOURCES)})")
    return SOURCES[kind](SourceConfig(state, seed, step_s, prometheus_targets, nvml_instance_id))


class SourceSettings(Protocol):
    """What chooses and configures a source: optiinfra_assets.config.Settings and FleetResource both."""

    metrics_source: str
    seed: int
    prometheus_targets: str
    nvml_instance_id: str
    request_log_path: str


class WithRequestLog:
    """A source plus real deployments' request logs (OPTIINFRA_REQUEST_LOG_PATH, JSON lines): every
    collection also brings the lines appended since the last one (optiinfra_assets.request_log)."""

    def __init__(self, source: MetricSource, reader: RequestLogReader) -> None:
        self.source, self.reader = source, reader
        self.name = source.name
        self.replays_history = source.replays_history
        self.may_omit_measures = source.may_omit_measures

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        batch = self.source.collect(fleet, start, end)
        running = [i for i in fleet.instances if i.state == InstanceState.RUNNING]
        logged, status = self.reader.read(fleet.deployments, running)
        if batch.requests is not None:
            logged = pl.concat([batch.requests, logged], how="diagonal_relaxed")
        return SourceBatch(batch.frames, f"{batch.status}; {status}", requests=logged)


def configured_metric_source(settings: SourceSettings, state: SourceState, step_s: int = 1) -> MetricSource:
    """The source ``settings`` name (OPTIINFRA_METRICS_SOURCE and its options), with the request log
    when OPTIINFRA_REQUEST_LOG_PATH names one."""
    source = open_metric_source(
        settings.metrics_source,
        state=state,
        seed=settings.seed,
        step_s=step_s,
        prometheus_targets=settings.prometheus_targets,
        nvml_instance_id=settings.nvml_instance_id,
    )
    if settings.request_log_path:
        return WithRequestLog(source, RequestLogReader(settings.request_log_path, state))
    return source
