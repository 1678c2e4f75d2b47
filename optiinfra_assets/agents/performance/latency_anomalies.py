"""Latency anomalies: each deployment's hourly p95 latency through the shared anomaly detector, with what
explains an anomalous hour (more load, KV-cache pressure, or nothing we can see: a regression)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from optiinfra_assets.agents.anomaly import detect
from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.performance import AGENT
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Risk
from optiinfra_assets.snapshot import FleetSnapshot

METRIC = "latency_p95_ms_p50"  # per hour: the median of the per-second p95s
LOAD = "requests_per_s_avg"
KV = "kv_cache_usage_avg"
# KV-cache use above this means new requests queue for cache blocks (vLLM preempts near 100%).
KV_PRESSURE = 0.9
# Load this much above its usual level explains higher latency by itself.
LOAD_RISE = 1.25


def _explain(rows, last: int) -> str:
    load = rows[LOAD].to_numpy()
    usual_load = float(np.median(load[:last])) if last else float(load[last])
    if rows[KV][last] >= KV_PRESSURE:
        return f"KV-cache pressure: {rows[KV][last]:.0%} of the cache in use"
    if usual_load > 0 and load[last] >= LOAD_RISE * usual_load:
        return f"load: {load[last]:.2f} req/s against a usual {usual_load:.2f}"
    return "no load or KV-cache change explains it: a regression (a change, a model or engine issue)"


class LatencyAnomalies(Detector):
    name: ClassVar[str] = "latency_anomalies"
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Hourly p95 latency per deployment through the shared anomaly detector, explained by load, "
        "KV-cache pressure or a regression."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        findings: list[Finding] = []
        for deployment in snapshot.deployments:
            rows = snapshot.hourly_of("performance", deployment.id)
            if rows.is_empty() or METRIC not in rows.columns:
                continue
            values = rows[METRIC].to_numpy().astype(np.float64)
            result = detect(values, rows["hour"].to_numpy())
            last = len(values) - 1
            if not bool(result.is_anomaly[last]) or values[last] <= np.median(values):
                continue  # only the newest hour matters now; faster than usual is no problem
            customer = snapshot.customer_by_id.get(deployment.customer_id)
            slo = customer.slo_p95_latency_ms if customer else float("inf")
            findings.append(
                Finding(
                    detector=self.name,
                    customer_id=deployment.customer_id,
                    deployment_id=deployment.id,
                    severity=Risk.HIGH if values[last] > slo else Risk.MEDIUM,
                    metric="latency_p95_ms",
                    value=round(float(values[last]), 1),
                    expected=round(float(np.median(values[:last] if last else values)), 1),
                    since=str(rows["hour"][last]),
                    summary=(
                        f"p95 latency of {deployment.id} is anomalous in the last hour: "
                        f"{values[last]:.0f} ms (score {float(result.score[last]):.2f})"
                    ),
                    explanation=_explain(rows, last),
                )
            )
        return findings
