"""Metric sources: the sandbox, real vLLM and TGI /metrics over HTTP, and NVML (a fake pynvml module that
raises the real library's errors).

The expositions below follow what the servers write: vLLM V1 (``engine`` and ``model_name`` labels,
``finished_reason`` on request_success, both KV gauge names), vLLM V0 names, and TGI's router (a
metrics-rs exporter: counters without ``_total``, histograms for durations and token counts).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import polars as pl
import pynvml
import pytest

from optiinfra_assets.metrics import SCHEMAS, Domain, ThrottleReason
from optiinfra_assets.models import Customer, Deployment, Instance, Lifecycle
from optiinfra_assets.sandbox import initial_fleet
from optiinfra_assets.snapshot import FleetSnapshot
from resources.sources import (
    GIB,
    NvmlSource,
    PrometheusSource,
    SandboxSource,
    histogram_quantile,
    increase,
    open_metric_source,
    parse_exposition,
    parse_targets,
    vllm_performance,
)
from resources.state_store import StateStore

NOW = datetime(2026, 5, 11, 12, 0, tzinfo=UTC)
LE = ("0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")
MODEL = 'model_name="meta-llama/Llama-3.1-8B"'

# ------------------------------------------------------------------------------------------ expositions


def histogram(name: str, counts: list[float], total: float, labels: str = "") -> list[str]:
    """A histogram as the text format writes it: cumulative buckets (one count per LE bound), sum, count."""
    prefix = labels + "," if labels else ""
    lines, cumulative = [], 0.0
    for le, n in zip(LE, counts, strict=True):
        cumulative += n
        lines.append(f'{name}_bucket{{{prefix}le="{le}"}} {cumulative}')
    braces = f"{{{labels}}}" if labels else ""
    return [*lines, f"{name}_sum{braces} {total}", f"{name}_count{braces} {cumulative}"]


def vllm_v1_page(k: int, engines: int = 2) -> str:
    """vLLM V1 with ``engines`` data-parallel engines after k rounds. Per engine and round: 6 requests stop,
    2 hit the length limit, 2 are aborted; 2048 tokens; 10 first tokens in 1 s; e2e 5 in (2.5, 5] s and 5 in
    (5, 10] s. Engine e has 2 + e requests waiting and KV usage 0.7 - 0.2 e."""
    lines = ["# HELP vllm:num_requests_waiting Number of requests waiting to be processed."]
    lines.append("# TYPE vllm:num_requests_waiting gauge")
    for e in range(engines):
        lines.append(f'vllm:num_requests_waiting{{engine="{e}",{MODEL}}} {2.0 + e}')
    for name in ("vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc"):  # both, as 0.9/0.10 export
        lines.append(f"# TYPE {name} gauge")
        lines += [f'{name}{{engine="{e}",{MODEL}}} {0.7 - 0.2 * e}' for e in range(engines)]
    lines.append("# TYPE vllm:request_success counter")
    for e in range(engines):
        for reason, n in (("abort", 2), ("length", 2), ("stop", 6)):
            labels = f'engine="{e}",finished_reason="{reason}",{MODEL}'
            lines.append(f"vllm:request_success_total{{{labels}}} {n * k}.0")
            lines.append(f"vllm:request_success_created{{{labels}}} 1.7781e+09")
    lines.append("# TYPE vllm:generation_tokens counter")
    for e in range(engines):
        lines.append(f'vllm:generation_tokens_total{{engine="{e}",{MODEL}}} {2048.0 * k}')
    lines.append("# TYPE vllm:num_preemptions counter")  # engine e preempts 3 + e sequences a round
    lines += [f'vllm:num_preemptions_total{{engine="{e}",{MODEL}}} {(3.0 + e) * k}' for e in range(engines)]
    for name, counts, total in (
        ("vllm:time_to_first_token_seconds", [10, 0, 0, 0, 0, 0], 1.0),
        ("vllm:inter_token_latency_seconds", [2048, 0, 0, 0, 0, 0], 20.48),
        ("vllm:e2e_request_latency_seconds", [0, 0, 0, 5, 5, 0], 75.0),
    ):
        lines.append(f"# TYPE {name} histogram")
        for e in range(engines):
            lines += histogram(name, [c * k for c in counts], total * k, f'engine="{e}",{MODEL}')
    lines.append(f'vllm:cache_config_info{{block_size="16",engine="0",num_gpu_blocks="8192",{MODEL}}} 1.0')
    return "\n".join(lines) + "\n"


def vllm_v0_page(k: int) -> str:
    """vLLM V0 names after k rounds of 10 requests (8 stop, 2 length), each round 2560 tokens."""
    return "\n".join(
        [
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{MODEL}}} 3.0",
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            f"vllm:gpu_cache_usage_perc{{{MODEL}}} 0.25",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{finished_reason="stop",{MODEL}}} {8.0 * k}',
            f'vllm:request_success_total{{finished_reason="length",{MODEL}}} {2.0 * k}',
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{MODEL}}} {2560.0 * k}",
            *histogram("vllm:time_to_first_token_seconds", [10 * k, 0, 0, 0, 0, 0], 2.0 * k, MODEL),
            *histogram("vllm:time_per_output_token_seconds", [2560 * k, 0, 0, 0, 0, 0], 51.2 * k, MODEL),
            *histogram("vllm:e2e_request_latency_seconds", [0, 10 * k, 0, 0, 0, 0], 8.0 * k, MODEL),
        ]
    )


def vllm_with_tgi_names_page(k: int) -> str:
    """One vLLM engine that also exports TGI-compatible names (whose values must not be read)."""
    tgi = ["# TYPE tgi_queue_size gauge", "tgi_queue_size 99", f"tgi_request_success {1000 * k}"]
    return vllm_v1_page(k, engines=1) + "\n".join(tgi) + "\n"


def tgi_page(k: int) -> str:
    """TGI's router after k rounds of two requests: A generates 10 tokens in 1.0 s of inference (1.5 s in
    all), B 990 tokens in 9.9 s (10.4 s in all); each queued 0.1 s; one prefill forward of 0.2 s each."""
    return "\n".join(
        [
            "# TYPE tgi_queue_size gauge",
            "tgi_queue_size 4",
            "# TYPE tgi_batch_current_size gauge",
            "tgi_batch_current_size 2",
            "# TYPE tgi_batch_current_max_tokens gauge",
            "tgi_batch_current_max_tokens 3000",
            "# TYPE tgi_request_success counter",
            f"tgi_request_success {2 * k}",
            "# TYPE tgi_request_count counter",
            f"tgi_request_count {2 * k}",
            "# TYPE tgi_request_duration histogram",
            *histogram("tgi_request_duration", [0, 0, k, 0, 0, k], 11.9 * k),
            *histogram("tgi_request_queue_duration", [2 * k, 0, 0, 0, 0, 0], 0.2 * k),
            *histogram("tgi_request_inference_duration", [0, k, 0, 0, k, 0], 10.9 * k),
            *histogram("tgi_request_mean_time_per_token_duration", [2 * k, 0, 0, 0, 0, 0], 0.11 * k),
            *histogram("tgi_request_generated_tokens", [0, 0, 0, 0, 0, 2 * k], 1000.0 * k),
            *histogram("tgi_batch_forward_duration", [2 * k, 0, 0, 0, 0, 0], 0.4 * k, 'method="prefill"'),
            *histogram("tgi_batch_forward_duration", [990 * k, 0, 0, 0, 0, 0], 9.9 * k, 'method="decode"'),
        ]
    )


def idle_page(_: int) -> str:
    """A vLLM server nobody sends requests to: its counters never move."""
    return vllm_v1_page(3, engines=1)


PAGES: dict[str, Callable[[int], str]] = {
    "/v1dp": vllm_v1_page,
    "/v0": vllm_v0_page,
    "/vllm+tgi": vllm_with_tgi_names_page,
    "/tgi": tgi_page,
    "/idle": idle_page,
}


class ExpositionServer:
    """A local HTTP server of PAGES: each GET of a path returns that page one round further, so the
    counters grow from one scrape to the next, as on a server under load."""

    def __init__(self) -> None:
        calls: dict[str, int] = {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page = PAGES.get(self.path)
                if page is None:
                    self.send_error(404)
                    return
                calls[self.path] = calls.get(self.path, 0) + 1
                data = page(calls[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ExpositionServer:
        # A short poll: shutdown() waits for the loop to look, 0.5 s by default.
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[str]:
    with ExpositionServer() as running:
        yield running.url


def small_fleet() -> FleetSnapshot:
    """One customer, one deployment, one instance: what the sources need of a fleet (its owners)."""
    customer = Customer(id="acme", name="Acme", slo_p95_latency_ms=2000, min_monthly_savings_usd=100)
    deployment = Deployment(
        id="acme-chat",
        customer_id="acme",
        model="llama-3.1-8b",
        instance_type="g5.xlarge",
        replicas=1,
        base_requests_per_s=5.0,
    )
    instance = Instance(
        id="i-0acme",
        deployment_id="acme-chat",
        instance_type="g5.xlarge",
        lifecycle=Lifecycle.ON_DEMAND,
        launched_at=NOW - timedelta(days=1),
    )
    return FleetSnapshot([customer], [deployment], [instance])


@pytest.fixture
def fleet() -> FleetSnapshot:
    return small_fleet()


class JsonState:
    """The source-state half of the state store, in memory, through JSON as a database column holds it."""

    def __init__(self) -> None:
        self.bodies: dict[str, str] = {}

    def get_source_state(self, key: str) -> dict[str, Any] | None:
        return json.loads(self.bodies[key]) if key in self.bodies else None

    def put_source_state(self, key: str, body: dict[str, Any]) -> None:
        self.bodies[key] = json.dumps(body, allow_nan=False)


class Clock:
    def __init__(self, start: float = 1_778_500_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def scrape_twice(
    targets: dict[str, str], fleet: FleetSnapshot, state: Any, dt: float = 10.0
) -> dict[str, dict[str, Any]]:
    """Two collections by two source objects (nothing kept in memory between them), ``dt`` seconds apart:
    the second one's performance rows by instance."""
    clock = Clock()
    first = PrometheusSource(targets, state, clock=clock).collect(fleet, NOW, NOW)
    assert first.frames[Domain.PERFORMANCE].is_empty()
    assert "rates start with the next collection" in first.status
    clock.now += dt
    second = PrometheusSource(targets, state, clock=clock).collect(fleet, NOW, NOW)
    assert second.status == "ok", second.status
    perf = second.frames[Domain.PERFORMANCE]
    assert perf.schema == pl.Schema(SCHEMAS[Domain.PERFORMANCE].polars_schema)
    return {row["instance_id"]: row for row in perf.iter_rows(named=True)}


# ------------------------------------------------------------------------------------- parsing and math


def test_parse_exposition_reads_labels_escapes_timestamps_and_counters_without_total() -> None:
    text = (
        '# HELP x y\nm_total{a="1",b="q\\"z"} 3 1700000000000\nn 4.5\nh_bucket{le="+Inf"} 2\n'
        "# TYPE tgi_request_success counter\ntgi_request_success 7\n"
    )
    samples = parse_exposition(text)
    assert samples["m_total"][(("a", "1"), ("b", 'q"z'))] == 3.0
    assert samples["n"][()] == 4.5
    assert samples["h_bucket"][(("le", "+Inf"),)] == 2.0
    assert samples["tgi_request_success_total"][()] == 7.0  # a typed counter always ends in _total


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    cumulative = {1.0: 50.0, 2.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, cumulative) == pytest.approx(1.0)
    assert histogram_quantile(0.75, cumulative) == pytest.approx(1.5)
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 10.0}) == 1.0
    # No observation: no quantile (NaN, as Prometheus says), not 0.
    assert math.isnan(histogram_quantile(0.5, {})) and math.isnan(histogram_quantile(0.5, {1.0: 0.0}))


def test_increase_is_per_series_and_survives_a_restart() -> None:
    a, b = (("engine", "0"),), (("engine", "1"),)
    before = {"c_total": {a: 100.0, b: 50.0}}
    now = {"c_total": {a: 130.0, b: 5.0}, "new_total": {a: 4.0}}  # engine 1 restarted
    assert increase(now, before) == {"c_total": {a: 30.0, b: 5.0}, "new_total": {a: 4.0}}


def test_what_a_server_does_not_export_or_leaves_nan_is_not_reported() -> None:
    now = parse_exposition(
        'vllm:kv_cache_usage_perc{engine="0"} NaN\nvllm:kv_cache_usage_perc{engine="1"} 0.4\n'
        'vllm:num_requests_waiting{engine="0"} NaN\n'
    )
    row = vllm_performance(now, increase({}, {}), 10.0)
    assert row["kv_cache_usage"] == 0.4  # the engine that has a value
    assert row["queue_length"] is None and row["requests_per_s"] is None and row["ttft_ms"] is None


# ----------------------------------------------------------------------------------------- the scraper


def test_vllm_v1_data_parallel_engines(server: str, fleet: FleetSnapshot) -> None:
    known = fleet.instances[0]
    row = scrape_twice({known.id: server + "/v1dp"}, fleet, JsonState())[known.id]
    assert (row["customer_id"], row["deployment_id"]) == ("acme", known.deployment_id)
    # Two engines at 0.7 and 0.5: their mean, not a sum over 1.0 that would quarantine the row.
    assert row["kv_cache_usage"] == pytest.approx(0.6)
    assert row["queue_length"] == 5.0  # waiting requests are counted over both engines
    # Aborted requests are not successes: (6 stop + 2 length) x 2 engines in 10 s.
    assert row["requests_per_s"] == pytest.approx(1.6)
    assert row["tokens_per_s"] == pytest.approx(2 * 2048 / 10)
    assert row["ttft_ms"] == pytest.approx(100.0)
    assert row["itl_ms"] == pytest.approx(10.0)
    # The counter's growth over the interval, summed over engines: (3 + 4) preemptions in 10 s.
    assert row["preemptions_per_s"] == pytest.approx(0.7)
    # The round's 20 requests (bucket increases, not totals): median at the top of (2.5, 5], p95 and p99
    # interpolated inside (5, 10].
    assert row["latency_p50_ms"] == pytest.approx(5000.0)
    assert row["latency_p95_ms"] == pytest.approx(9500.0)
    assert row["latency_p99_ms"] == pytest.approx(9900.0)


def test_vllm_v0_names(server: str, fleet: FleetSnapshot) -> None:
    row = scrape_twice({"i-v0": server + "/v0"}, fleet, JsonState(), dt=5.0)["i-v0"]
    assert row["kv_cache_usage"] == pytest.approx(0.25) and row["queue_length"] == 3.0
    assert row["requests_per_s"] == pytest.approx(2.0) and row["tokens_per_s"] == pytest.approx(512.0)
    assert row["ttft_ms"] == pytest.approx(200.0) and row["itl_ms"] == pytest.approx(20.0)
    assert row["latency_p50_ms"] == pytest.approx(750.0)
    assert row["preemptions_per_s"] is None  # this server exports no preemption counter: not 0.0


def test_a_vllm_server_that_also_exports_tgi_names_is_read_as_vllm(server: str, fleet: FleetSnapshot) -> None:
    row = scrape_twice({"i-both": server + "/vllm+tgi"}, fleet, JsonState())["i-both"]
    assert row["queue_length"] == 2.0  # vllm:num_requests_waiting, not tgi_queue_size (99)
    assert row["requests_per_s"] == pytest.approx(0.8)  # vLLM's 8 completed, not TGI's 1000
    assert row["ttft_ms"] == pytest.approx(100.0) and row["kv_cache_usage"] == pytest.approx(0.7)


def test_tgi_router_metrics(server: str, fleet: FleetSnapshot) -> None:
    row = scrape_twice({"i-tgi": server + "/tgi"}, fleet, JsonState())["i-tgi"]
    assert row["kv_cache_usage"] is None  # TGI exports no KV-cache gauge: not reported, not 0.0
    assert row["preemptions_per_s"] is None
    assert row["queue_length"] == 4.0
    assert row["requests_per_s"] == pytest.approx(0.2) and row["tokens_per_s"] == pytest.approx(100.0)
    assert row["ttft_ms"] == pytest.approx(100.0 + 200.0)  # queue 0.1 s + prefill forward 0.2 s
    # Per token, 10.9 s over 1000 tokens; the per-request mean (0.1 and 0.01 s) would say 55 ms.
    assert row["itl_ms"] == pytest.approx(10.9)
    assert row["latency_p50_ms"] == pytest.approx(2500.0)
    assert row["latency_p99_ms"] == pytest.approx(10_000.0)  # past the last finite bound: that bound


def test_an_idle_server_reports_no_latency_rather_than_zero(server: str, fleet: FleetSnapshot) -> None:
    row = scrape_twice({"i-idle": server + "/idle"}, fleet, JsonState())["i-idle"]
    assert row["requests_per_s"] == 0.0 and row["tokens_per_s"] == 0.0  # measured: nothing finished
    assert row["kv_cache_usage"] == pytest.approx(0.7) and row["queue_length"] == 2.0
    for latency in ("ttft_ms", "itl_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
        assert row[latency] is None, latency


def test_an_unknown_instance_is_reported_under_the_unmanaged_convention(
    server: str, fleet: FleetSnapshot
) -> None:
    row = scrape_twice({"i-own": server + "/v0"}, fleet, JsonState())["i-own"]
    assert (row["customer_id"], row["deployment_id"]) == ("unmanaged", "unmanaged:i-own")


def test_the_previous_scrape_is_kept_in_the_state_store(
    state: StateStore, server: str, fleet: FleetSnapshot
) -> None:
    """Two source objects, as two processes: the second rates against what the first stored."""
    rows = scrape_twice({"i-a": server + "/v1dp", "i-t": server + "/tgi"}, fleet, state)
    assert rows["i-a"]["requests_per_s"] == pytest.approx(1.6)
    assert rows["i-t"]["itl_ms"] == pytest.approx(10.9)
    kept = state.get_source_state("prometheus:i-a")
    assert kept is not None and kept["url"] == server + "/v1dp" and kept["engine"] == "vllm"
    assert kept["at"] > 1e9  # wall-clock seconds, comparable across processes
    # Only the counters and histograms the rates need, not gauges, info series or _created samples.
    assert set(kept["samples"]) == {
        "vllm:request_success_total",
        "vllm:generation_tokens_total",
        "vllm:num_preemptions_total",
        *(
            f"vllm:{name}_{suffix}"
            for name in (
                "time_to_first_token_seconds",
                "inter_token_latency_seconds",
                "e2e_request_latency_seconds",
            )
            for suffix in ("bucket", "sum", "count")
        ),
    }


def test_a_moved_target_or_an_old_scrape_is_not_rated_against(
    state: StateStore, server: str, fleet: FleetSnapshot
) -> None:
    clock = Clock()
    PrometheusSource({"i-a": server + "/v0"}, state, clock=clock).collect(fleet, NOW, NOW)
    clock.now += 10
    moved = PrometheusSource({"i-a": server + "/v1dp"}, state, clock=clock).collect(fleet, NOW, NOW)
    assert moved.frames[Domain.PERFORMANCE].is_empty()  # v0's counters are no base for v1dp's
    clock.now += 3600
    late = PrometheusSource({"i-a": server + "/v1dp"}, state, clock=clock).collect(fleet, NOW, NOW)
    assert late.frames[Domain.PERFORMANCE].is_empty()  # an hour's average is not a row of now
    clock.now += 10
    assert (
        PrometheusSource({"i-a": server + "/v1dp"}, state, clock=clock)
        .collect(fleet, NOW, NOW)
        .frames[Domain.PERFORMANCE]
        .height
        == 1
    )


def test_a_target_that_does_not_answer_is_named_in_the_status(server: str, fleet: FleetSnapshot) -> None:
    dead = "http://127.0.0.1:9/metrics"  # the discard port: nothing listens
    targets = {"i-a": server + "/v0", "i-b": dead, "i-c": server + "/nothing"}
    state = JsonState()
    for _ in range(2):
        batch = PrometheusSource(targets, state, timeout_s=1.0).collect(fleet, NOW, NOW)
    assert dead in batch.status and server + "/nothing" in batch.status
    assert batch.frames[Domain.PERFORMANCE]["instance_id"].to_list() == ["i-a"]


def test_parse_targets() -> None:
    assert parse_targets(" i-1=http://a:8000/metrics, i-2=http://b:80/metrics ,") == {
        "i-1": "http://a:8000/metrics",
        "i-2": "http://b:80/metrics",
    }
    with pytest.raises(ValueError, match=r"OPTIINFRA_PROMETHEUS_TARGETS.*instance_id="):
        parse_targets("http://a:8000/metrics")


def test_open_metric_source_names_the_variable_of_a_bad_setting() -> None:
    state = JsonState()
    assert open_metric_source("sandbox", state=state, seed=1, step_s=5).name == "sandbox"
    with pytest.raises(ValueError, match="OPTIINFRA_METRICS_SOURCE: unknown source 'statsd'"):
        open_metric_source("statsd", state=state, seed=1)
    with pytest.raises(ValueError, match="OPTIINFRA_PROMETHEUS_TARGETS: empty"):
        open_metric_source("prometheus", state=state, seed=1)
    with pytest.raises(ValueError, match="OPTIINFRA_NVML_INSTANCE_ID"):
        open_metric_source("nvml", state=state, seed=1, nvml_instance_id="i-a,i-b")


# ------------------------------------------------------------------------------------------------- NVML


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # the library's own subclass for the code (NVMLError_NotSupported, ...)


@dataclass
class FakeGpu:
    uuid: str
    mem_used_gib: float
    mem_total_gib: float
    util_pct: float | None = None  # None: NVMLError_NotSupported
    power_w: float | None = None
    sm_clock_mhz: float | None = None
    throttle_reasons: int | None = None
    mig_mode: int | None = None  # None: not a MIG-capable GPU
    migs: dict[int, FakeGpu] = field(default_factory=dict)  # slot -> MIG device


def fake_pynvml(gpus: list[FakeGpu | int]) -> types.ModuleType:
    """pynvml as NVML answers on a machine with these GPUs (an int: the error code getting its handle
    fails with). Errors are the real library's classes, so `except pynvml.NVMLError` is exercised."""
    nv = types.ModuleType("pynvml")

    def supported(value: float | None) -> float:
        if value is None:
            raise nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value

    def handle(index: int) -> FakeGpu:
        gpu = gpus[index]
        if isinstance(gpu, int):
            raise nvml_error(gpu)
        return gpu

    def mig(gpu: FakeGpu, slot: int) -> FakeGpu:
        if slot not in gpu.migs:
            raise nvml_error(pynvml.NVML_ERROR_NOT_FOUND)
        return gpu.migs[slot]

    nv.__dict__.update(
        NVMLError=pynvml.NVMLError,
        NVML_DEVICE_MIG_ENABLE=pynvml.NVML_DEVICE_MIG_ENABLE,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUUID=lambda g: g.uuid,
        nvmlDeviceGetUtilizationRates=lambda g: types.SimpleNamespace(gpu=supported(g.util_pct), memory=0),
        nvmlDeviceGetMemoryInfo=lambda g: types.SimpleNamespace(
            used=int(g.mem_used_gib * GIB), total=int(g.mem_total_gib * GIB)
        ),
        nvmlDeviceGetPowerUsage=lambda g: int(supported(g.power_w) * 1000),  # milliwatts
        NVML_CLOCK_SM=pynvml.NVML_CLOCK_SM,
        nvmlDeviceGetClockInfo=lambda g, clock: (
            int(supported(g.sm_clock_mhz)) if clock == pynvml.NVML_CLOCK_SM else supported(None)
        ),
        nvmlDeviceGetCurrentClocksThrottleReasons=lambda g: int(supported(g.throttle_reasons)),
        nvmlDeviceGetMigMode=lambda g: [supported(g.mig_mode), g.mig_mode],
        nvmlDeviceGetMaxMigDeviceCount=lambda g: 7,
        nvmlDeviceGetMigDeviceHandleByIndex=mig,
    )
    return nv


# GPU 0 reports no power; GPU 1 is in MIG mode with two of seven slots used (MIG devices report memory,
# not utilization or power); GPU 2 reports everything, MIG off.
GPUS = [
    FakeGpu("GPU-aaaa", 10, 80, util_pct=50),
    FakeGpu(
        "GPU-bbbb",
        0,
        80,
        mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
        migs={0: FakeGpu("MIG-1111", 5, 20), 2: FakeGpu("MIG-2222", 3, 20)},
    ),
    FakeGpu("GPU-cccc", 40, 80, util_pct=90, power_w=300, mig_mode=0),
]


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[FakeGpu | int]], None]:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return lambda gpus: monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))


def nvml_rows(fleet: FleetSnapshot, instances: str) -> tuple[dict[str, dict[str, Any]], str]:
    batch = NvmlSource(instances, hostname="host-1").collect(fleet, NOW, NOW)
    frame = batch.frames[Domain.RESOURCE]
    assert frame.schema == pl.Schema(SCHEMAS[Domain.RESOURCE].polars_schema)
    return {row["instance_id"]: row for row in frame.iter_rows(named=True)}, batch.status


def test_nvml_reads_each_field_on_its_own_and_mig_devices(
    nvml: Callable[[list[FakeGpu | int]], None], fleet: FleetSnapshot
) -> None:
    nvml(GPUS)
    rows, status = nvml_rows(fleet, "")
    row = rows["host-1"]  # no mapping: every GPU on the hostname's instance
    assert (row["customer_id"], row["deployment_id"]) == ("unmanaged", "unmanaged:host-1")
    assert row["gpu_util_pct"] == pytest.approx(70.0)  # the GPUs that report it; power did not stop it
    # The MIG devices' memory instead of their parent's (which would count it twice).
    assert row["gpu_mem_used_gib"] == pytest.approx(58.0) and row["gpu_mem_total_gib"] == pytest.approx(200.0)
    assert row["power_w"] is None  # three of four devices do not report it: a sum of one would understate
    assert "power_w not reported by GPU-aaaa: Not Supported" in status
    assert "gpu_util_pct not reported by MIG-1111" in status


def test_nvml_maps_gpus_to_instances(
    nvml: Callable[[list[FakeGpu | int]], None], fleet: FleetSnapshot
) -> None:
    nvml(GPUS)
    known = fleet.instances[0]
    rows, _ = nvml_rows(fleet, f"0=i-a, GPU-bbbb=i-b, {known.id}")
    assert set(rows) == {"i-a", "i-b", known.id}
    assert rows["i-a"]["gpu_util_pct"] == 50.0 and rows["i-a"]["power_w"] is None
    assert rows["i-b"]["gpu_util_pct"] is None and rows["i-b"]["gpu_mem_used_gib"] == pytest.approx(8.0)
    assert rows[known.id]["power_w"] == pytest.approx(300.0)
    assert rows[known.id]["deployment_id"] == known.deployment_id  # the fleet's own instance
    rows, status = nvml_rows(fleet, "MIG-2222=i-m")  # no bare id: unmapped GPUs are left out, and said so
    assert set(rows) == {"i-m"} and rows["i-m"]["gpu_mem_total_gib"] == pytest.approx(20.0)
    assert "GPU-aaaa (GPU 0) maps to no OPTIINFRA_NVML_INSTANCE_ID" in status


def test_nvml_honours_cuda_visible_devices(
    nvml: Callable[[list[FakeGpu | int]], None], fleet: FleetSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvml(GPUS)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,MIG-2222")
    row = nvml_rows(fleet, "i-a")[0]["i-a"]
    assert row["gpu_mem_used_gib"] == pytest.approx(43.0) and row["gpu_util_pct"] == 90.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb,7,0")  # CUDA stops at the first unknown entry
    row = nvml_rows(fleet, "i-a")[0]["i-a"]
    assert row["gpu_mem_total_gib"] == pytest.approx(40.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    batch = NvmlSource("i-a").collect(fleet, NOW, NOW)
    assert batch.status == "NVML unavailable: no GPU found (CUDA_VISIBLE_DEVICES='')"


def test_a_gpu_nvml_cannot_reach_does_not_hide_the_others(
    nvml: Callable[[list[FakeGpu | int]], None], fleet: FleetSnapshot
) -> None:
    nvml([GPUS[2], pynvml.NVML_ERROR_GPU_IS_LOST])
    rows, status = nvml_rows(fleet, "i-a")
    assert rows["i-a"]["power_w"] == pytest.approx(300.0)
    assert status.startswith("GPU 1: ")


def test_nvml_without_a_gpu_says_so_cleanly(fleet: FleetSnapshot) -> None:
    batch = NvmlSource("i-local").collect(fleet, NOW, NOW)  # the real library, on a machine without GPU
    assert batch.status.startswith("NVML unavailable: ")
    assert all(frame.is_empty() for frame in batch.frames.values())
    assert batch.frames[Domain.RESOURCE].schema == pl.Schema(SCHEMAS[Domain.RESOURCE].polars_schema)


def test_sandbox_source_wraps_generate() -> None:
    fleet = FleetSnapshot(*initial_fleet(42, NOW))
    batch = SandboxSource(seed=42, step_s=5).collect(fleet, NOW, NOW + timedelta(minutes=1))
    assert batch.status == "ok"
    assert batch.frames[Domain.PERFORMANCE].height == 12 * len(fleet.instances)
    assert batch.frames[Domain.COST].height == len(fleet.instances)


def test_nvml_reads_the_sm_clock_and_throttle_reasons(
    nvml: Callable[[list[FakeGpu | int]], None], fleet: FleetSnapshot
) -> None:
    # What an H100 answered (shared/reference): 1,980 MHz and no reason idle-to-moderate; under a matmul
    # at the 700 W limit, the software power cap (4) and a lower clock. A GPU without the query: not reported.
    power_capped = pynvml.nvmlClocksEventReasonSwPowerCap
    thermal = pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert (power_capped, thermal) == (ThrottleReason.SW_POWER_CAP, ThrottleReason.HW_THERMAL)
    nvml(
        [
            FakeGpu("GPU-aaaa", 10, 80, util_pct=40, sm_clock_mhz=1980, throttle_reasons=0),
            FakeGpu("GPU-bbbb", 70, 80, util_pct=100, sm_clock_mhz=1755, throttle_reasons=power_capped),
            FakeGpu("GPU-cccc", 70, 80, util_pct=100, sm_clock_mhz=1410, throttle_reasons=thermal),
            FakeGpu("GPU-dddd", 70, 80, util_pct=100),
        ]
    )
    rows, status = nvml_rows(fleet, "0=i-a, 1=i-b, 2=i-b, 3=i-c")
    assert rows["i-a"]["sm_clock_mhz"] == 1980.0 and rows["i-a"]["throttle_reasons"] == 0.0
    # The slowest GPU's clock, and the reasons of both GPUs of the instance.
    assert rows["i-b"]["sm_clock_mhz"] == 1410.0
    assert rows["i-b"]["throttle_reasons"] == float(power_capped | thermal)
    assert rows["i-c"]["sm_clock_mhz"] is None and rows["i-c"]["throttle_reasons"] is None
    assert "throttle_reasons not reported by GPU-dddd: Not Supported" in status
