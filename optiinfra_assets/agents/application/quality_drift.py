"""Quality drift: each deployment's hourly quality, hallucination and toxicity against its own rolling and
seasonal baselines, with the offending responses as evidence.

A deployment serves one model on one endpoint, so its hourly rollup (``quality`` domain of the snapshot) is
the baseline per deployment, model and endpoint. For the newest hour of each metric:

* the **baseline** is seasonal where the history allows it (the median of the same hour of the day on
  earlier days: quality follows the traffic mix of the day) and rolling otherwise (the median of the
  earlier hours of the lookback); its spread is the robust scale (1.4826 x MAD) of the earlier hours;
* a **drift** is a shift the bad way that matters (``*_drift_min_rise`` for hallucination and toxicity,
  the quality gate for quality) *and* stands out: the shared anomaly detector (agents/anomaly.py) flags the
  hour, or the shift exceeds ``quality_drift_robust_z`` robust z-scores of the baseline.

The finding's explanation quotes the worst sampled responses of the hour (the snapshot's
``worst_requests``, read from the stored request text), so the person reading it sees what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import polars as pl

from optiinfra_assets.agents.anomaly import detect
from optiinfra_assets.agents.application import AGENT
from optiinfra_assets.agents.capability import Detector, Finding
from optiinfra_assets.agents.findings import hourly_series
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Risk
from optiinfra_assets.snapshot import FleetSnapshot

# Seasonal baselines need this many earlier days of the same hour; fewer: the rolling one.
MIN_SEASONAL_DAYS = 3
# Hours of history before any drift is judged: the anomaly detector's warm-up is longer, the robust band
# needs about a day.
MIN_HISTORY_HOURS = 24
QUOTED_RESPONSE_CHARS = 160
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class _Watched:
    metric: str  # the quality measure (finding.metric)
    column: str  # its hourly mean in the snapshot
    higher_is_worse: bool


_WATCHED = (
    _Watched("hallucination_score", "hallucination_score_avg", True),
    _Watched("toxicity_score", "toxicity_score_avg", True),
    _Watched("quality_score", "quality_score_avg", False),
)


@dataclass(frozen=True)
class Baseline:
    expected: float
    scale: float  # robust standard deviation of the earlier hours
    kind: str  # "seasonal" or "rolling"


def baseline(values: np.ndarray, hours: np.ndarray) -> Baseline:
    """The newest hour's baseline from the earlier ones: seasonal (same hour of the day) when at least
    MIN_SEASONAL_DAYS earlier days have that hour, else rolling."""
    history = values[:-1]
    hour_of_day = (hours.astype("datetime64[h]").astype(np.int64)) % 24
    same_hour = history[hour_of_day[:-1] == hour_of_day[-1]]
    same_hour = same_hour[np.isfinite(same_hour)]
    finite = history[np.isfinite(history)]
    scale = MAD_TO_SD * float(np.median(np.abs(finite - np.median(finite)))) if finite.size else 0.0
    if same_hour.size >= MIN_SEASONAL_DAYS:
        return Baseline(float(np.median(same_hour)), scale, "seasonal")
    return Baseline(float(np.median(finite)) if finite.size else float("nan"), scale, "rolling")


def _min_shift(watched: _Watched, expected: float, settings: DecisionSettings) -> float:
    if watched.metric == "hallucination_score":
        return settings.hallucination_drift_min_rise
    if watched.metric == "toxicity_score":
        return settings.toxicity_drift_min_rise
    return expected * settings.max_quality_drop_pct / 100.0


def _quote(worst: pl.DataFrame, deployment_id: str, metric: str) -> str:
    """The deployment's worst stored responses by ``metric`` (or by either score, for quality)."""
    if worst.is_empty():
        return "no request text stored for the hour"
    rows = worst.filter(pl.col("deployment_id") == deployment_id)
    if metric != "quality_score":
        rows = rows.filter(pl.col("worst_by") == metric)
    rows = rows.sort(metric, descending=metric != "quality_score")  # worst first
    quotes = []
    for row in rows.unique("request_id", keep="first", maintain_order=True).head(3).iter_rows(named=True):
        text = " ".join(str(row["response"]).split())
        if len(text) > QUOTED_RESPONSE_CHARS:
            text = text[: QUOTED_RESPONSE_CHARS - 1] + "…"
        checks = f", failed {row['failed_checks']}" if row["failed_checks"] else ""
        quotes.append(
            f"«{text}» ({metric.removesuffix('_score')} {row[metric]:.2f}{checks}; {row['request_id']})"
        )
    return "offending responses: " + " | ".join(quotes) if quotes else "no request text stored for the hour"


class QualityDrift(Detector):
    name: ClassVar[str] = "quality_drift"
    agent: ClassVar[str] = AGENT
    description: ClassVar[str] = (
        "Hourly hallucination, toxicity and quality per deployment against rolling and seasonal "
        "baselines; a drift quotes the offending responses."
    )

    def detect(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> list[Finding]:
        findings: list[Finding] = []
        for deployment, rows in hourly_series(snapshot, "quality", min_hours=MIN_HISTORY_HOURS + 1):
            hours = rows["hour"].to_numpy()
            for watched in _WATCHED:
                if watched.column not in rows.columns:
                    continue
                finding = self._judge(
                    snapshot, settings, deployment.id, deployment.customer_id, rows, hours, watched
                )
                if finding is not None:
                    findings.append(finding)
        return findings

    def _judge(
        self,
        snapshot: FleetSnapshot,
        settings: DecisionSettings,
        deployment_id: str,
        customer_id: str,
        rows: pl.DataFrame,
        hours: np.ndarray,
        watched: _Watched,
    ) -> Finding | None:
        values = rows[watched.column].to_numpy().astype(np.float64)
        last = float(values[-1])
        base = baseline(values, hours)
        if not np.isfinite(last) or not np.isfinite(base.expected):
            return None
        shift = (last - base.expected) if watched.higher_is_worse else (base.expected - last)
        if shift < _min_shift(watched, base.expected, settings):
            return None
        signed = values if watched.higher_is_worse else -values
        anomalous = bool(detect(signed, hours).is_anomaly[-1])
        z = shift / base.scale if base.scale > 0 else float("inf")
        if not anomalous and z < settings.quality_drift_robust_z:
            return None
        why = "the anomaly detector flags the hour" if anomalous else f"{z:.1f} robust z-scores"
        # Toxic output and a quality drop over the gate reach users as harm; more unsupported detail is
        # worth a look first.
        severity = Risk.MEDIUM if watched.metric == "hallucination_score" else Risk.HIGH
        label = watched.metric.removesuffix("_score")
        direction = "rose" if watched.higher_is_worse else "fell"
        return Finding(
            detector=self.name,
            customer_id=customer_id,
            deployment_id=deployment_id,
            severity=severity,
            metric=watched.metric,
            value=round(last, 4),
            expected=round(base.expected, 4),
            since=str(rows["hour"][-1]),
            summary=(
                f"{label} of {deployment_id} {direction} to {last:.3f} in the last hour against a "
                f"{base.kind} baseline of {base.expected:.3f} ({why})"
            ),
            explanation=_quote(snapshot.worst_requests, deployment_id, watched.metric),
        )
