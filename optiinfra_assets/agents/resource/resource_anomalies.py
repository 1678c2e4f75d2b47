"""Resource anomalies: each deployment's hourly GPU utilization, memory and power through the shared anomaly
detector (agents/anomaly.py), with what explains an anomalous hour."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import polars as pl

from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.findings import hourly_series, newest_hour_anomalies, usual_before
from optiinfra_assets.agents.resource import AGENT
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Deployment, Risk
from optiinfra_assets.snapshot import FleetSnapshot

NAME = "resource_anomalies"
# hourly column -> (metric name, unit)
METRICS = {
    "gpu_util_pct_avg": ("gpu_util_pct", "%"),
    "gpu_mem_used_gib_avg": ("gpu_mem_used_gib", "GiB"),
    "power_w_avg": ("power_w", "W"),
}
LOAD, KV = "requests_per_s_avg", "kv_cache_usage_avg"
# A change in load of this share explains a change in utilization or power by itself.
LOAD_CHANGE = 0.25
# Memory held this close to the GPU's total leaves no room for CUDA graphs or a spike: high severity.
MEMORY_FULL = 0.98


def explain(metric: str, resource: pl.DataFrame, performance: pl.DataFrame, last: int) -> str:
    """Why the newest hour of ``metric`` is unusual: load, KV cache, memory held, or nothing we can see."""
    if not performance.is_empty() and LOAD in performance.columns and performance.height == resource.height:
        load = performance[LOAD].fill_null(0.0).to_numpy()
        usual = usual_before(load, last)
        if usual > 0 and abs(load[last] / usual - 1.0) >= LOAD_CHANGE and metric != "gpu_mem_used_gib":
            return f"load: {load[last]:.2f} req/s against a usual {usual:.2f} moves GPU work with it"
        if metric == "gpu_mem_used_gib" and KV in performance.columns:
            return (
                f"memory held changed while KV-cache use is {performance[KV][last]:.0%}: an engine config "
                "change (gpu_memory_utilization, model) or a process outside vLLM on the GPU"
            )
    if metric == "power_w":
        return "power moved without utilization or load to match: throttling (thermal or power cap) or a clock change"
    return "no load change explains it: a stuck process, a hardware issue or an engine change"


class ResourceAnomalies(Detector):
    name: ClassVar[str] = NAME
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Hourly GPU utilization, memory and power per deployment through the shared anomaly detector, "
        "explained by load, KV cache or an engine change."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        # Every series of the fleet first, then the shared detector on all of them at once.
        checks: list[tuple[Deployment, pl.DataFrame, str]] = []
        series: list[tuple[np.ndarray, np.ndarray]] = []
        for deployment, rows in hourly_series(snapshot, "resource"):
            hours = rows["hour"].to_numpy()
            for column in METRICS:
                if column in rows.columns:
                    values = rows[column].fill_null(strategy="forward").fill_null(0.0).to_numpy()
                    checks.append((deployment, rows, column))
                    series.append((values.astype(np.float64), hours))
        findings: list[Finding] = []
        for (deployment, rows, column), newest in zip(checks, newest_hour_anomalies(series), strict=True):
            if newest is None:
                continue
            metric, unit = METRICS[column]
            perf = snapshot.hourly_of("performance", deployment.id)
            last, usual = newest.last, newest.usual
            severity = Risk.MEDIUM
            total = rows["gpu_mem_total_gib_avg"][last] if "gpu_mem_total_gib_avg" in rows.columns else None
            if metric == "gpu_mem_used_gib" and total and newest.value >= MEMORY_FULL * float(total):
                severity = Risk.HIGH
            findings.append(
                Finding(
                    detector=NAME,
                    customer_id=deployment.customer_id,
                    deployment_id=deployment.id,
                    severity=severity,
                    metric=metric,
                    value=round(newest.value, 2),
                    expected=round(usual, 2),
                    since=str(rows["hour"][last]),
                    summary=(
                        f"{metric} of {deployment.id} is anomalous in the last hour: {newest.value:.1f} {unit} "
                        f"against a usual {usual:.1f} {unit} (score {newest.score:.2f}, "
                        f"{newest.view})"
                    ),
                    explanation=explain(metric, rows, perf, last),
                )
            )
        return findings
