"""Cost per quality: $ per 1,000 good responses per deployment and model, and its asset on chdb."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from workflow_fixtures import NOW

from optiinfra_assets.agents.cost.cost_per_quality import CostQualityInputs, cost_per_quality, per_model
from optiinfra_assets.assets.cost_quality import cost_per_quality as cost_per_quality_asset
from optiinfra_assets.models import Deployment
from optiinfra_assets.workflow import Services
from resources.dagster_resources import MetricStoreResource, StateStoreResource

H0 = datetime(2026, 6, 1, 10, tzinfo=UTC)
H1 = H0 + timedelta(hours=1)


def dep(did: str, model: str, itype: str) -> Deployment:
    return Deployment(
        id=did, customer_id="cust-a", model=model, instance_type=itype, replicas=2, base_requests_per_s=1.0
    )


DEPLOYMENTS = [
    dep("small", "Llama-3.1-8B", "g6e.xlarge"),  # 1 GPU per instance
    dep("big", "Llama-3.1-70B", "p4de.24xlarge"),  # 8 GPUs per instance
    dep("small-2", "Llama-3.1-8B", "g6e.xlarge"),
]


def inputs() -> CostQualityInputs:
    cost = pl.DataFrame(
        {
            "deployment_id": ["small", "small", "big", "small-2", "stranger"],
            "hour": [H0, H1, H0, H0, H0],
            "instance_type": ["g6e.xlarge", "g6e.xlarge", "p4de.24xlarge", "g6e.xlarge", "g6e.xlarge"],
            "instance_hours": [2.0, 2.0, 1.0, 1.0, 1.0],
            "cost_usd": [10.0, 10.0, 40.0, 5.0, 99.0],
        }
    )
    load = pl.DataFrame(
        {
            "deployment_id": ["small", "small", "big", "small-2"],
            "hour": [H0, H1, H0, H0],
            "requests_per_s_avg": [1.0, 2.0, 0.5, 1.0],
        }
    )
    # small: 90% good in H0 and nothing scored in H1 (it takes the window's 90%); big: none good.
    quality = pl.DataFrame(
        {
            "deployment_id": ["small", "big", "small-2"],
            "hour": [H0, H0, H0],
            "scored": [100, 50, 10],
            "good": [90, 0, 5],
        }
    )
    return CostQualityInputs(cost=cost, load=load, quality=quality)


def test_dollars_per_thousand_good_responses_per_deployment() -> None:
    out = {r["deployment_id"]: r for r in cost_per_quality(inputs(), DEPLOYMENTS).iter_rows(named=True)}
    assert set(out) == {"small", "big", "small-2"}  # a deployment the fleet does not know is left out
    small = out["small"]
    # H0: 1 req/s x 2 instance-hours = 7,200 requests, 90% good; H1: 14,400 requests at the window's 90%.
    assert small["requests"] == 21_600 and small["good_responses"] == pytest.approx(19_440)
    assert small["usd_per_1k_good"] == pytest.approx(20.0 / 19_440 * 1000)
    assert small["gpu_hours"] == 4.0 and small["usd_per_gpu_hour"] == 5.0 and small["model"] == "Llama-3.1-8B"
    big = out["big"]
    assert big["gpu_hours"] == 8.0 and big["good_share"] == 0.0
    assert big["usd_per_1k_good"] is None  # no good response: no figure, not infinity


def test_per_model_sums_before_dividing() -> None:
    models = {r["model"]: r for r in per_model(cost_per_quality(inputs(), DEPLOYMENTS)).iter_rows(named=True)}
    eight_b = models["Llama-3.1-8B"]
    # small: $20 for 19,440 good; small-2: $5 for 3,600 requests at 50% = 1,800 good.
    assert eight_b["usd_per_1k_good"] == pytest.approx(25.0 / 21_240 * 1000)
    assert eight_b["good_share"] == pytest.approx(95 / 110)
    assert models["Llama-3.1-70B"]["usd_per_1k_good"] is None


def test_no_cost_is_an_empty_frame() -> None:
    empty = CostQualityInputs(
        cost=inputs().cost.clear(), load=inputs().load.clear(), quality=inputs().quality.clear()
    )
    assert cost_per_quality(empty, DEPLOYMENTS).is_empty()


def test_the_asset_materializes_on_chdb_with_plottable_numbers(
    svc: Services, state_url: str, tmp_path: Path
) -> None:
    """A day of sandbox history in chdb (workflow_fixtures, under tmp_path): the asset's window is the
    last 24 complete hours, that day."""
    assert datetime.now(UTC) >= NOW
    result = dg.materialize(
        [cost_per_quality_asset],
        resources={
            "state_store": StateStoreResource(home=str(tmp_path), database_url=state_url),
            "metric_store": MetricStoreResource(home=str(tmp_path)),
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    deployments = [d.id for d in svc.state.list_deployments()]
    assert metadata["deployments"] == len(deployments)
    for did in deployments:
        figure = metadata[f"usd_per_1k_good/{did}"]
        assert isinstance(figure, float) and figure > 0
    assert isinstance(metadata["fleet_usd_per_1k_good"], float)
    assert any(k.startswith("usd_per_1k_good/model/") for k in metadata)
