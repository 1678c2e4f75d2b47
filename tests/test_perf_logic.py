"""The performance agent's pure parts on hand-built snapshots: the shared forecast, each capability's choice
on hardware that limits it (no FP8, a model that does not fit), the GPU table and the detector's
explanations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from optiinfra_assets.agents.capability import Proposal, Skip
from optiinfra_assets.agents.performance import forecast_config, observed_peak_requests_per_s
from optiinfra_assets.agents.performance.kv_cache_tuning import KvCacheTuning
from optiinfra_assets.agents.performance.latency_anomalies import LatencyAnomalies
from optiinfra_assets.agents.performance.parallelism import Parallelism, splits
from optiinfra_assets.agents.performance.quantization import QuantizationCapability
from optiinfra_assets.catalog import default_config, gpu, instance_type, model
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import (
    Customer,
    Deployment,
    DeploymentConfig,
    Instance,
    KvCacheDtype,
    Lifecycle,
    Quantization,
    Risk,
)
from optiinfra_assets.serving import serving_capacity, validate_config
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot

SETTINGS = DecisionSettings()
CUSTOMER = Customer(id="c", name="C", slo_p95_latency_ms=45_000.0, min_monthly_savings_usd=0.0)
START = datetime(2026, 6, 1, tzinfo=UTC)


def _deployment(model_name: str, config: DeploymentConfig, did: str = "dep") -> Deployment:
    return Deployment(id=did, customer_id="c", model=model_name, config=config, base_requests_per_s=1.0)


def _snapshot(dep: Deployment, peak_per_replica: float, kv_p95: float) -> FleetSnapshot:
    baselines = {
        "requests_per_s": BaselineStat(0.7 * peak_per_replica, 0.1, 0.1, peak_per_replica, 1440),
        "kv_cache_usage": BaselineStat(0.7 * kv_p95, 0.05, 0.05, kv_p95, 1440),
    }
    return FleetSnapshot(customers=[CUSTOMER], deployments=[dep], instances=[], baselines={dep.id: baselines})


def _at_utilization(model_name: str, config: DeploymentConfig, utilization: float) -> float:
    cap = serving_capacity(model(model_name), instance_type(config.instance_type), config.engine)
    return utilization * cap.max_requests_per_s


def _only(items: list[Proposal | Skip]) -> Proposal | Skip:
    (item,) = items
    return item


def test_the_forecast_refuses_configs_the_hardware_cannot_run_naming_the_field() -> None:
    fp8_on_a10g = default_config("g5.xlarge", 1, quantization="fp8")
    bad = forecast_config("Llama-3.1-8B", fp8_on_a10g, 1.0)
    assert not bad.fits and bad.reason.startswith("engine.quantization=fp8") and "A10G" in bad.reason
    # falcon-7b's 71 attention heads do not split over 4 GPUs
    tp4 = forecast_config("falcon-7b", default_config("g6e.12xlarge", 1), 1.0)
    assert not tp4.fits and tp4.reason.startswith("engine.tensor_parallel_size=4")
    # the peak comes from an observed baseline only
    assert observed_peak_requests_per_s({}, 2, SETTINGS) is None
    good = forecast_config("Llama-3.1-8B", default_config("g6e.xlarge", 2), 4.0)
    assert good.fits and good.per_replica_rps == 2.0 and good.gpus == 2 and good.quality_factor == 1.0


def test_kv_tuning_on_a_gpu_without_fp8_raises_memory_but_never_proposes_an_fp8_cache() -> None:
    config = default_config("g5.xlarge", 2)  # A10G: no FP8
    dep = _deployment("Llama-3.1-8B", config)
    proposal = _only(
        list(KvCacheTuning().analyze(_snapshot(dep, _at_utilization(dep.model, config, 1.2), 0.98), SETTINGS))
    )
    assert isinstance(proposal, Proposal), proposal
    engine = proposal.desired.engine
    assert engine.kv_cache_dtype is KvCacheDtype.AUTO and engine.gpu_memory_utilization == 0.95
    assert engine.max_num_seqs <= proposal.evidence.after.max_concurrency + 1
    validate_config(dep.model, proposal.desired)
    # No pressure, no proposal.
    calm = _only(list(KvCacheTuning().analyze(_snapshot(dep, 0.1, 0.4), SETTINGS)))
    assert isinstance(calm, Skip) and "under the 90%" in calm.reason


def test_quantization_without_fp8_hardware_says_why_and_picks_a_format_the_gpu_runs() -> None:
    # A binding batch limit is batch_tuning's (lossless) before quantization's.
    limited = default_config("g5.2xlarge", 3, max_num_seqs=32)
    dep = _deployment("Mistral-7B-Instruct-v0.2", limited)
    peak = _at_utilization(dep.model, limited, 0.85)
    skip = _only(list(QuantizationCapability().analyze(_snapshot(dep, peak, 0.5), SETTINGS)))
    assert isinstance(skip, Skip) and "batch_tuning first" in skip.reason
    config = default_config("g5.2xlarge", 3)  # A10G: no FP8
    dep = _deployment("Mistral-7B-Instruct-v0.2", config)
    peak = _at_utilization(dep.model, config, 0.85)
    item = _only(list(QuantizationCapability().analyze(_snapshot(dep, peak, 0.5), SETTINGS)))
    assert isinstance(item, Proposal), item
    fp8 = next(o for o in item.evidence.options if o.quantization is Quantization.FP8)
    assert not fp8.fits and "FP8 needs FP8 tensor cores" in fp8.why_not
    assert item.desired.engine.quantization is Quantization.INT8  # least lossy that holds the SLO plan
    assert 1.0 < item.evidence.expected_quality_drop_pct < SETTINGS.max_quality_drop_pct
    assert item.estimate.throughput_change_pct > 50
    validate_config(dep.model, item.desired)
    # A cool deployment is left alone.
    cool = _only(list(QuantizationCapability().analyze(_snapshot(dep, 0.01, 0.1), SETTINGS)))
    assert isinstance(cool, Skip) and cool.reason.startswith("runs cool")


def test_parallelism_moves_a_model_that_does_not_fit_to_a_layout_that_does() -> None:
    config = default_config("g6e.xlarge", 1)  # one L40S cannot hold Llama-3.1-70B in bf16
    dep = _deployment("Llama-3.1-70B", config)
    assert not forecast_config(dep.model, config, 0.1).fits
    proposal = _only(list(Parallelism().analyze(_snapshot(dep, 0.2, 0.5), SETTINGS)))
    assert isinstance(proposal, Proposal), proposal
    ev = proposal.evidence
    assert ev.trigger == "does_not_fit" and not ev.current_fits and ev.before is None
    assert ev.proposed_layout.gpus_per_replica > 1 and ev.proposed_layout.interconnect == "pcie"
    validate_config(dep.model, proposal.desired)
    assert splits(8) == [(8, 1), (4, 2), (2, 4), (1, 8)] and splits(1) == [(1, 1)]


def test_the_gpu_table_takes_the_names_people_write() -> None:
    for name, canonical in {
        "A100-80GB": "A100 80GB",
        "a100 80gb": "A100 80GB",
        "Tesla T4": "T4",
        "NVIDIA GeForce RTX 4090": "RTX 4090",
        "RTX 6000 Ada": "RTX 6000 Ada",
        "NVIDIA H100 PCIe": "H100 PCIe",
        "H100": "H100 SXM",
        "RTX A5000": "RTX A5000",
        "L40": "L40",
    }.items():
        assert gpu(name).name == canonical, name
    with pytest.raises(KeyError, match="did you mean A100 40GB or A100 80GB"):
        gpu("A100")
    assert instance_type("g6e.12xlarge").interconnect == "pcie"
    assert instance_type("p4d.24xlarge").interconnect == "nvlink"
    assert instance_type("g6e.xlarge").interconnect == "none"


def _hourly(column: str, jump: float | None, last_load: float = 5.0, hours: int = 168) -> pl.DataFrame:
    hour = np.arange(hours)
    values = 100.0 + 10.0 * np.sin(2 * np.pi * hour / 24) + 0.5 * np.cos(hour * 1.7)
    load = 5.0 + np.sin(2 * np.pi * hour / 24)
    if jump is not None:
        values[-1] = jump
    load[-1] = last_load
    return pl.DataFrame(
        {
            "customer_id": "c",
            "deployment_id": "dep",
            "hour": [START + timedelta(hours=int(h)) for h in hour],
            column: values,
            "requests_per_s_avg": load,
            "kv_cache_usage_avg": np.full(hours, 0.4),
        }
    )


def _detect(frame: pl.DataFrame, launched_hours_ago: float | None = None):
    dep = _deployment("Llama-3.1-8B", default_config("g6e.xlarge", 2))
    last_hour = START + timedelta(hours=frame.height - 1)
    instances = [
        Instance(
            id=f"i-{n}",
            deployment_id="dep",
            instance_type="g6e.xlarge",
            lifecycle=Lifecycle.ON_DEMAND,
            launched_at=START - timedelta(days=30),
        )
        for n in range(2)
    ]
    if launched_hours_ago is not None:
        instances[1] = instances[1].model_copy(
            update={
                "launched_at": last_hour - timedelta(hours=launched_hours_ago),
                "engine": dep.config.engine.model_copy(update={"max_num_seqs": 64}),
            }
        )
    snap = FleetSnapshot(
        customers=[CUSTOMER], deployments=[dep], instances=instances, hourly={"performance": frame}
    )
    return LatencyAnomalies().detect(snap, SETTINGS)


def test_ttft_and_itl_anomalies_after_a_change_say_so() -> None:
    (ttft,) = _detect(_hourly("ttft_ms_p50", 400.0), launched_hours_ago=1)
    assert ttft.metric == "ttft_ms" and ttft.severity is Risk.MEDIUM
    assert ttft.explanation.startswith(
        "a regression after a change: 1 instance launched with a different engine"
    )
    (itl,) = _detect(_hourly("itl_ms_p50", 400.0))
    assert (
        itl.metric == "itl_ms" and "a regression" in itl.explanation and "change" not in itl.explanation[:15]
    )
    assert _detect(_hourly("itl_ms_p50", None)) == []


def test_throughput_falls_with_load_is_low_severity_and_without_it_is_a_regression() -> None:
    (less_demand,) = _detect(_hourly("tokens_per_s_avg", 20.0, last_load=2.0))
    assert less_demand.metric == "tokens_per_s" and less_demand.severity is Risk.LOW
    assert less_demand.explanation.startswith("load:")
    (slower,) = _detect(_hourly("tokens_per_s_avg", 20.0))
    assert slower.severity is Risk.MEDIUM and "regression" in slower.explanation
    # more throughput than usual is no problem
    assert _detect(_hourly("tokens_per_s_avg", 300.0)) == []
