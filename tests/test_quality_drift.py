"""Quality drift: rolling and seasonal baselines, drifts that matter, the offending responses as evidence;
and end to end from the sandbox's text through chdb to a finding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets.agents.application.quality_drift import QualityDrift, baseline
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import Fault, FaultKind, Risk
from optiinfra_assets.request_samples import ingest_requests, load_worst
from optiinfra_assets.sandbox import generate, initial_fleet, request_samples
from optiinfra_assets.snapshot import FleetSnapshot
from resources.metric_store import ChdbMetricStore

HOURS = 7 * 24
END = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # recent: the tables have TTLs


def _hourly(deployment_id: str, quality: np.ndarray, hallucination: np.ndarray, toxicity: np.ndarray):
    hours = [END - timedelta(hours=len(quality) - k) for k in range(len(quality))]
    return pl.DataFrame(
        {
            "customer_id": "acme",
            "deployment_id": deployment_id,
            "hour": hours,
            "samples": 360,
            "quality_score_avg": quality,
            "hallucination_score_avg": hallucination,
            "toxicity_score_avg": toxicity,
        }
    )


def _snapshot(hourly: pl.DataFrame, worst: pl.DataFrame | None = None) -> FleetSnapshot:
    customers, deployments, instances = initial_fleet(1, END)
    return FleetSnapshot(
        customers=customers,
        deployments=deployments,
        instances=instances,
        hourly={"quality": hourly},
        worst_requests=worst if worst is not None else pl.DataFrame(),
    )


def _steady(rng: np.random.Generator, n: int = HOURS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        0.88 + 0.004 * rng.standard_normal(n),
        0.05 + 0.004 * rng.standard_normal(n),
        np.abs(0.001 * rng.standard_normal(n)),
    )


def test_a_toxicity_jump_is_a_high_finding_quoting_the_responses() -> None:
    rng = np.random.default_rng(1)
    quality, hallucination, toxicity = _steady(rng)
    toxicity[-1] = 0.06
    worst = pl.DataFrame(
        {
            "deployment_id": ["acme-chat-8b"] * 2,
            "request_id": ["q-1", "q-2"],
            "response": ["What a stupid question, you idiot. The Orion X2 supports ...", "fine answer"],
            "quality_score": [0.05, 0.9],
            "hallucination_score": [0.5, 0.0],
            "toxicity_score": [0.61, 0.01],
            "failed_checks": ["", ""],
            "worst_by": ["toxicity_score", "toxicity_score"],
        }
    )
    findings = QualityDrift().detect(
        _snapshot(_hourly("acme-chat-8b", quality, hallucination, toxicity), worst), DecisionSettings()
    )
    (finding,) = findings
    assert (finding.metric, finding.severity, finding.deployment_id) == (
        "toxicity_score",
        Risk.HIGH,
        "acme-chat-8b",
    )
    assert finding.value == pytest.approx(0.06) and finding.expected is not None and finding.expected < 0.01
    assert "stupid question" in finding.explanation and "toxicity 0.61" in finding.explanation
    assert finding.explanation.index("q-1") < finding.explanation.index("q-2")  # worst first


def test_steady_noise_and_small_rises_raise_nothing() -> None:
    rng = np.random.default_rng(2)
    quality, hallucination, toxicity = _steady(rng)
    hallucination[-1] += 0.02  # 5 robust z-scores, but under the 0.03 rise that matters
    findings = QualityDrift().detect(
        _snapshot(_hourly("acme-chat-8b", quality, hallucination, toxicity)), DecisionSettings()
    )
    assert findings == []
    # The same rise with a lower bar is a finding (the threshold is the settings', not a constant).
    settings = DecisionSettings(hallucination_drift_min_rise=0.01)
    (finding,) = QualityDrift().detect(
        _snapshot(_hourly("acme-chat-8b", quality, hallucination, toxicity)), settings
    )
    assert finding.metric == "hallucination_score" and finding.severity == Risk.MEDIUM
    assert finding.explanation == "no request text stored for the hour"


def test_the_seasonal_baseline_expects_the_usual_hour_of_the_day() -> None:
    """Quality is always lower at the hour the batch jobs run; that hour is no drift, a new dip is."""
    rng = np.random.default_rng(3)
    quality, hallucination, toxicity = _steady(rng)
    hour_of_day = np.array([(END - timedelta(hours=HOURS - k)).hour for k in range(HOURS)])
    usual_dip = hour_of_day == hour_of_day[-1]
    quality[usual_dip] -= 0.08  # 9% lower every day at this hour, the last one included
    values, hours = quality, _hourly("d", quality, hallucination, toxicity)["hour"].to_numpy()
    base = baseline(values, hours)
    assert base.kind == "seasonal" and base.expected == pytest.approx(0.80, abs=0.01)
    assert (
        QualityDrift().detect(
            _snapshot(_hourly("acme-chat-8b", quality, hallucination, toxicity)), DecisionSettings()
        )
        == []
    )
    shifted = quality.copy()
    shifted[-1] -= 0.08  # today it dipped another 10%
    (finding,) = QualityDrift().detect(
        _snapshot(_hourly("acme-chat-8b", shifted, hallucination, toxicity)), DecisionSettings()
    )
    assert (
        finding.metric == "quality_score" and finding.severity == Risk.HIGH and "seasonal" in finding.summary
    )
    # Too little history: rolling, and nothing judged before a day of it.
    short = _hourly("acme-chat-8b", *(a[-20:] for a in (shifted, hallucination, toxicity)))
    assert QualityDrift().detect(_snapshot(short), DecisionSettings()) == []


def test_from_sandbox_text_to_a_hallucination_finding(tmp_path: Path) -> None:
    """A week of history, then a broken model version on a RAG deployment: its text is stored, the
    hourly rollup drifts, and the finding quotes the unsupported answers."""
    customers, deployments, instances = initial_fleet(5, END - timedelta(days=30))
    dep = "globex-rag-qwen"
    mine = [i for i in instances if i.deployment_id == dep]
    deps = [d for d in deployments if d.id == dep]
    fault = Fault(
        deployment_id=dep,
        kind=FaultKind.QUALITY_DEGRADATION,
        params={"drop_pct": 15, "scope": "all", "mode": "hallucination"},
        created_at=END - timedelta(hours=1),
    )
    known = {i.id: (deps[0].customer_id, dep) for i in mine}
    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    try:
        history = generate(
            customers,
            deps,
            mine,
            [fault],
            END - timedelta(days=7),
            END - timedelta(hours=1),
            seed=5,
            step_s=3600,
            quality_sample_s=120,
        )[Domain.QUALITY]
        live = request_samples(
            customers, deps, mine, [fault], END - timedelta(hours=1), END, seed=5, quality_sample_s=10
        )
        with store.session():
            store.insert_polars("quality_metrics", history)
        report = ingest_requests(store, live, known, now=END)
        assert report.accepted == live.height and report.quarantined == 0
        with store.session():
            hourly = store.hourly(Domain.QUALITY, since=END - timedelta(days=8))
            worst = load_worst(store, since=END - timedelta(hours=1))
    finally:
        store.close()
    findings = QualityDrift().detect(_snapshot(hourly, worst), DecisionSettings())
    by_metric = {f.metric: f for f in findings if f.deployment_id == dep}
    assert "hallucination_score" in by_metric, findings
    finding = by_metric["hallucination_score"]
    assert (
        finding.value is not None and finding.expected is not None and finding.value > finding.expected + 0.05
    )
    assert "offending responses" in finding.explanation and "Actually" in finding.explanation
