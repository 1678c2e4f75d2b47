"""Preemptions and the hourly p99, end to end: the serving model preempts what the KV cache cannot hold,
the sandbox emits it, the metric store's v7 adds the column and its hourly average to a store created
before (on the real chdb engine), kv_cache_tuning acts on the preemption count and falls back to the
KV-cache usage where there is none, and the latency detector watches the hour's p99."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.agents.capability import Proposal, Skip
from optiinfra_assets.agents.performance.kv_cache_tuning import (
    KvCacheTuning,
    KvCacheTuningEvidence,
    worst_hour_preemptions,
)
from optiinfra_assets.agents.performance.latency_anomalies import WATCHED, LatencyAnomalies, series_column
from optiinfra_assets.catalog import default_config, instance_type, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import Customer, Deployment, Instance, Lifecycle
from optiinfra_assets.serving import load_points, preempted_share, serving_capacity
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot
from resources import metric_store
from resources.metric_store import ChdbMetricStore

SETTINGS = DecisionSettings()
CUSTOMER = Customer(id="c", name="C", slo_p95_latency_ms=45_000.0, min_monthly_savings_usd=0.0)
START = datetime(2026, 6, 1, tzinfo=UTC)
# One H100 holding a 32B model in bf16: 27 sequences of KV cache, while vLLM's default admits 1024.
KV_BOUND = ("Qwen2.5-32B", "p5.4xlarge")


def _capacity(max_num_seqs: int | None = None):
    name, itype = KV_BOUND
    engine = {} if max_num_seqs is None else {"max_num_seqs": max_num_seqs}
    config = default_config(itype, 1, **engine)
    return serving_capacity(model(name), instance_type(itype), config.engine), instance_type(itype)


# ------------------------------------------------------------------------------------ serving model


def test_the_serving_model_preempts_only_what_the_kv_cache_cannot_hold() -> None:
    cap, itype = _capacity()
    assert cap.max_batch < cap.max_num_seqs  # the cache, not max_num_seqs, bounds the batch
    busy = np.array([0.0, 0.5, 0.9, 1.0])
    share = preempted_share(cap, busy)
    # Idle and half-busy hold their sequences; near full the scheduler admits more than the cache holds
    # once their outputs grow: prompt-sized admission, (prompt + output/2)-sized sequences.
    assert share[0] == 0.0 and share[1] == 0.0
    prompt = cap.avg_context_tokens - cap.avg_output_tokens / 2
    expected_full = 1.0 - cap.kv_cache_tokens / ((cap.kv_cache_tokens / prompt) * cap.avg_context_tokens)
    assert share[3] == pytest.approx(expected_full) and 0.05 < share[3] < 0.15
    assert 0.0 < share[2] < share[3]
    points = load_points(cap, itype, np.array([0.0, 2.0 * cap.max_requests_per_s]))
    assert points["preemptions_per_s"][0] == 0.0
    assert points["preemptions_per_s"][1] == pytest.approx(cap.max_requests_per_s * share[3])
    # max_num_seqs at what the cache holds: the scheduler stops admitting what it would preempt.
    fitted, _ = _capacity(max_num_seqs=cap.max_batch)
    assert preempted_share(fitted, np.array([1.0]))[0] == 0.0


def test_the_sandbox_emits_preemptions_where_the_kv_cache_is_short_only() -> None:
    now = datetime(2026, 6, 2, 14, tzinfo=UTC)  # a Tuesday afternoon: the weekday peak
    customers, deployments, instances = sandbox.initial_fleet(7, now - timedelta(days=1))
    wanted = {"globex-kv-qwen32b", "acme-chat-8b"}
    deps = [d for d in deployments if d.id in wanted]
    frames = sandbox.generate(
        customers, deps, instances, [], now, now + timedelta(minutes=10), seed=7, step_s=10
    )
    perf = frames[Domain.PERFORMANCE]
    by_dep = perf.group_by("deployment_id").agg(
        pl.col("preemptions_per_s").mean(), pl.col("requests_per_s").mean(), pl.col("kv_cache_usage").mean()
    )
    rows = {r["deployment_id"]: r for r in by_dep.iter_rows(named=True)}
    assert set(rows) == wanted
    short, roomy = rows["globex-kv-qwen32b"], rows["acme-chat-8b"]
    assert short["preemptions_per_s"] / short["requests_per_s"] > SETTINGS.kv_preempted_share
    assert roomy["preemptions_per_s"] == 0.0 and roomy["kv_cache_usage"] < 0.9
    bound = next(m for m in SCHEMAS[Domain.PERFORMANCE].measures if m.name == "preemptions_per_s")
    assert perf["preemptions_per_s"].min() >= bound.lo and perf["preemptions_per_s"].max() <= bound.hi


# ------------------------------------------------------------------------------------- metric store


def _perf_rows(start: datetime, n: int, p99: float, preemptions: float | None) -> pl.DataFrame:
    """n one-second rows in the performance schema of the moment (before v7: no preemptions_per_s)."""
    schema = SCHEMAS[Domain.PERFORMANCE]
    measures = {m.name: [1.0] * n for m in schema.measures} | {"latency_p99_ms": [p99] * n}
    if preemptions is not None:
        measures["preemptions_per_s"] = [preemptions] * n
    frame = pl.DataFrame(
        {
            "ts": [start + timedelta(seconds=i) for i in range(n)],
            "customer_id": ["c-1"] * n,
            "deployment_id": ["d-1"] * n,
            "instance_id": ["i-1"] * n,
            **measures,
        }
    )
    return frame.with_columns(pl.col("ts").cast(schema.polars_schema["ts"])).select(schema.columns)


def test_v7_adds_preemptions_and_the_hourly_p99_to_a_store_created_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    perf = SCHEMAS[Domain.PERFORMANCE]
    before_v7 = dataclasses.replace(
        perf, measures=tuple(m for m in perf.measures if m.name != "preemptions_per_s")
    )
    hourly_before = tuple(
        m
        for m in metric_store.HOURLY_MEASURES[Domain.PERFORMANCE]
        if m not in ("latency_p99_ms", "preemptions_per_s")
    )
    real_migrations = metric_store.migrations
    store = ChdbMetricStore(tmp_path / "chdb")
    with monkeypatch.context() as old:  # the schema as it was before version 7
        old.setitem(metric_store.SCHEMAS, Domain.PERFORMANCE, before_v7)
        old.setitem(metric_store.HOURLY_MEASURES, Domain.PERFORMANCE, hourly_before)
        old.setattr(metric_store, "migrations", lambda db: [(v, s) for v, s in real_migrations(db) if v < 7])
        assert store.migrate() < 7
        columns = set(store.query_polars(f"DESCRIBE TABLE {store.database}.{perf.table}")["name"])
        assert "preemptions_per_s" not in columns
        old_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        store.insert_polars(perf.table, _perf_rows(old_hour, 60, p99=900.0, preemptions=None))
    assert store.migrate() == max(v for v, _ in real_migrations(store.database))
    new_hour = old_hour + timedelta(hours=1)
    store.insert_polars(perf.table, _perf_rows(new_hour, 60, p99=1200.0, preemptions=0.25))
    hourly = store.hourly(Domain.PERFORMANCE).sort("hour")
    assert hourly["hour"].to_list() == [old_hour, new_hour]
    old_row, new_row = hourly.rows(named=True)
    # Hours rolled up before v7 read "not kept", never 0.
    assert np.isnan(old_row["latency_p99_ms_avg"]) and np.isnan(old_row["preemptions_per_s_avg"])
    assert new_row["latency_p99_ms_avg"] == pytest.approx(1200.0)
    assert new_row["preemptions_per_s_avg"] == pytest.approx(0.25)
    raw = store.query_polars(f"SELECT preemptions_per_s FROM {store.database}.{perf.table} ORDER BY ts")
    # Rows written before the column read "not reported", not zero preemptions.
    assert np.isnan(raw["preemptions_per_s"][0]) and raw["preemptions_per_s"][-1] == 0.25
    # The detector reads the whole series from the older definition while any hour lacks the p99.
    p99 = next(w for w in WATCHED if w.metric == "latency_p99_ms")
    assert series_column(hourly, p99) == "latency_p95_ms_p99"
    assert series_column(hourly.tail(1), p99) == "latency_p99_ms_avg"


# -------------------------------------------------------------------------------------- kv_cache_tuning


def _kv_deployment() -> Deployment:
    name, itype = KV_BOUND
    return Deployment(
        id="dep", customer_id="c", model=name, config=default_config(itype, 2), base_requests_per_s=1.0
    )


def _hourly(preempted: np.ndarray | None, load: float = 1.0, hours: int = 24) -> pl.DataFrame:
    data: dict[str, object] = {
        "customer_id": "c",
        "deployment_id": "dep",
        "hour": [START + timedelta(hours=h) for h in range(hours)],
        "requests_per_s_avg": np.full(hours, load),
    }
    if preempted is not None:
        data["preemptions_per_s_avg"] = preempted * load
    return pl.DataFrame(data)


def _kv_snapshot(dep: Deployment, hourly: pl.DataFrame, kv_p95: float | None) -> FleetSnapshot:
    cap, _ = _capacity()
    peak = 1.1 * cap.max_requests_per_s
    baselines = {"requests_per_s": BaselineStat(0.7 * peak, 0.1, 0.1, peak, 1440)}
    if kv_p95 is not None:
        baselines["kv_cache_usage"] = BaselineStat(0.7 * kv_p95, 0.05, 0.05, kv_p95, 1440)
    return FleetSnapshot(
        customers=[CUSTOMER],
        deployments=[dep],
        instances=[],
        baselines={dep.id: baselines},
        hourly={"performance": hourly},
    )


def _analyze(snapshot: FleetSnapshot) -> Proposal | Skip:
    (item,) = list(KvCacheTuning().analyze(snapshot, SETTINGS))
    return item


def test_worst_hour_preemptions_skips_hours_that_do_not_report_them() -> None:
    frame = _hourly(np.array([0.01, np.nan, 0.08, 0.02]), load=2.0, hours=4)
    assert worst_hour_preemptions(frame) == pytest.approx((0.08, 0.16))
    assert worst_hour_preemptions(_hourly(np.full(4, np.nan), hours=4)) is None
    assert worst_hour_preemptions(_hourly(None, hours=4)) is None
    assert worst_hour_preemptions(pl.DataFrame()) is None


def test_kv_tuning_acts_on_observed_preemptions_even_under_the_usage_threshold() -> None:
    dep = _kv_deployment()
    preempted = np.full(24, 0.002)
    preempted[14] = 0.06  # the peak hour
    item = _analyze(_kv_snapshot(dep, _hourly(preempted), kv_p95=0.85))
    assert isinstance(item, Proposal), item
    ev = item.evidence
    assert isinstance(ev, KvCacheTuningEvidence)
    assert ev.pressure_signal == "preemptions"
    assert ev.observed_preempted_share == pytest.approx(0.06)
    assert ev.observed_kv_usage_p95 == pytest.approx(0.85)
    assert "preempted 6.0% of requests" in ev.reasons[0]
    assert item.desired.engine.max_num_seqs < dep.config.engine.max_num_seqs


def test_no_preemptions_outweighs_a_full_looking_cache() -> None:
    # vLLM runs its cache near full by design: usage alone is pressure only where preemptions are not counted.
    item = _analyze(_kv_snapshot(_kv_deployment(), _hourly(np.zeros(24)), kv_p95=0.97))
    assert isinstance(item, Skip) and "preempted 0.00% of requests" in item.reason


def test_kv_tuning_falls_back_to_usage_where_no_preemption_count_is_exported() -> None:
    dep = _kv_deployment()
    item = _analyze(_kv_snapshot(dep, _hourly(None), kv_p95=0.97))
    assert isinstance(item, Proposal), item
    assert item.evidence.pressure_signal == "kv_cache_usage"
    assert item.evidence.observed_preempted_share is None
    assert "no preemption count exported" in item.evidence.reasons[0]
    calm = _analyze(_kv_snapshot(dep, _hourly(np.full(24, np.nan)), kv_p95=0.5))
    assert isinstance(calm, Skip) and "under the 90%" in calm.reason
    nothing = _analyze(_kv_snapshot(dep, _hourly(None), kv_p95=None))
    assert (
        isinstance(nothing, Skip) and "no preemption count and no KV-cache usage baseline" in nothing.reason
    )


# --------------------------------------------------------------------------------- latency detector


def _latency_hourly(p99: np.ndarray, preempted_last: float) -> pl.DataFrame:
    hours = p99.size
    hour = np.arange(hours)
    load = 5.0 + np.sin(2 * np.pi * hour / 24)
    preemptions = np.zeros(hours)
    preemptions[-1] = preempted_last * load[-1]
    return pl.DataFrame(
        {
            "customer_id": "c",
            "deployment_id": "dep",
            "hour": [START + timedelta(hours=int(h)) for h in hour],
            "latency_p99_ms_avg": p99,
            "latency_p95_ms_p99": 100.0 + 10.0 * np.sin(2 * np.pi * hour / 24),  # steady: not this one
            "requests_per_s_avg": load,
            "kv_cache_usage_avg": np.full(hours, 0.5),
            "preemptions_per_s_avg": preemptions,
        }
    )


def _detect(frame: pl.DataFrame):
    dep = Deployment(
        id="dep",
        customer_id="c",
        model="Llama-3.1-8B",
        config=default_config("g6e.xlarge", 2),
        base_requests_per_s=1.0,
    )
    instances = [
        Instance(
            id="i-0",
            deployment_id="dep",
            instance_type="g6e.xlarge",
            lifecycle=Lifecycle.ON_DEMAND,
            launched_at=START - timedelta(days=30),
        )
    ]
    snap = FleetSnapshot(
        customers=[CUSTOMER], deployments=[dep], instances=instances, hourly={"performance": frame}
    )
    return LatencyAnomalies().detect(snap, SETTINGS)


def test_the_latency_detector_watches_the_hourly_p99_and_names_preemptions() -> None:
    hour = np.arange(168)
    p99 = 300.0 + 20.0 * np.sin(2 * np.pi * hour / 24) + 0.5 * np.cos(hour * 1.7)
    p99[-1] = 1500.0
    (finding,) = _detect(_latency_hourly(p99, preempted_last=0.05))
    assert finding.metric == "latency_p99_ms" and finding.value == 1500.0
    assert finding.explanation.startswith("KV-cache pressure: vLLM preempted 5.0% of requests")
    # The same jump without preemptions (and the cache half used) is not put on the KV cache.
    (plain,) = _detect(_latency_hourly(p99, preempted_last=0.0))
    assert plain.explanation.startswith("no load or KV-cache change explains it")


# ------------------------------------------------------------------------------- latency references


def _serving_latency_bench():
    spec = importlib.util.spec_from_file_location(
        "serving_latency", Path(__file__).parents[1] / "bench" / "serving_latency.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(bench)
    return bench


def test_the_latency_references_cover_two_gpus_and_two_models_with_sources() -> None:
    bench = _serving_latency_bench()
    cases = bench.load_cases()
    checks = [c for c in cases if not c.calibration]
    assert all(c.source.startswith("https://") for c in cases)
    for g in ("A100 80GB", "H100 SXM"):
        for m in ("Llama-3-8B", "Mistral-7B-v0.3"):
            mine = {c.metric for c in checks if (c.gpu.name, c.model_name) == (g, m)}
            assert {"output tokens/s", "TTFT p50 ms"} <= mine, (g, m)
    for case in cases:
        predicted = case.predict()
        assert np.isfinite(predicted) and predicted > 0, case.name
    # The calibration points are what the constants were fitted to: the model meets them.
    for case in (c for c in cases if c.calibration):
        assert case.predict() == pytest.approx(case.measured, rel=0.02), case.name
