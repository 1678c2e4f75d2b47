"""The performance, resource and application agents judging a proposed config (here: spot migrations)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from factories import deployment

from optiinfra_assets.agents import application, performance, resource
from optiinfra_assets.agents.capability import ValidationRequest
from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot

NOW = datetime(2026, 6, 1, tzinfo=UTC)
P95_BASELINE = BaselineStat(median=9000.0, mad=300.0, p05=8200.0, p95=10500.0, n=5000)
QUALITY = BaselineStat(median=0.85, mad=0.04, p05=0.75, p95=0.93, n=1200)
CUSTOMER = Customer(id="cust-a", name="Acme", slo_p95_latency_ms=20000.0, min_monthly_savings_usd=100.0)


def request(
    dep: Deployment, peak_requests_per_s: float = 0.0, quality: BaselineStat | None = QUALITY
) -> ValidationRequest:
    """The spot capability's proposal for ``dep`` as the other agents receive it; the peak load is given
    as the baseline's per-replica p95 of requests/s."""
    baselines = {
        "latency_p95_ms": P95_BASELINE,
        "requests_per_s": BaselineStat(
            median=0.0, mad=0.0, p05=0.0, p95=peak_requests_per_s / dep.replicas, n=1000
        ),
    }
    if quality is not None:
        baselines["quality_score"] = quality
    snapshot = FleetSnapshot(
        customers=[CUSTOMER], deployments=[dep], instances=[], baselines={dep.id: baselines}
    )
    items = list(SpotMigration().analyze(snapshot, DecisionSettings()))
    current = dep.config
    desired = current.model_copy(update={"on_demand_replicas": 0, "spot_replicas": dep.replicas})
    evidence = items[0].evidence if hasattr(items[0], "evidence") else None
    return ValidationRequest(
        customer=CUSTOMER,
        deployment=dep,
        current=current,
        proposed=desired,
        evidence=evidence,  # type: ignore[arg-type]
        baselines=baselines,
        settings=DecisionSettings(),
    )


# --- performance -------------------------------------------------------------------------------------


def test_performance_passes_when_survivors_carry_peak_within_slo() -> None:
    dep = deployment()
    v = performance.validate(request(dep, 12.0))
    assert v.agent == "performance"
    assert v.passed, v.detail
    assert v.figures["replicas_lost"] == 1.0
    assert v.figures["surviving_replicas"] == 3.0
    assert v.figures["predicted_p95_ms"] < v.figures["slo_p95_ms"] == 20000.0
    assert "losing 1 of 4" in v.detail and "within the SLO" in v.detail


def test_performance_fails_when_survivors_are_overloaded_at_peak() -> None:
    dep = deployment()
    v = performance.validate(request(dep, 20.0))
    assert not v.passed
    assert v.figures["predicted_p95_ms"] > 20000.0
    assert "over the SLO" in v.detail


def test_performance_fails_single_replica_since_nothing_survives() -> None:
    dep = deployment("g6e.xlarge", "Llama-3.1-8B", replicas=1)
    v = performance.validate(request(dep, 1.0))
    assert not v.passed
    assert v.figures["surviving_replicas"] == 0.0
    assert "no replica survives" in v.detail


def test_worse_band_loses_more_replicas() -> None:
    low, _ = performance.replicas_lost_to_interruption(request(deployment(replicas=10)).proposed)
    bad, why = performance.replicas_lost_to_interruption(
        request(deployment("g5.xlarge", "Llama-3.1-8B", replicas=10)).proposed
    )
    assert low == 1
    assert bad == 3  # 10 x 30%/month
    assert "30%/month" in why


def test_latency_regression() -> None:
    regressed, why = performance.latency_regression(21000.0, P95_BASELINE, 20000.0)
    assert regressed and "breaks the SLO" in why
    regressed, why = performance.latency_regression(14000.0, P95_BASELINE, 20000.0)
    assert regressed and "anomalously above" in why
    regressed, why = performance.latency_regression(9100.0, P95_BASELINE, 20000.0)
    assert not regressed and "within the SLO" in why
    regressed, _ = performance.latency_regression(4000.0, P95_BASELINE, 20000.0)
    assert not regressed  # faster is not a regression


# --- resource ----------------------------------------------------------------------------------------


def test_resource_passes_for_known_pool_and_fitting_model() -> None:
    dep = deployment()
    v = resource.validate(request(dep))
    assert v.agent == "resource"
    assert v.passed, v.detail
    assert v.figures["spot_azs"] == 2.0
    assert v.figures["spot_pool_instances_estimate"] == 8.0  # 2 AZs x (32 GPUs / 8 per instance)
    assert "heuristic" in v.detail


def test_resource_fails_when_pool_is_thinner_than_replicas() -> None:
    dep = deployment(replicas=12)
    v = resource.validate(request(dep))
    assert not v.passed
    assert "thinner than the 12 replicas" in v.detail


def test_resource_fails_when_model_does_not_fit() -> None:
    dep = deployment(model="Llama-3.1-405B", replicas=2)
    v = resource.validate(request(dep))
    assert not v.passed
    assert "does not fit" in v.detail


def test_resource_fails_without_spot_market() -> None:
    dep = deployment("p5.4xlarge", "Llama-3.1-8B", replicas=2)
    v = resource.validate(request(dep))
    assert not v.passed
    assert "no spot price" in v.detail


def test_resource_assumes_one_az_when_unknown() -> None:
    dep = deployment("p5en.48xlarge", "Llama-3.1-70B", replicas=4)
    v = resource.validate(request(dep))
    assert v.passed, v.detail
    assert v.figures["spot_azs"] == 1.0
    assert "AZ count unknown, assumed" in v.detail


# --- application -------------------------------------------------------------------------------------


def test_quality_baseline_established() -> None:
    v = application.validate(request(deployment()))
    assert v.agent == "application" and v.passed
    assert v.figures["samples"] == 1200.0


def test_quality_baseline_missing_or_thin_blocks() -> None:
    missing = application.validate(request(deployment(), quality=None))
    thin = application.validate(
        request(deployment(), quality=BaselineStat(median=0.85, mad=0.04, p05=0.75, p95=0.93, n=50))
    )
    assert not missing.passed and "no quality baseline" in missing.detail
    assert not thin.passed and "50 samples" in thin.detail and "200" in thin.detail


def test_quality_check_within_and_over_threshold() -> None:
    ok = application.quality_check(0.83, QUALITY, 5.0)
    assert ok.passed and ok.drop_pct == pytest.approx(2.3529, abs=1e-3)
    bad = application.quality_check(0.78, QUALITY, 5.0)
    assert not bad.passed and bad.drop_pct == pytest.approx(8.2353, abs=1e-3)
    assert bad.threshold_pct == 5.0
    assert "0.780" in bad.detail and "0.850" in bad.detail and "5%" in bad.detail
    better = application.quality_check(0.9, QUALITY, 5.0)
    assert better.passed and better.drop_pct < 0


def test_resource_fails_over_the_gpu_quota() -> None:
    dep = deployment(replicas=4)  # 4 x p4de.24xlarge = 32 GPUs
    req = request(dep)
    tight = ValidationRequest(**{**req.__dict__, "settings": DecisionSettings(gpu_quota_per_family=16)})
    v = resource.validate(tight)
    assert not v.passed and "32 GPUs, over the 16-GPU quota of the p4de family" in v.detail
    assert resource.validate(req).figures["gpus_needed"] == 32.0
