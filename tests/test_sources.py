"""Metric sources: the sandbox, a real HTTP /metrics endpoint for vLLM and TGI, and NVML."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest

from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.sandbox import initial_fleet
from resources.sources import (
    FleetSnapshot,
    NvmlSource,
    PrometheusSource,
    SandboxSource,
    histogram_quantile,
    parse_exposition,
    parse_targets,
)

NOW = datetime(2026, 5, 11, 12, 0, tzinfo=UTC)
LE = ("0.5", "1.0", "2.5", "5.0", "10.0", "+Inf")


def _histogram(name: str, counts: list[int], total_s: float, labels: str = "") -> str:
    """Cumulative buckets for per-bucket counts (one per LE bound), as the exposition format writes them."""
    lines, cumulative = [f"# TYPE {name} histogram"], 0
    for le, n in zip(LE, counts, strict=True):
        cumulative += n
        lines.append(f'{name}_bucket{{{labels}le="{le}"}} {cumulative}')
    lines += [
        f"{name}_sum{{{labels.rstrip(',')}}} {total_s}",
        f"{name}_count{{{labels.rstrip(',')}}} {cumulative}",
    ]
    return "\n".join(lines)


def vllm_page(k: int) -> str:
    """vLLM 0.19 /metrics after k rounds of 10 finished requests (each round: 1 s TTFT, 4 s e2e)."""
    model = 'model_name="meta-llama/Llama-3.1-8B",'
    return "\n".join(
        [
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f'vllm:num_requests_waiting{{model_name="meta-llama/Llama-3.1-8B"}} {k}.0',
            f'vllm:kv_cache_usage_perc{{model_name="meta-llama/Llama-3.1-8B"}} {0.1 * k}',
            "# TYPE vllm:generation_tokens_total counter",
            f'vllm:generation_tokens_total{{model_name="meta-llama/Llama-3.1-8B"}} {2560.0 * k}',
            f'vllm:request_success_total{{finished_reason="stop",{model}}} {8.0 * k}',
            f'vllm:request_success_total{{finished_reason="length",{model}}} {2.0 * k}',
            _histogram("vllm:time_to_first_token_seconds", [10 * k, 0, 0, 0, 0, 0], 1.0 * k, model),
            _histogram("vllm:inter_token_latency_seconds", [2560 * k, 0, 0, 0, 0, 0], 25.6 * k, model),
            # 10 requests per round: 5 in (2.5, 5], 5 in (5, 10]
            _histogram("vllm:e2e_request_latency_seconds", [0, 0, 0, 5 * k, 5 * k, 0], 60.0 * k, model),
        ]
    )


def tgi_page(k: int) -> str:
    """TGI /metrics after k rounds of 4 requests (metrics-rs exporter: counters without _total)."""
    return "\n".join(
        [
            f"tgi_queue_size {2 * k}",
            f"tgi_request_success {4 * k}",
            f"tgi_batch_total_tokens {1000 * k}",
            "tgi_batch_max_total_tokens 10000",
            _histogram("tgi_request_duration", [0, 0, 4 * k, 0, 0, 0], 8.0 * k),
            _histogram("tgi_request_queue_duration", [4 * k, 0, 0, 0, 0, 0], 0.4 * k),
            _histogram("tgi_batch_forward_duration", [4 * k, 0, 0, 0, 0, 0], 0.8 * k, 'method="prefill",'),
            _histogram("tgi_batch_forward_duration", [400 * k, 0, 0, 0, 0, 0], 99.0 * k, 'method="decode",'),
            _histogram("tgi_request_mean_time_per_token_duration", [4 * k, 0, 0, 0, 0, 0], 0.1 * k),
            _histogram("tgi_request_generated_tokens", [0, 0, 0, 0, 0, 4 * k], 800.0 * k),
        ]
    )


class _Pages:
    """Each GET of /vllm or /tgi returns the next page of that engine: the counters grow per scrape."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {"/vllm": 0, "/tgi": 0}

    def next(self, path: str) -> str | None:
        if path not in self.calls:
            return None
        self.calls[path] += 1
        return (vllm_page if path == "/vllm" else tgi_page)(self.calls[path])


@pytest.fixture
def server() -> Iterator[str]:
    pages = _Pages()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = pages.next(self.path)
            if body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fleet() -> FleetSnapshot:
    customers, deployments, instances = initial_fleet(42, NOW)
    return FleetSnapshot(customers, deployments, instances, [])


def test_parse_exposition_reads_labels_escapes_and_timestamps() -> None:
    text = '# HELP x y\nm_total{a="1",b="q\\"z"} 3 1700000000000\nn 4.5\nh_bucket{le="+Inf"} 2\n'
    samples = parse_exposition(text)
    assert samples["m_total"][(("a", "1"), ("b", 'q"z'))] == 3.0
    assert samples["n"][()] == 4.5
    assert samples["h_bucket"][(("le", "+Inf"),)] == 2.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    cumulative = {1.0: 50.0, 2.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, cumulative) == pytest.approx(1.0)
    assert histogram_quantile(0.75, cumulative) == pytest.approx(1.5)
    assert histogram_quantile(0.99, {1.0: 0.0, float("inf"): 10.0}) == 1.0
    assert histogram_quantile(0.5, {}) == 0.0


def test_vllm_and_tgi_scrapes_become_performance_rows(server: str, fleet: FleetSnapshot) -> None:
    known = fleet.instances[0]
    source = PrometheusSource({known.id: server + "/vllm", "i-unknown": server + "/tgi"})
    first = source.collect(fleet, NOW, NOW)
    assert first.status == "ok" and first.frames[Domain.PERFORMANCE].is_empty()
    second = source.collect(fleet, NOW, NOW)
    perf = second.frames[Domain.PERFORMANCE]
    assert second.status == "ok"
    assert perf.schema == pl.Schema(SCHEMAS[Domain.PERFORMANCE].polars_schema)
    assert perf.height == 2

    vllm = perf.filter(pl.col("instance_id") == known.id).row(0, named=True)
    assert vllm["deployment_id"] == known.deployment_id and vllm["customer_id"] == "acme"
    assert vllm["ttft_ms"] == pytest.approx(100.0)  # 1 s over 10 requests
    assert vllm["itl_ms"] == pytest.approx(10.0)
    # The round's 10 requests (bucket deltas, not totals): median at the top of (2.5, 5], p95 and p99
    # interpolated inside (5, 10].
    assert vllm["latency_p50_ms"] == pytest.approx(5000.0)
    assert vllm["latency_p95_ms"] == pytest.approx(9500.0)
    assert vllm["latency_p99_ms"] == pytest.approx(9900.0)
    assert vllm["queue_length"] == 2.0 and vllm["kv_cache_usage"] == pytest.approx(0.2)
    assert vllm["requests_per_s"] > 0 and vllm["tokens_per_s"] == pytest.approx(256 * vllm["requests_per_s"])

    tgi = perf.filter(pl.col("instance_id") == "i-unknown").row(0, named=True)
    assert (tgi["customer_id"], tgi["deployment_id"]) == ("", "")  # kept, for validation to quarantine
    assert tgi["ttft_ms"] == pytest.approx(100.0 + 200.0)  # queue 0.1 s + prefill forward 0.2 s
    assert tgi["itl_ms"] == pytest.approx(25.0)
    assert tgi["latency_p50_ms"] == pytest.approx(1750.0)
    assert tgi["queue_length"] == 4.0 and tgi["kv_cache_usage"] == pytest.approx(0.2)
    assert tgi["tokens_per_s"] == pytest.approx(200 * tgi["requests_per_s"])


def test_a_target_that_does_not_answer_is_named_in_the_status(server: str, fleet: FleetSnapshot) -> None:
    dead = "http://127.0.0.1:9/metrics"  # the discard port: nothing listens
    source = PrometheusSource(
        {"i-a": server + "/vllm", "i-b": dead, "i-c": server + "/nothing"}, timeout_s=1.0
    )
    for _ in range(2):
        batch = source.collect(fleet, NOW, NOW)
    assert dead in batch.status and server + "/nothing" in batch.status
    assert batch.frames[Domain.PERFORMANCE]["instance_id"].to_list() == ["i-a"]


def test_parse_targets() -> None:
    assert parse_targets(" i-1=http://a:8000/metrics, i-2=http://b:80/metrics ,") == {
        "i-1": "http://a:8000/metrics",
        "i-2": "http://b:80/metrics",
    }
    with pytest.raises(ValueError, match="instance_id="):
        parse_targets("http://a:8000/metrics")


def test_nvml_without_a_gpu_says_so_cleanly(fleet: FleetSnapshot) -> None:
    batch = NvmlSource("i-local").collect(fleet, NOW, NOW)
    assert batch.status.startswith("NVML unavailable: ")
    assert all(frame.is_empty() for frame in batch.frames.values())
    assert batch.frames[Domain.RESOURCE].schema == pl.Schema(SCHEMAS[Domain.RESOURCE].polars_schema)


def test_sandbox_source_wraps_generate(fleet: FleetSnapshot) -> None:
    batch = SandboxSource(seed=42, step_s=5).collect(fleet, NOW, NOW + timedelta(minutes=1))
    assert batch.status == "ok"
    assert batch.frames[Domain.PERFORMANCE].height == 12 * len(fleet.instances)
    assert batch.frames[Domain.COST].height == len(fleet.instances)
