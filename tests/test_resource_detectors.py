"""The resource agent's monitors and KV-cache optimization: pure cases on hand-built hourly rows, and the
real engines through the workflow on the sandbox fleet (idle GPUs found, nothing broken)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from workflow_fixtures import Clock

from optiinfra_assets import sandbox
from optiinfra_assets.agents.capability import Proposal, Skip
from optiinfra_assets.agents.resource.gpu_utilization import GpuUtilization, idle_window
from optiinfra_assets.agents.resource.kv_cache_optimization import (
    KvCacheOptimization,
    KvCacheOptimizationEvidence,
)
from optiinfra_assets.agents.resource.resource_anomalies import ResourceAnomalies
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Risk
from optiinfra_assets.snapshot import FleetSnapshot
from optiinfra_assets.workflow import Services, run_analysis_pass

SETTINGS = DecisionSettings()
START = datetime(2026, 1, 5, tzinfo=UTC)
DEP = "acme-chat-8b"


def _snapshot(
    resource: dict[str, np.ndarray] | None = None, performance: dict[str, np.ndarray] | None = None
):
    customers, deployments, instances = sandbox.initial_fleet(1, START)
    hourly = {}
    for domain, columns in (("resource", resource), ("performance", performance)):
        if columns is None:
            continue
        n = len(next(iter(columns.values())))
        hours = [START + timedelta(hours=h) for h in range(n)]
        hourly[domain] = pl.DataFrame(
            {"customer_id": ["acme"] * n, "deployment_id": [DEP] * n, "hour": hours}
            | {k: v.astype(np.float64) for k, v in columns.items()}
        )
    return FleetSnapshot(customers, deployments, instances, taken_at=START, hourly=hourly)


def test_idle_window_tells_idle_from_underused_and_busy() -> None:
    low = np.full(30, 8.0)
    assert idle_window(low, low + 5, 20.0, 24) == "idle"
    assert idle_window(low, low + 40, 20.0, 24) == "underused"  # bursts use the GPUs; the mean does not
    assert idle_window(low + 30, low + 40, 20.0, 24) is None
    assert idle_window(low[:10], low[:10], 20.0, 24) is None  # not a day of history yet


def test_gpu_utilization_reports_a_day_of_idle_gpus() -> None:
    n = 48
    util = np.concatenate([np.full(24, 60.0), np.full(24, 5.0)])
    snap = _snapshot(
        {
            "gpu_util_pct_avg": util,
            "gpu_util_pct_p95": util + 4,
            "gpu_mem_used_gib_avg": np.full(n, 40.0),
            "power_w_avg": np.full(n, 110.0),
        }
    )
    (finding,) = GpuUtilization().detect(snap, SETTINGS)
    assert finding.deployment_id == DEP and finding.metric == "gpu_util_pct"
    assert finding.severity is Risk.MEDIUM and finding.value == 5.0 and finding.expected == 20.0
    assert "idle" in finding.summary and "right-sizing" in finding.explanation
    busy = _snapshot({"gpu_util_pct_avg": np.full(n, 60.0), "gpu_util_pct_p95": np.full(n, 70.0)})
    assert GpuUtilization().detect(busy, SETTINGS) == []


def test_resource_anomalies_flag_and_explain_the_last_hour() -> None:
    n = 24 * 8
    rng = np.random.default_rng(0)
    hours = np.arange(n)
    load = 10 + 3 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.2, n)
    util = 50 + 15 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, n)
    power = 300 + 80 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 5, n)
    util[-1] = 99.0  # a stuck process: the GPUs busy with no more load
    snap = _snapshot(
        {"gpu_util_pct_avg": util, "gpu_mem_used_gib_avg": np.full(n, 40.0), "power_w_avg": power},
        {"requests_per_s_avg": load, "kv_cache_usage_avg": np.full(n, 0.3)},
    )
    findings = ResourceAnomalies().detect(snap, SETTINGS)
    util_findings = [f for f in findings if f.metric == "gpu_util_pct"]
    assert util_findings, findings
    assert util_findings[0].value == 99.0 and "no load change" in util_findings[0].explanation
    # with load that doubled in the same hour, the load explains it
    load[-1] = 2.5 * load[-2]
    snap = _snapshot(
        {"gpu_util_pct_avg": util, "gpu_mem_used_gib_avg": np.full(n, 40.0), "power_w_avg": power},
        {"requests_per_s_avg": load, "kv_cache_usage_avg": np.full(n, 0.3)},
    )
    explained = [f for f in ResourceAnomalies().detect(snap, SETTINGS) if f.metric == "gpu_util_pct"]
    assert explained and explained[0].explanation.startswith("load:")


def test_kv_cache_optimization_gives_a_full_cache_room_and_skips_a_calm_one() -> None:
    n = 24
    full = _snapshot(None, {"kv_cache_usage_p95": np.full(n, 0.96), "kv_cache_usage_p99": np.full(n, 0.995)})
    items = list(KvCacheOptimization().analyze(full, SETTINGS))
    proposal = next(i for i in items if isinstance(i, Proposal))
    ev = proposal.evidence
    assert isinstance(ev, KvCacheOptimizationEvidence) and ev.deployment_id == DEP
    assert ev.preempting_hours == n and ev.kv_tokens_after > ev.kv_tokens_before
    assert ev.option.startswith("FP8 KV cache") or "offload" in ev.option
    changed = proposal.current.changes(proposal.desired)
    assert set(changed) <= {"engine.kv_cache_dtype", "engine.kv_offload_gib", "engine.enable_prefix_caching"}
    calm = _snapshot(None, {"kv_cache_usage_p95": np.full(n, 0.4), "kv_cache_usage_p99": np.full(n, 0.5)})
    skips = [i for i in KvCacheOptimization().analyze(calm, SETTINGS) if i.deployment_id == DEP]
    assert isinstance(skips[0], Skip) and "no KV pressure" in skips[0].reason


def test_the_resource_monitors_run_on_the_sandbox(svc: Services, clock: Clock) -> None:
    report = run_analysis_pass(
        svc, clock(), capabilities=(KvCacheOptimization(),), detectors=(GpuUtilization(), ResourceAnomalies())
    )
    for name in ("gpu_utilization", "resource_anomalies"):
        assert report.detectors[name].error is None, report.detectors[name].error
    assert report.capabilities["kv_cache_optimization"].error is None
    idle = {f.deployment_id for f in report.detectors["gpu_utilization"].findings}
    assert "initech-idle-mistral7b" in idle  # 6% at the weekday peak: idle all day
    assert "acme-chat-8b" not in idle
