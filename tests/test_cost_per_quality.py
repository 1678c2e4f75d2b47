"""Cost per quality: $ per 1,000 good responses per deployment and model (a shared host's slice counting
the GPUs it holds), and its asset on chdb with the state store on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from workflow_fixtures import NOW

from optiinfra_assets import sandbox
from optiinfra_assets.agents.cost.cost_per_quality import (
    CostQualityInputs,
    cost_per_quality,
    per_model,
    read_inputs,
)
from optiinfra_assets.assets.cost_quality import cost_per_quality as cost_per_quality_asset
from optiinfra_assets.catalog import default_engine, instance_type
from optiinfra_assets.ingest import ingest
from optiinfra_assets.models import Deployment
from optiinfra_assets.workflow import Services, ensure_sandbox_fleet
from resources.dagster_resources import MetricStoreResource, StateStoreResource
from resources.metric_store import open_metric_store
from resources.state_store import StateStore
from resources.targets import SandboxTarget

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
            "instance_id": ["i-small", "i-small", "i-big", "i-small-2", "i-stranger"],
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


def test_a_slice_counts_the_gpus_it_holds_not_its_hosts() -> None:
    """Two 2-GPU slices of 4-GPU g6e.12xlarge hosts hold 2 GPUs each; a whole g6e.12xlarge holds 4."""
    packed = dep("packed", "Qwen2.5-32B", "g6e.12xlarge")
    solo = dep("solo", "Qwen2.5-32B", "g6e.12xlarge")
    cost = pl.DataFrame(
        {
            "deployment_id": ["packed", "packed", "solo", "solo"],
            "hour": [H0] * 4,
            "instance_id": ["i-slice-1", "i-slice-2", "i-whole-1", "i-whole-2"],
            "instance_type": ["g6e.12xlarge"] * 4,
            "instance_hours": [1.0, 0.5, 1.0, 0.5],
            "cost_usd": [5.0, 2.5, 10.0, 5.0],
        }
    )
    empty = inputs()
    frames = CostQualityInputs(cost=cost, load=empty.load.clear(), quality=empty.quality.clear())
    slices = {"i-slice-1": 2, "i-slice-2": 2, "i-ended-elsewhere": 1}
    out = {
        r["deployment_id"]: r for r in cost_per_quality(frames, [packed, solo], slices).iter_rows(named=True)
    }
    assert out["packed"]["gpu_hours"] == 3.0 and out["packed"]["usd_per_gpu_hour"] == 2.5
    assert out["solo"]["gpu_hours"] == 6.0 and out["solo"]["usd_per_gpu_hour"] == 2.5
    # Without the slices' GPUs the packed deployment would count its hosts' 4 GPUs, as a whole instance.
    assert cost_per_quality(frames, [packed, solo])["gpu_hours"].to_list() == [6.0, 6.0]


PACKED = (
    "initrode-review-qwen32b-a",
    "initrode-review-qwen32b-b",
)  # sandbox deployments on 4-GPU g6e.12xlarge
SOLO = "initech-pack-qwen14b-a"  # two whole 4-GPU g6.12xlarge
L40S_HOST = "g6e.12xlarge"


def test_slices_gpu_hours_from_the_state_store_on_chdb(state_url: str, tmp_path: Path) -> None:
    """The sandbox packs both initrode deployments as 2-GPU slices onto two g6e.12xlarge (real SQLite or
    PostgreSQL state store); two hours of their sandbox cost, load and quality rows are ingested into chdb.
    read_inputs + cost_per_quality with the store's slice GPUs, and the asset, count 2 GPUs per slice."""
    seed, t0 = 5, NOW - timedelta(hours=3)
    state = StateStore(state_url)
    state.migrate()
    assert ensure_sandbox_fleet(state, seed, NOW - timedelta(days=1))
    target = SandboxTarget(state, seed, clock=lambda: t0)
    for did in PACKED:
        config = state.get_deployment(did).config
        engine = default_engine(instance_type(L40S_HOST).gpu, 2)
        target.apply(did, config.model_copy(update={"gpus_per_replica": 2, "engine": engine}), 1.0)
    assert len(state.list_hosts()) == 2
    wanted = {*PACKED, SOLO}
    frames = sandbox.generate(
        state.list_customers(),
        [d for d in state.list_deployments() if d.id in wanted],
        [i for i in state.list_instances(include_ended=True) if i.deployment_id in wanted],
        [],
        t0,
        t0 + timedelta(hours=2),
        seed=seed,
        step_s=60,
        quality_sample_s=60,
    )
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    known = state.instance_index()
    with metrics.session():
        for domain, frame in frames.items():
            assert ingest(metrics, domain, frame, known).quarantined == 0
        read = read_inputs(metrics, t0, t0 + timedelta(hours=2), 0.5)
    out = {
        r["deployment_id"]: r
        for r in cost_per_quality(read, state.list_deployments(), state.slice_gpus()).iter_rows(named=True)
    }
    assert set(out) == wanted
    host_usd_hour = instance_type(L40S_HOST).price_usd_hour(state.list_hosts()[0].lifecycle)
    for did in PACKED:  # two 2-GPU slices for two hours, each paying half a full host
        assert out[did]["gpu_hours"] == pytest.approx(8.0)
        assert out[did]["usd_per_gpu_hour"] == pytest.approx(host_usd_hour / 4)
        assert out[did]["requests"] > 0 and out[did]["usd_per_1k_good"] is not None
    solo = state.list_instances(SOLO)
    assert len(solo) == 2 and all(i.host_id is None for i in solo)
    assert out[SOLO]["gpu_hours"] == pytest.approx(2 * instance_type(solo[0].instance_type).gpu_count * 2.0)
    # The asset reads the slices' GPUs from the state store too (its window: the last 24 complete hours).
    result = dg.materialize(
        [cost_per_quality_asset],
        resources={
            "state_store": StateStoreResource(home=str(tmp_path), database_url=state_url),
            "metric_store": MetricStoreResource(home=str(tmp_path)),
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["gpu_hours"].value == pytest.approx(8.0 + 8.0 + 16.0)
    state.dispose()
