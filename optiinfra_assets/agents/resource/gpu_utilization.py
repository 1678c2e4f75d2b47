"""GPU utilization monitoring: each deployment's GPUs, hour by hour, with findings for idle and underused ones.

Per GPU the collectors record utilization, memory and power (NVML on real hosts through resources/sources.py's
``nvml`` source, the sandbox otherwise); the hourly rollup keeps each deployment's mean and p50/p95/p99 of
them. A deployment whose GPUs stayed under ``idle_gpu_util_pct`` for ``idle_gpu_min_hours`` (a day by
default) is reported: **idle** when even its p95 stayed under the line (no burst used the GPUs either),
**underused** when only its mean did. Right-sizing and consolidation read these findings from
``snapshot.findings`` (metric ``gpu_util_pct``, value = the window's mean, expected = the line).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.findings import hourly_series
from optiinfra_assets.agents.resource import AGENT
from optiinfra_assets.catalog import instance_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Risk
from optiinfra_assets.snapshot import FleetSnapshot

UTIL, UTIL_P95 = "gpu_util_pct_avg", "gpu_util_pct_p95"
MEMORY, POWER = "gpu_mem_used_gib_avg", "power_w_avg"
NAME = "gpu_utilization"


def idle_window(util_avg: np.ndarray, util_p95: np.ndarray, line: float, hours: int) -> str | None:
    """ "idle", "underused" or None for the last ``hours`` hourly rows (too few rows: None)."""
    if util_avg.size < hours:
        return None
    recent_avg, recent_p95 = util_avg[-hours:], util_p95[-hours:]
    if np.all(recent_p95 < line):
        return "idle"
    if float(np.mean(recent_avg)) < line:
        return "underused"
    return None


class GpuUtilization(Detector):
    name: ClassVar[str] = NAME
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "GPU utilization, memory and power per deployment's GPUs; findings for GPUs idle or underused "
        "for a day, which right-sizing and consolidation act on."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        findings: list[Finding] = []
        line, hours = settings.idle_gpu_util_pct, settings.idle_gpu_min_hours
        for deployment, rows in hourly_series(snapshot, "resource"):
            if UTIL not in rows.columns:
                continue
            util = rows[UTIL].fill_null(0.0).to_numpy().astype(np.float64)
            p95 = (
                rows[UTIL_P95].fill_null(0.0).to_numpy().astype(np.float64)
                if UTIL_P95 in rows.columns
                else util
            )
            state = idle_window(util, p95, line, hours)
            if state is None:
                continue
            itype = instance_type(deployment.instance_type)
            gpus = itype.gpu_count * deployment.replicas
            mean = float(np.mean(util[-hours:]))
            memory = (
                float(np.mean(rows[MEMORY].to_numpy()[-hours:])) if MEMORY in rows.columns else float("nan")
            )
            power = float(np.mean(rows[POWER].to_numpy()[-hours:])) if POWER in rows.columns else float("nan")
            idle_usd = gpus * itype.ondemand_usd_hour / itype.gpu_count * (1.0 - mean / 100.0)
            findings.append(
                Finding(
                    detector=NAME,
                    customer_id=deployment.customer_id,
                    deployment_id=deployment.id,
                    severity=Risk.MEDIUM if state == "idle" else Risk.LOW,
                    metric="gpu_util_pct",
                    value=round(mean, 2),
                    expected=line,
                    since=str(rows["hour"][len(util) - hours]),
                    summary=(
                        f"{gpus} {itype.gpu.name} GPU{'s' if gpus != 1 else ''} of {deployment.id} {state} for "
                        f"{hours} h: mean utilization {mean:.1f}% (p95 {float(np.max(p95[-hours:])):.1f}% at "
                        f"most) under the {line:.0f}% line"
                    ),
                    explanation=(
                        f"{state}: memory {memory:.1f} GiB held per instance (vLLM preallocates it), power "
                        f"{power:.0f} W per instance; ~${idle_usd:.2f}/h of GPU time unused - a right-sizing "
                        "or consolidation candidate"
                    ),
                )
            )
        return findings
