"""Per-GPU rows (issue 9): NVML's one row per GPU (MIG devices their own), their validation, the sandbox's
throttled GPU, the gpu_utilization detector naming it, and ingestion on chdb with SQLite and PostgreSQL state."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pynvml
import pytest
from test_sources import FakeGpu, fake_pynvml, small_fleet

from optiinfra_assets import sandbox
from optiinfra_assets.agents.resource.gpu_utilization import PER_GPU_IDLE, GpuUtilization
from optiinfra_assets.assets.metrics import _gpu_metadata
from optiinfra_assets.collection import WATERMARK_KEY, collect_metrics
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import validate_batch
from optiinfra_assets.metrics import SCHEMAS, Domain, ThrottleReason
from optiinfra_assets.models import Deployment, Instance
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import ensure_sandbox_fleet, load_snapshot
from resources.metric_store import GPU_HOURLY_TABLE, ChdbMetricStore
from resources.sources import NvmlSource, SandboxSource
from resources.state_store import StateStore

SEED = 7
POWER_CAP = ThrottleReason.SW_POWER_CAP
# A 70B model on all eight H100 of a p5.48xlarge at 140% of its capacity at the weekday peak: power-capped.
HOT = ("acme-hot-70b", "acme", "Llama-3.1-70B", "p5.48xlarge", 2, 1.4)


def _recent_weekday_peak() -> datetime:
    """15:00 UTC (the sandbox's peak) of the latest weekday before today: within the tables' TTL."""
    day = datetime.now(UTC).replace(hour=15, minute=0, second=0, microsecond=0) - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return day


PEAK = _recent_weekday_peak()


def _hot_fleet() -> tuple[list, list[Deployment], list[Instance]]:
    customers, _, _ = sandbox.initial_fleet(SEED, PEAK - timedelta(days=2))
    hot = sandbox._deployment(*HOT)
    return customers, [hot], sandbox._launch(SEED, [hot], PEAK - timedelta(days=2))


# ------------------------------------------------------------------------------------------------- NVML


def test_nvml_gives_one_row_per_gpu_with_its_own_clock_and_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus: list[FakeGpu | int] = [
        FakeGpu("GPU-aaaa", 10, 80, util_pct=40, power_w=200, sm_clock_mhz=1980, throttle_reasons=0),
        FakeGpu("GPU-bbbb", 70, 80, util_pct=100, power_w=700, sm_clock_mhz=1755, throttle_reasons=POWER_CAP),
        FakeGpu(
            "GPU-cccc",
            0,
            80,
            mig_mode=pynvml.NVML_DEVICE_MIG_ENABLE,
            migs={0: FakeGpu("MIG-1111", 5, 20), 2: FakeGpu("MIG-2222", 3, 20)},
        ),
    ]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))
    batch = NvmlSource("i-a", hostname="host-1").collect(small_fleet(), PEAK, PEAK)
    frame = batch.frames[Domain.GPU]
    assert frame.schema == pl.Schema(SCHEMAS[Domain.GPU].polars_schema)
    rows = {row["gpu_index"]: row for row in frame.iter_rows(named=True)}
    assert list(rows) == ["0", "1", "2/0", "2/2"]  # the MIG devices of GPU 2 are rows of their own
    assert {r["instance_id"] for r in rows.values()} == {"i-a"}
    assert (rows["0"]["sm_clock_mhz"], rows["0"]["throttle_reasons"]) == (1980.0, 0.0)
    assert (rows["1"]["sm_clock_mhz"], rows["1"]["throttle_reasons"]) == (1755.0, float(POWER_CAP))
    assert rows["1"]["power_w"] == pytest.approx(700.0) and rows["0"]["gpu_util_pct"] == 40.0
    assert rows["2/2"]["gpu_uuid"] == "MIG-2222" and rows["2/2"]["gpu_mem_used_gib"] == pytest.approx(3.0)
    assert rows["2/0"]["gpu_util_pct"] is None  # a MIG device reports no utilization: not reported
    # The per-instance row is as before: the slowest clock, the reasons OR-ed, memory summed.
    (instance,) = batch.frames[Domain.RESOURCE].iter_rows(named=True)
    assert (instance["sm_clock_mhz"], instance["throttle_reasons"]) == (1755.0, float(POWER_CAP))
    assert instance["gpu_mem_used_gib"] == pytest.approx(88.0)


# ------------------------------------------------------------------------------------------- validation


def _gpu_frame(minutes: int = 1) -> pl.DataFrame:
    customers, deployments, instances = _hot_fleet()
    frames = sandbox.generate(
        customers, deployments, instances, [], PEAK, PEAK + timedelta(minutes=minutes), seed=SEED
    )
    return frames[Domain.GPU]


def _known(frame: pl.DataFrame) -> dict[str, tuple[str, str]]:
    keys = frame.select("instance_id", "customer_id", "deployment_id").unique()
    return {i: (c, d) for i, c, d in keys.iter_rows()}


def test_bad_gpu_rows_are_quarantined_naming_the_field() -> None:
    frame = _gpu_frame()
    assert frame.height == 6 * 2 * 8  # 6 ten-second steps x 2 instances x 8 GPUs
    bad = frame.with_row_index().with_columns(
        pl.when(pl.col("index") == 3).then(140.0).otherwise(pl.col("gpu_util_pct")).alias("gpu_util_pct"),
        pl.when(pl.col("index") == 5)
        .then(99.0)
        .otherwise(pl.col("gpu_mem_used_gib"))
        .alias("gpu_mem_used_gib"),
    )
    bad = bad.drop("index")
    bad = pl.concat([bad.head(8), frame.slice(7, 1), bad.slice(8)])  # GPU 7 of the first instance twice
    good, quarantine = validate_batch(Domain.GPU, bad, _known(frame), {}, now=PEAK + timedelta(hours=1))
    assert good.height == frame.height - 2  # eight GPUs of one instance at one ts are no duplicates
    reasons = dict(zip(quarantine["field"], quarantine["reason"], strict=True))
    assert reasons["gpu_util_pct"] == "gpu_util_pct: out of range 140.0 > 100.0"
    assert reasons["gpu_mem_used_gib"].startswith("gpu_mem_used_gib: 99.0 above gpu_mem_total_gib 80.")
    assert reasons["ts"].startswith("ts: duplicate (") and "gpu_index=7" in reasons["ts"]


# --------------------------------------------------------------------------------------------- sandbox


def test_the_sandbox_throttles_one_gpu_of_a_power_capped_instance() -> None:
    customers, deployments, instances = _hot_fleet()
    frames = sandbox.generate(
        customers, deployments, instances, [], PEAK, PEAK + timedelta(minutes=2), seed=SEED
    )
    gpu, res = frames[Domain.GPU], frames[Domain.RESOURCE]
    assert (res["throttle_reasons"] == float(POWER_CAP)).mean() > 0.5  # the instance is power-capped
    throttled = gpu.filter(pl.col("throttle_reasons") != 0.0)
    assert throttled.height > 0
    held = dict(throttled.select("instance_id", "gpu_index").unique().iter_rows())
    assert set(held) == {i.id for i in instances}  # one GPU per instance, always the same one
    assert throttled.group_by("instance_id").agg(pl.col("gpu_index").n_unique())["gpu_index"].max() == 1
    siblings = gpu.filter(pl.col("gpu_index") != pl.col("instance_id").replace_strict(held))
    assert (siblings["throttle_reasons"] == 0.0).all() and (siblings["sm_clock_mhz"] == 1980.0).all()
    # What NVML would combine into the instance's row: the slowest clock, the reasons OR-ed, sums.
    combined = gpu.group_by("ts", "instance_id").agg(
        pl.col("sm_clock_mhz").min(),
        pl.col("throttle_reasons").max(),
        pl.col("power_w").sum(),
        pl.col("gpu_util_pct").mean(),
    )
    joined = combined.join(res, on=["ts", "instance_id"], suffix="_instance")
    assert joined.height == combined.height
    for column in ("sm_clock_mhz", "throttle_reasons", "power_w", "gpu_util_pct"):
        assert np.allclose(joined[column], joined[f"{column}_instance"])


# -------------------------------------------------------------------------------------------- detector


def _gpu_hours(values: dict[tuple[str, str], list[float]], column: str) -> pl.DataFrame:
    hours = max(len(v) for v in values.values())
    start = PEAK - timedelta(hours=hours - 1)
    return pl.DataFrame(
        [
            {
                "customer_id": "acme",
                "deployment_id": HOT[0],
                "instance_id": instance,
                "gpu_index": index,
                "hour": start + timedelta(hours=h),
                "samples": 360,
                column: value,
            }
            for (instance, index), series in values.items()
            for h, value in enumerate(series)
        ]
    )


def test_the_detector_names_one_idle_gpu_beside_busy_siblings() -> None:
    customers, deployments, instances = _hot_fleet()
    settings = DecisionSettings(idle_gpu_min_hours=3)
    busy = [60.0, 70.0, 65.0]
    gpu_rows = _gpu_hours(
        {("i-one", "0"): busy, ("i-one", "1"): [0.5, 0.2, 0.1], ("i-two", "0"): busy, ("i-two", "1"): busy},
        "gpu_util_pct_avg",
    )
    resource = gpu_rows.group_by("customer_id", "deployment_id", "hour").agg(
        pl.col("gpu_util_pct_avg").mean()
    )
    snapshot = FleetSnapshot(
        customers, deployments, instances, taken_at=PEAK, hourly={"resource": resource, "gpu": gpu_rows}
    )
    (finding,) = [f for f in GpuUtilization().detect(snapshot, settings) if f.metric == PER_GPU_IDLE]
    assert "GPU 1 of i-one at 0.3% while its 1 sibling averaged 65.0%" in finding.summary
    assert finding.value == pytest.approx(0.27, abs=0.01) and "i-two" not in finding.summary
    # Without per-GPU rows the detector behaves as before: no per-GPU finding.
    without = FleetSnapshot(customers, deployments, instances, taken_at=PEAK, hourly={"resource": resource})
    assert not [f for f in GpuUtilization().detect(without, settings) if f.metric == PER_GPU_IDLE]


def test_collected_gpu_rows_name_the_throttled_gpu(state: StateStore, tmp_path: Path) -> None:
    """The sandbox through collection into chdb (state on SQLite and PostgreSQL), the per-GPU hourly rollup,
    the snapshot and the detector: the throttle finding of the hot deployment names its throttled GPUs."""
    now = PEAK + timedelta(hours=1)
    ensure_sandbox_fleet(state, seed=SEED, now=now - timedelta(days=2))
    customers, (hot,), instances = _hot_fleet()
    state.upsert_deployment(hot)
    state.add_instances(instances)
    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    state.set_watermark(WATERMARK_KEY, now - timedelta(hours=3))
    report = collect_metrics(
        state, store, lambda step_s: SandboxSource(SEED, step_s), now, backfill_days=1, backfill_step_s=10
    )
    accepted = report.total(Domain.GPU, "accepted")
    assert accepted > 0 and report.total(Domain.GPU, "quarantined") == 0
    assert store.count(SCHEMAS[Domain.GPU].table) == accepted
    # Per-instance rows are untouched: one per instance and 10 s, as before.
    assert report.total(Domain.RESOURCE, "accepted") == store.count(SCHEMAS[Domain.RESOURCE].table)
    assert store.count(GPU_HOURLY_TABLE) > 0

    # What the gpu_metrics materialization shows (plotted over materializations by the UI).
    shown = _gpu_metadata(store, now - timedelta(minutes=5))
    assert (
        shown["gpus"]
        == store.query_polars(
            f"SELECT uniqExact(instance_id, gpu_index) AS n FROM {store.database}.gpu_metrics WHERE ts >= "
            "{since:DateTime64(3, 'UTC')}",
            {"since": now - timedelta(minutes=5)},
        )["n"][0]
    )
    assert shown["gpus_throttled"] >= len(instances)  # at least the hot deployment's held GPUs
    records = [r.data for r in shown["latest_per_gpu"].records]  # the most throttled GPUs first
    assert bool(records[0]["throttled"]) and any(r["deployment_id"] == hot.id for r in records)

    snapshot = load_snapshot(state, store, now)
    hourly = snapshot.hourly_of("gpu", hot.id)
    assert set(hourly["gpu_index"]) == {str(i) for i in range(8)}
    findings = [f for f in GpuUtilization().detect(snapshot, DecisionSettings()) if f.deployment_id == hot.id]
    (throttle,) = [f for f in findings if f.metric == "throttle_power"]
    held = sandbox.throttled_gpu(sandbox._Fleet(customers, [hot], instances, SEED), np.arange(len(instances)))
    ordered = sorted(instances, key=lambda i: i.id)  # _Fleet's order
    for instance, index in zip(ordered, held, strict=True):
        assert f"GPU {index} of {instance.id} (power cap" in throttle.summary
    assert "its 7 siblings 0%" in throttle.summary
