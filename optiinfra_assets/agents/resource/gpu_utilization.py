"""GPU utilization monitoring: each deployment's GPUs, hour by hour, with findings for idle and underused ones.

Per GPU the collectors record utilization, memory, power, SM clock and throttle reasons (NVML on real hosts
through resources/sources.py's ``nvml`` source, the sandbox otherwise); the hourly rollup keeps each
deployment's mean and p50/p95/p99 of the first three, the mean SM clock and the share of samples throttled
per reason group (ThrottleReason.GROUPS: power cap, thermal, hardware slowdown). A deployment whose GPUs
stayed under ``idle_gpu_util_pct`` for ``idle_gpu_min_hours`` (a day by default) is reported: **idle** when
even its p95 stayed under the line (no burst used the GPUs either), **underused** when only its mean did. Right-sizing and consolidation read these findings from
``snapshot.findings`` (metric ``gpu_util_pct``, value = the window's mean, expected = the line).

A deployment whose GPUs were throttled in at least ``gpu_throttle_share`` of the samples of the last
``gpu_throttle_window_hours`` for one reason group is reported too (metric ``throttle_<group>``, value = the
share), naming the reason and the SM clock it cost: a power cap means the GPUs run at their power limit
(saturated: the serving model's throughput is an upper bound), thermal or hardware slowdown a cooling or
board fault to look at on the host.

Where a source reports per-GPU rows (``gpu`` domain: NVML, the sandbox; a Prometheus scrape has none) the
detector also reads each GPU's hourly figures: a throttle finding names the GPU(s) throttled while their
siblings on the same instance were not, and one GPU idle while its siblings work is a finding of its own
(metric ``gpu_util_pct_per_gpu``). Without per-GPU rows it behaves as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import numpy as np
import polars as pl

from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.findings import hourly_series
from optiinfra_assets.agents.resource import AGENT
from optiinfra_assets.catalog import instance_type
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import Domain, ThrottleReason
from optiinfra_assets.models import Deployment, Risk
from optiinfra_assets.snapshot import FleetSnapshot

UTIL, UTIL_P95 = "gpu_util_pct_avg", "gpu_util_pct_p95"
MEMORY, POWER = "gpu_mem_used_gib_avg", "power_w_avg"
SM_CLOCK = "sm_clock_mhz_avg"
NAME = "gpu_utilization"
PER_GPU_IDLE = "gpu_util_pct_per_gpu"  # the metric of a finding on one GPU idle beside busy siblings


@dataclass(frozen=True)
class OddGpu:
    """A GPU whose figure crossed a line while at least one sibling on its instance did not."""

    instance_id: str
    gpu_index: str
    value: float  # its mean over the window
    siblings: float  # the mean of its siblings that did not cross the line
    n_siblings: int

    def name(self) -> str:
        return f"GPU {self.gpu_index} of {self.instance_id}"


def odd_gpus(
    gpu_rows: pl.DataFrame, column: str, hours: int, crossed: Callable[[float], bool], *, full: bool = False
) -> list[OddGpu]:
    """The GPUs (per-GPU hourly rows of one deployment) whose mean ``column`` over the last ``hours`` hours
    ``crossed`` the line while a sibling's did not; ``full``: only GPUs with a row for each of those hours."""
    if gpu_rows.is_empty() or column not in gpu_rows.columns:
        return []
    since = gpu_rows["hour"].max() - timedelta(hours=hours - 1)  # type: ignore[operator]
    per_gpu = (
        gpu_rows.filter(pl.col("hour") >= since)
        .group_by("instance_id", "gpu_index")
        .agg(pl.col(column).fill_nan(None).mean().alias("value"), pl.len().alias("hours"))
        .filter(pl.col("value").is_not_null() & (pl.col("hours") >= (hours if full else 1)))
        .sort("instance_id", "gpu_index")
    )
    out: list[OddGpu] = []
    for (instance_id,), gpus in per_gpu.partition_by(
        "instance_id", as_dict=True, maintain_order=True
    ).items():
        values = dict(zip(gpus["gpu_index"].to_list(), gpus["value"].to_list(), strict=True))
        odd = {g: v for g, v in values.items() if crossed(v)}
        calm = [v for g, v in values.items() if g not in odd]
        if odd and calm:
            out += [
                OddGpu(str(instance_id), g, v, float(np.mean(calm)), len(values) - 1) for g, v in odd.items()
            ]
    return out


def _named(odd: list[OddGpu], what: str) -> str:
    """ "; only GPU 2 of i-abc (power cap 100%; its 3 siblings 0%)" for a finding's summary ("" for none)."""
    if not odd:
        return ""
    return "; only " + ", ".join(
        f"{g.name()} ({what} {g.value:.0%}; its {g.n_siblings} sibling{'s' if g.n_siblings != 1 else ''} "
        f"{g.siblings:.0%})"
        for g in odd
    )


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


def throttled_shares(rows: pl.DataFrame, hours: int) -> dict[str, float]:
    """Per reason group, the share of the last ``hours`` hourly rows' samples throttled for it (hours
    that did not report throttle reasons left out; a group no hour reported is absent)."""
    recent = rows.tail(hours)
    shares: dict[str, float] = {}
    for group in ThrottleReason.GROUPS:
        column = f"throttle_{group}_avg"
        if column not in recent.columns:
            continue
        values = recent[column].fill_null(float("nan")).to_numpy().astype(np.float64)
        if np.isfinite(values).any():
            shares[group] = float(np.nanmean(values))
    return shares


def _throttle_finding(
    deployment: Deployment, rows: pl.DataFrame, settings: DecisionSettings, gpu_rows: pl.DataFrame
) -> Finding | None:
    hours = settings.gpu_throttle_window_hours
    shares = throttled_shares(rows, hours)
    throttled = {g: share for g, share in shares.items() if share >= settings.gpu_throttle_share}
    if not throttled:
        return None
    group = max(throttled, key=lambda g: throttled[g])
    share = throttled[group]
    named = ", ".join(f"{ThrottleReason.GROUPS[g][1]} {s:.0%}" for g, s in throttled.items())
    clock_note = ""
    if SM_CLOCK in rows.columns:
        clocks = rows[SM_CLOCK].fill_null(float("nan")).to_numpy().astype(np.float64)
        recent, best = clocks[-hours:], clocks[np.isfinite(clocks)]
        if np.isfinite(recent).any() and best.size:
            clock_note = (
                f"; SM clock {float(np.nanmean(recent)):.0f} MHz against {float(np.max(best)):.0f} MHz at "
                "its best hour"
            )
    line, label = settings.gpu_throttle_share, ThrottleReason.GROUPS[group][1]
    gpus_note = _named(odd_gpus(gpu_rows, f"throttle_{group}_avg", hours, lambda v: v >= line), label)
    if group == "power":
        why = (
            "the GPUs run at their power limit: saturated, each replica serves no more than it does now; "
            "more replicas (autoscaling) spread the load, FP8 weights take less energy per token"
        )
    else:
        why = "a cooling or board fault: check the host's fans, airflow and GPU health (nvidia-smi -q -d PERFORMANCE)"
    return Finding(
        detector=NAME,
        customer_id=deployment.customer_id,
        deployment_id=deployment.id,
        severity=Risk.LOW if group == "power" else Risk.MEDIUM,
        metric=f"throttle_{group}",
        value=round(share, 3),
        expected=settings.gpu_throttle_share,
        since=str(rows["hour"][max(rows.height - hours, 0)]),
        summary=(
            f"GPUs of {deployment.id} throttled by {ThrottleReason.GROUPS[group][1]} in {share:.0%} of the "
            f"last {hours} h{clock_note}{gpus_note}"
        ),
        explanation=f"throttle reasons: {named}; {why}",
    )


def _idle_gpu_finding(
    deployment: Deployment, gpu_rows: pl.DataFrame, settings: DecisionSettings
) -> Finding | None:
    """GPUs under the idle line for the whole idle window while a sibling on their instance was above it: a
    GPU the engine does not use (tensor parallelism over fewer GPUs than the instance has, a device hidden by
    CUDA_VISIBLE_DEVICES) or one that dropped out. The instance-level mean hides it."""
    line, hours = settings.idle_gpu_util_pct, settings.idle_gpu_min_hours
    odd = odd_gpus(gpu_rows, "gpu_util_pct_avg", hours, lambda v: v < line, full=True)
    if not odd:
        return None
    named = ", ".join(
        f"{g.name()} at {g.value:.1f}% while its {g.n_siblings} sibling{'s' if g.n_siblings != 1 else ''} "
        f"averaged {g.siblings:.1f}%"
        for g in odd
    )
    since = gpu_rows["hour"].max() - timedelta(hours=hours - 1)  # type: ignore[operator]
    return Finding(
        detector=NAME,
        customer_id=deployment.customer_id,
        deployment_id=deployment.id,
        severity=Risk.MEDIUM,
        metric=PER_GPU_IDLE,
        value=round(min(g.value for g in odd), 2),
        expected=line,
        since=str(since),
        summary=f"{len(odd)} GPU{'s' if len(odd) != 1 else ''} of {deployment.id} idle for {hours} h beside busy "
        f"siblings: {named}",
        explanation=(
            f"under the {line:.0f}% line on average while the same instance's other GPUs were not: a GPU the "
            "engine does not use (tensor parallelism over fewer GPUs than the instance holds, a device hidden "
            "by CUDA_VISIBLE_DEVICES) or one that dropped out; check nvidia-smi and the engine's "
            "tensor_parallel_size"
        ),
    )


class GpuUtilization(Detector):
    name: ClassVar[str] = NAME
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "GPU utilization, memory, power, SM clock and throttle reasons per deployment's GPUs; findings for "
        "GPUs idle or underused for a day, which right-sizing and consolidation act on, and for throttled ones."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        findings: list[Finding] = []
        line, hours = settings.idle_gpu_util_pct, settings.idle_gpu_min_hours
        for deployment, rows in hourly_series(snapshot, "resource"):
            gpu_rows = snapshot.hourly_of(str(Domain.GPU), deployment.id)
            throttled = _throttle_finding(deployment, rows, settings, gpu_rows)
            if throttled is not None:
                findings.append(throttled)
            idle_gpus = _idle_gpu_finding(deployment, gpu_rows, settings)
            if idle_gpus is not None:
                findings.append(idle_gpus)
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
