"""The shared per-deployment pieces: PerDeploymentCapability's walk of the fleet (unknown customers and
changes under way skipped, a reason string turned into a Skip) as the real capabilities use it, and the
detectors' hourly-series helpers (agents/findings.py) over the real shared anomaly detector."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import ClassVar, Literal

import numpy as np
import polars as pl
import pytest

from optiinfra_assets.agents.capability import (
    Estimate,
    Evidence,
    Objective,
    PerDeploymentCapability,
    Proposal,
    Skip,
)
from optiinfra_assets.agents.cost.reserved_capacity import ReservedCapacity
from optiinfra_assets.agents.cost.right_sizing import RightSizing
from optiinfra_assets.agents.findings import hourly_series, newest_hour_anomaly, usual_before
from optiinfra_assets.agents.performance.batch_tuning import BatchTuning
from optiinfra_assets.agents.resource.autoscaling import Autoscaling
from optiinfra_assets.catalog import default_config
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Customer, Deployment
from optiinfra_assets.snapshot import FleetSnapshot

SETTINGS = DecisionSettings()
CUSTOMER = Customer(id="c", name="C", slo_p95_latency_ms=45_000.0, min_monthly_savings_usd=0.0)
CONFIG = default_config("g6e.xlarge", 2)


def _deployment(did: str, customer_id: str = "c", changing: bool = False) -> Deployment:
    return Deployment(
        id=did,
        customer_id=customer_id,
        model="Llama-3.1-8B",
        config=CONFIG,
        base_requests_per_s=1.0,
        rollout_to=default_config("g6e.xlarge", 3) if changing else None,
    )


FLEET = FleetSnapshot(
    customers=[CUSTOMER],
    deployments=[
        _deployment("orphan", customer_id="gone"),
        _deployment("changing", changing=True),
        _deployment("quiet"),
        _deployment("busy"),
    ],
    instances=[],
)


class ReplicasEvidence(Evidence):
    kind: Literal["test_replicas"] = "test_replicas"


class Replicas(PerDeploymentCapability):
    """Adds a replica to the deployment named 'busy'; nothing elsewhere, with a reason."""

    kind: ClassVar[str] = "test_replicas"
    agent: ClassVar[str] = "resource"
    objective: ClassVar[Objective] = Objective.PERFORMANCE
    description: ClassVar[str] = "test: one more replica"
    evidence_model = ReplicasEvidence
    change_under_way: ClassVar[str | None] = "busy rolling out"

    def analyze_deployment(
        self, snapshot: FleetSnapshot, customer: Customer, deployment: Deployment, settings: DecisionSettings
    ) -> Proposal | Skip | str:
        if deployment.id != "busy":
            return f"{deployment.id} of {customer.id} needs nothing"
        return Proposal(
            kind=self.kind,
            customer_id=customer.id,
            deployment_id=deployment.id,
            current=deployment.config,
            desired=default_config("g6e.xlarge", 3),
            evidence=ReplicasEvidence(),
            estimate=Estimate(),
            risk_score=0.1,
            summary="one more replica",
        )


def _reasons(items: list[Proposal | Skip]) -> dict[str, str]:
    return {i.deployment_id: i.reason for i in items if isinstance(i, Skip)}


def test_the_walk_skips_unknown_customers_and_changes_under_way_and_turns_reasons_into_skips() -> None:
    items = list(Replicas().analyze(FLEET, SETTINGS))
    assert [i.deployment_id for i in items] == ["orphan", "changing", "quiet", "busy"]
    assert _reasons(items) == {
        "orphan": "unknown customer 'gone'",
        "changing": "busy rolling out",
        "quiet": "quiet of c needs nothing",
    }
    (proposal,) = [i for i in items if isinstance(i, Proposal)]
    assert proposal.deployment_id == "busy" and proposal.desired.replicas == 3


def test_without_a_reason_for_changes_under_way_a_rolling_deployment_is_analyzed() -> None:
    class Always(Replicas):
        change_under_way = None

    assert _reasons(list(Always().analyze(FLEET, SETTINGS)))["changing"] == "changing of c needs nothing"


@pytest.mark.parametrize(
    ("capability", "changing"),
    [
        (RightSizing(), "a change is under way"),
        (ReservedCapacity(), "a change is under way: wait for it to settle"),
        (BatchTuning(), "no load baseline to tune the batch for"),
        (Autoscaling(), "customer c has no written autoscaling policy"),
    ],
)
def test_the_real_capabilities_keep_their_skip_reasons(
    capability: PerDeploymentCapability, changing: str
) -> None:
    reasons = _reasons(list(capability.analyze(FLEET, SETTINGS)))
    assert reasons["orphan"] == "unknown customer 'gone'"
    assert reasons["changing"].startswith(changing)


def _hours(n: int) -> np.ndarray:
    start = datetime(2026, 6, 1)  # naive UTC, as numpy keeps it
    return np.array([start + timedelta(hours=i) for i in range(n)], dtype="datetime64[us]")


def test_the_newest_hour_is_flagged_only_when_the_shared_detector_flags_it() -> None:
    rng = np.random.default_rng(0)
    steady = 100.0 + rng.normal(0.0, 2.0, 24 * 14)
    assert newest_hour_anomaly(steady, _hours(steady.size)) is None
    spiked = steady.copy()
    spiked[-1] = 200.0
    newest = newest_hour_anomaly(spiked, _hours(spiked.size))
    assert newest is not None
    assert newest.last == spiked.size - 1 and newest.value == 200.0
    assert newest.usual == pytest.approx(float(np.median(steady[:-1])))
    assert newest.score > 0.5 and newest.view


def test_the_usual_level_is_the_median_before_the_hour_or_the_hour_itself_when_first() -> None:
    values = np.array([5.0, 1.0, 3.0, 100.0])
    assert usual_before(values, 3) == 3.0
    assert usual_before(values, 0) == 5.0


def test_hourly_series_yields_deployments_with_enough_rows_of_the_domain() -> None:
    frame = pl.DataFrame(
        {
            "deployment_id": ["quiet"] * 3 + ["busy"],
            "hour": [datetime(2026, 6, 1, h) for h in (0, 1, 2, 0)],
            "x": [1.0, 2.0, 3.0, 4.0],
        }
    )
    snapshot = FleetSnapshot(
        customers=[CUSTOMER], deployments=FLEET.deployments, instances=[], hourly={"performance": frame}
    )
    assert [(d.id, r.height) for d, r in hourly_series(snapshot, "performance")] == [
        ("quiet", 3),
        ("busy", 1),
    ]
    assert [d.id for d, _ in hourly_series(snapshot, "performance", min_hours=2)] == ["quiet"]
    assert list(hourly_series(snapshot, "quality")) == []
