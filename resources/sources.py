"""Where raw metrics come from: the sandbox fleet, vLLM/TGI Prometheus endpoints, or NVML.

Every source answers `collect(fleet, start, end)` with frames in the metric SCHEMAS and a status line; a
source that cannot reach its metrics says so in the status and returns what it has, never a traceback.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import polars as pl

from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import Customer, Deployment, Fault, Instance
from optiinfra_assets.sandbox import generate


@dataclass
class FleetSnapshot:
    customers: list[Customer]
    deployments: list[Deployment]
    instances: list[Instance]
    faults: list[Fault] = field(default_factory=list)

    def owners(self) -> dict[str, tuple[str, str]]:
        """instance_id -> (customer_id, deployment_id) for every instance the fleet knows."""
        customer_of = {d.id: d.customer_id for d in self.deployments}
        return {
            i.id: (customer_of[i.deployment_id], i.deployment_id)
            for i in self.instances
            if i.deployment_id in customer_of
        }

    def owner(self, instance_id: str) -> tuple[str, str]:
        """(customer_id, deployment_id) of an instance; empty strings when the fleet does not know it."""
        return self.owners().get(instance_id, ("", ""))


@dataclass
class SourceBatch:
    frames: dict[Domain, pl.DataFrame]
    status: str  # 'ok', or what went wrong, e.g. 'NVML unavailable: ...'


class MetricSource(Protocol):
    name: str
    # True: collect() can produce any past window (the sandbox replays its history). False: it reads
    # the present (a scrape, an NVML read), so each collection is one window ending now.
    replays_history: bool

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch: ...


def empty_frames() -> dict[Domain, pl.DataFrame]:
    return {d: pl.DataFrame(schema=SCHEMAS[d].polars_schema) for d in Domain}


def _rows_frame(domain: Domain, rows: list[dict]) -> pl.DataFrame:
    schema = SCHEMAS[domain].polars_schema
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame(rows, schema=schema)


def _now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


# ---------------------------------------------------------------------------------------------- sandbox


class SandboxSource:
    """The deterministic sandbox fleet (optiinfra_assets.sandbox.generate)."""

    name = "sandbox"
    replays_history = True

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
        return SourceBatch(frames, "ok")


# ------------------------------------------------------------------------------------------- Prometheus

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]  # metric -> labels -> value


def _parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """`a="x",b="y\\"z"` -> (("a", "x"), ("b", 'y"z')), honouring the format's escapes."""
    labels, i = [], 0
    while i < len(text):
        eq = text.index("=", i)
        key = text[i:eq].strip().lstrip(",").strip()
        j, value = eq + 2, []  # skip ="
        while text[j] != '"':
            if text[j] == "\\":
                j += 1
                value.append({"n": "\n"}.get(text[j], text[j]))
            else:
                value.append(text[j])
            j += 1
        labels.append((key, "".join(value)))
        i = j + 1
        while i < len(text) and text[i] in ", ":
            i += 1
    return tuple(sorted(labels))


def parse_exposition(text: str) -> Samples:
    """The Prometheus text exposition format (version 0.0.4) into samples; comments are skipped."""
    samples: Samples = defaultdict(dict)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            label_text, value_text = rest.rsplit("}", 1)
            labels = _parse_labels(label_text)
        else:
            name, value_text = line.split(None, 1)
            labels = ()
        value = value_text.split()[0]  # an optional timestamp may follow
        samples[name.strip()][labels] = float(value)
    return dict(samples)


def _total(samples: Samples, *names: str) -> float | None:
    """Sum over label sets of the first metric name present (engines rename metrics across versions)."""
    for name in names:
        if name in samples:
            return sum(samples[name].values())
    return None


def _buckets(samples: Samples, name: str, **match: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound, summed over labels other than `le` and `match`."""
    out: dict[float, float] = defaultdict(float)
    for labels, value in samples.get(name + "_bucket", {}).items():
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            out[float(d["le"])] += value
    return dict(out)


def _sum_count(samples: Samples, name: str, **match: str) -> tuple[float, float]:
    def pick(suffix: str) -> float:
        return sum(
            v
            for labels, v in samples.get(name + suffix, {}).items()
            if all(dict(labels).get(k) == w for k, w in match.items())
        )

    return pick("_sum"), pick("_count")


def _delta(now: float, before: float) -> float:
    # A counter that went down was reset by a restart: everything since then is new.
    return now - before if now >= before else now


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative bucket counts: linear within the bucket."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return 0.0
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


def _bucket_delta(now: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: _delta(v, before.get(le, 0.0)) for le, v in now.items()}


def _mean_delta(now: Samples, before: Samples, name: str, **match: str) -> float:
    s1, c1 = _sum_count(now, name, **match)
    s0, c0 = _sum_count(before, name, **match)
    count = _delta(c1, c0)
    return _delta(s1, s0) / count if count > 0 else 0.0


def _rate(now: Samples, before: Samples, dt: float, *names: str) -> float:
    a, b = _total(now, *names), _total(before, *names)
    return _delta(a, b) / dt if a is not None and b is not None and dt > 0 else 0.0


def _quantiles_ms(now: Samples, before: Samples, name: str) -> tuple[float, float, float]:
    delta = _bucket_delta(_buckets(now, name), _buckets(before, name))
    return tuple(1e3 * histogram_quantile(q, delta) for q in (0.5, 0.95, 0.99))  # type: ignore[return-value]


def _is_tgi(samples: Samples) -> bool:
    return any(name.startswith("tgi_") for name in samples)


def vllm_performance(now: Samples, before: Samples, dt: float) -> dict[str, float]:
    """One performance row's measures from two vLLM scrapes `dt` seconds apart."""
    p50, p95, p99 = _quantiles_ms(now, before, "vllm:e2e_request_latency_seconds")
    itl_name = "vllm:inter_token_latency_seconds"
    if itl_name + "_count" not in now:
        itl_name = "vllm:time_per_output_token_seconds"  # the v0 engine's name
    return {
        "requests_per_s": _rate(now, before, dt, "vllm:request_success_total"),
        "ttft_ms": 1e3 * _mean_delta(now, before, "vllm:time_to_first_token_seconds"),
        "itl_ms": 1e3 * _mean_delta(now, before, itl_name),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
        "tokens_per_s": _rate(now, before, dt, "vllm:generation_tokens_total"),
        "queue_length": _total(now, "vllm:num_requests_waiting") or 0.0,
        "kv_cache_usage": _total(now, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc") or 0.0,
    }


def tgi_performance(now: Samples, before: Samples, dt: float) -> dict[str, float]:
    """The same row from TGI, whose names differ and which has no TTFT histogram or KV gauge."""
    p50, p95, p99 = _quantiles_ms(now, before, "tgi_request_duration")
    # TTFT is not exported: time queued plus the mean prefill forward pass is what a first token waits for.
    queue = _mean_delta(now, before, "tgi_request_queue_duration")
    prefill = _mean_delta(now, before, "tgi_batch_forward_duration", method="prefill")
    gen_now, _ = _sum_count(now, "tgi_request_generated_tokens")
    gen_before, _ = _sum_count(before, "tgi_request_generated_tokens")
    used, limit = _total(now, "tgi_batch_total_tokens"), _total(now, "tgi_batch_max_total_tokens")
    return {
        "requests_per_s": _rate(now, before, dt, "tgi_request_success", "tgi_request_success_total"),
        "ttft_ms": 1e3 * (queue + prefill),
        "itl_ms": 1e3 * _mean_delta(now, before, "tgi_request_mean_time_per_token_duration"),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
        "tokens_per_s": _delta(gen_now, gen_before) / dt if dt > 0 else 0.0,
        "queue_length": _total(now, "tgi_queue_size") or 0.0,
        "kv_cache_usage": min(used / limit, 1.0) if used is not None and limit else 0.0,
    }


@dataclass
class _Scrape:
    samples: Samples
    monotonic_s: float


class PrometheusSource:
    """Scrapes vLLM or TGI /metrics; from the second scrape of a target on, one performance row each."""

    name = "prometheus"
    replays_history = False

    def __init__(self, targets: dict[str, str], timeout_s: float = 5.0) -> None:
        self.targets = dict(targets)  # instance_id -> http://host:port/metrics
        self.timeout_s = timeout_s
        self._previous: dict[str, _Scrape] = {}

    def _scrape(self, url: str) -> Samples:
        with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
            return parse_exposition(response.read().decode("utf-8", errors="replace"))

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        rows, problems = [], []
        owners = fleet.owners()
        for instance_id, url in sorted(self.targets.items()):
            try:
                samples = self._scrape(url)
            except (urllib.error.URLError, OSError, ValueError, IndexError) as exc:
                problems.append(f"{instance_id} at {url} did not answer: {getattr(exc, 'reason', exc)}")
                continue
            scrape = _Scrape(samples, time.monotonic())
            before = self._previous.get(instance_id)
            self._previous[instance_id] = scrape
            if before is None:
                continue  # rates and quantiles need two scrapes
            dt = scrape.monotonic_s - before.monotonic_s
            measures = (tgi_performance if _is_tgi(samples) else vllm_performance)(
                samples, before.samples, dt
            )
            # An instance the fleet does not know is still emitted, so that validation quarantines it.
            customer_id, deployment_id = owners.get(instance_id, ("", ""))
            keys = {"ts": _now_ms(), "customer_id": customer_id, "deployment_id": deployment_id}
            rows.append({**keys, "instance_id": instance_id, **measures})
        frames = empty_frames()
        frames[Domain.PERFORMANCE] = _rows_frame(Domain.PERFORMANCE, rows)
        return SourceBatch(frames, "; ".join(problems) or "ok")


def parse_targets(spec: str) -> dict[str, str]:
    """OPTIINFRA_PROMETHEUS_TARGETS ('i-1=http://h:8000/metrics,i-2=...') into instance_id -> URL."""
    targets = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        instance_id, sep, url = item.partition("=")
        if not sep or not url.strip():
            raise ValueError(f"bad Prometheus target {item!r}: expected instance_id=http://host:port/metrics")
        targets[instance_id.strip()] = url.strip()
    return targets


# ------------------------------------------------------------------------------------------------- NVML


class NvmlSource:
    """This machine's NVIDIA GPUs through NVML, as one resource row for the fleet instance it is
    (its customer and deployment come from the fleet; an instance the fleet does not know is quarantined)."""

    name = "nvml"
    replays_history = False

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    def _read(self) -> dict[str, float]:
        import pynvml  # nvidia-ml-py; imported here so that machines without it still load this module

        pynvml.nvmlInit()
        try:
            util, used, total, power = [], 0, 0, 0.0
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                util.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                used, total = used + memory.used, total + memory.total
                power += pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
        finally:
            pynvml.nvmlShutdown()
        if not util:
            raise RuntimeError("no GPU found")
        gib = 1024**3
        # One row per instance, as every source writes: utilization averaged, memory and power summed.
        return {
            "gpu_util_pct": sum(util) / len(util),
            "gpu_mem_used_gib": used / gib,
            "gpu_mem_total_gib": total / gib,
            "power_w": power,
        }

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        try:
            measures = self._read()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ImportError, ...
            return SourceBatch(empty_frames(), f"NVML unavailable: {exc or type(exc).__name__}")
        frames = empty_frames()
        customer_id, deployment_id = fleet.owner(self.instance_id)
        keys = {"ts": _now_ms(), "customer_id": customer_id, "deployment_id": deployment_id}
        row = {**keys, "instance_id": self.instance_id, **measures}
        frames[Domain.RESOURCE] = _rows_frame(Domain.RESOURCE, [row])
        return SourceBatch(frames, "ok")
