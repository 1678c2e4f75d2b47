"""The sandbox fleet and its deterministic metric generation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from optiinfra_assets.catalog import instance_type, model
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import Fault, FaultKind, InstanceState, Lifecycle, Quantization
from optiinfra_assets.sandbox import QUALITY_MEAN, capacity, generate, initial_fleet, observe, synthetic_fleet
from optiinfra_assets.serving import quality_factor

NOW = datetime(2026, 5, 11, 12, 0, tzinfo=UTC)  # a Monday
SEED = 42


@pytest.fixture
def fleet():
    return initial_fleet(SEED, NOW)


def test_initial_fleet_shape(fleet) -> None:
    customers, deployments, instances = fleet
    assert 3 <= len(customers) <= 7 and len(deployments) >= 5  # each agent adds its situations
    # Only vandelay writes an auto-approval policy (issue 10: its A/B rollback happens without a click).
    assert all(c.auto_approve_max_risk is None for c in customers if c.id != "vandelay")
    assert all(i.lifecycle == Lifecycle.ON_DEMAND and i.state == InstanceState.RUNNING for i in instances)
    assert all(i.id.startswith("i-") and len(i.id) == 19 for i in instances)
    assert len({i.id for i in instances}) == len(instances) == sum(d.replicas for d in deployments)
    assert all(capacity(d).fits and 1 <= d.replicas <= 6 for d in deployments)
    assert initial_fleet(SEED, NOW) == fleet
    assert initial_fleet(SEED + 1, NOW)[2][0].id != instances[0].id


def test_there_is_a_good_and_a_bad_spot_candidate(fleet) -> None:
    _, deployments, _ = fleet
    bands = {d.id: (instance_type(d.instance_type), d.replicas) for d in deployments}
    good = [
        d
        for d, (t, n) in bands.items()
        if t.spot_interrupt_band in ("<5%", "5-10%") and n >= 4 and (t.spot_savings_pct or 0) >= 50
    ]
    bad = [d for d, (t, n) in bands.items() if t.spot_interrupt_band == ">20%" and n == 1]
    assert good and bad


# Deployments built for one agent's situation run outside the normal band on purpose (performance agent:
# KV pressure, an FP16 model running hot, a batch limit wasting throughput, an over-split model).
PERFORMANCE_SITUATIONS = {
    "globex-kv-qwen32b",
    "acme-fp16-llama8b",
    "globex-batch16-qwen7b",
    "acme-tp4-llama8b",
}
# Resource agent (issue 9): idle GPUs and small deployments that fit together, under the band on purpose.
RESOURCE_SITUATIONS = {
    "initech-idle-mistral7b",
    "initech-pack-qwen14b-a",
    "initech-pack-qwen14b-b",
    "initrode-review-qwen32b-a",  # shared placements: two L40S of a shared host hold what four serve today
    "initrode-review-qwen32b-b",
}
# Cost agent (issue 7): an over-provisioned deployment for right-sizing, under the band on purpose.
COST_SITUATIONS = {"globex-oversized-llama8b"}


def test_peak_utilization_is_40_to_70_percent(fleet) -> None:
    _, deployments, _ = fleet
    for d in deployments:
        if d.id in PERFORMANCE_SITUATIONS | RESOURCE_SITUATIONS | COST_SITUATIONS:
            continue
        peak_per_replica = d.base_requests_per_s * 1.35 / d.replicas
        assert 0.4 <= peak_per_replica / capacity(d).max_requests_per_s <= 0.7, d.id


def test_generate_writes_the_schemas(fleet) -> None:
    frames = generate(*fleet, [], NOW, NOW + timedelta(minutes=2), seed=SEED)
    n = len(fleet[2])
    for domain, schema in SCHEMAS.items():
        assert frames[domain].schema == pl.Schema(schema.polars_schema), domain
    assert frames[Domain.PERFORMANCE].height == frames[Domain.RESOURCE].height == 120 * n
    assert frames[Domain.COST].height == 2 * n
    assert frames[Domain.QUALITY].height == 12 * n
    assert frames[Domain.QUALITY]["request_id"].n_unique() == 12 * n
    cost = frames[Domain.COST].filter(pl.col("instance_type") == "g6e.xlarge")
    assert cost["cost_usd"][0] == pytest.approx(1.861 / 60)
    perf = frames[Domain.PERFORMANCE]
    assert perf["ts"].is_sorted()
    for domain, schema in SCHEMAS.items():
        for m in schema.measures:
            col = frames[domain][m.name]
            assert col.min() >= m.lo and col.max() <= m.hi, (domain, m.name)


def test_generate_concatenates_and_repeats(fleet) -> None:
    a, b, c = NOW, NOW + timedelta(seconds=97), NOW + timedelta(minutes=5)
    whole = generate(*fleet, [], a, c, seed=SEED, step_s=1)
    first, second = generate(*fleet, [], a, b, seed=SEED), generate(*fleet, [], b, c, seed=SEED)
    for d in Domain:
        assert_frame_equal(whole[d], pl.concat([first[d], second[d]]))
        assert_frame_equal(whole[d], generate(*fleet, [], a, c, seed=SEED)[d])
    other = generate(*fleet, [], a, c, seed=SEED + 1)[Domain.PERFORMANCE]
    assert not other["latency_p95_ms"].equals(whole[Domain.PERFORMANCE]["latency_p95_ms"])


def test_load_is_diurnal_and_lower_at_weekends(fleet) -> None:
    def mean_load(at: datetime) -> float:
        perf = generate(*fleet, [], at, at + timedelta(minutes=10), seed=SEED, step_s=10)[Domain.PERFORMANCE]
        return float(perf["requests_per_s"].sum())

    monday_peak, monday_night = mean_load(NOW.replace(hour=15)), mean_load(NOW.replace(hour=3))
    saturday_peak = mean_load(NOW.replace(hour=15) - timedelta(days=2))
    assert monday_peak > 1.5 * monday_night
    assert saturday_peak == pytest.approx(0.7 * monday_peak, rel=0.05)


def _lose_one(instances, deployment_id: str, at: datetime):
    victim = next(i for i in instances if i.deployment_id == deployment_id)
    ended = victim.model_copy(update={"state": InstanceState.INTERRUPTED, "ended_at": at})
    return [ended if i.id == victim.id else i for i in instances]


def test_an_instance_lost_loads_the_others(fleet) -> None:
    customers, deployments, instances = fleet
    at = NOW.replace(hour=15)
    before = observe(customers, deployments, instances, [], "acme-chat-8b", at, 30, seed=SEED)
    after = observe(
        customers,
        deployments,
        _lose_one(instances, "acme-chat-8b", at),
        [],
        "acme-chat-8b",
        at,
        30,
        seed=SEED,
    )
    assert (before["running_replicas"], after["running_replicas"]) == (4.0, 3.0)
    assert after["requests_per_s"] == pytest.approx(before["requests_per_s"], rel=0.05)
    assert after["latency_p95_ms"] > before["latency_p95_ms"]
    slo = next(c for c in customers if c.id == "acme").slo_p95_latency_ms
    assert after["latency_p95_ms"] < slo  # four replicas survive a loss
    alone = observe(
        customers,
        deployments,
        _lose_one(instances, "initech-code-72b", at),
        [],
        "initech-code-72b",
        at,
        30,
        seed=SEED,
    )
    assert alone["running_replicas"] == 0 and alone["tokens_per_s"] == 0
    assert alone["latency_p95_ms"] > 10 * before["latency_p95_ms"]


def test_quality_degradation_hits_only_its_scope(fleet) -> None:
    customers, deployments, instances = fleet
    dep = "acme-chat-8b"
    spot_id = next(i.id for i in instances if i.deployment_id == dep)
    mixed = [i.model_copy(update={"lifecycle": Lifecycle.SPOT}) if i.id == spot_id else i for i in instances]
    fault = Fault(
        deployment_id=dep,
        kind=FaultKind.QUALITY_DEGRADATION,
        params={"drop_pct": 12, "scope": "spot"},
        created_at=NOW,
    )
    q = generate(customers, deployments, mixed, [fault], NOW, NOW + timedelta(minutes=30), seed=SEED)[
        Domain.QUALITY
    ]
    by = q.group_by("instance_id").agg(pl.col("quality_score").mean(), pl.col("hallucination_score").mean())
    spot = by.filter(pl.col("instance_id") == spot_id)
    others = by.filter(pl.col("instance_id") != spot_id)
    assert spot["quality_score"][0] == pytest.approx(0.88 * 0.88, abs=0.02)
    assert others["quality_score"].min() == pytest.approx(0.88, abs=0.02)
    assert spot["hallucination_score"][0] > others["hallucination_score"].max()
    everything = fault.model_copy(update={"params": {"drop_pct": 12, "scope": "all"}})
    obs = observe(customers, deployments, mixed, [everything], dep, NOW, 20, seed=SEED)
    assert obs["quality_mean"] == pytest.approx(0.88 * 0.88, abs=0.02)
    assert obs["spot_replicas"] == 1.0


def test_a_week_at_ten_seconds_has_a_row_per_instance_and_step(fleet) -> None:
    """The backfill's shape (its speed is measured by bench/sandbox_generate.py)."""
    start = NOW - timedelta(days=7)
    frames = generate(*fleet, [], start, NOW, seed=SEED, step_s=10)
    # Replicas launched within the week (a sandbox scale-up) have rows from their launch on.
    steps = sum((NOW - max(i.launched_at, start)) // timedelta(seconds=10) for i in fleet[2])
    assert frames[Domain.PERFORMANCE].height == steps
    assert frames[Domain.RESOURCE].height == steps


def test_synthetic_fleet_is_shaped_like_production_and_repeats() -> None:
    customers, deployments, instances = synthetic_fleet(1_000, SEED, NOW)
    assert len(instances) == 1_000 == sum(d.replicas for d in deployments)
    assert 0.35 <= len(deployments) / len(instances) <= 0.5  # production: 428 per 1,000
    assert all(1 <= d.replicas <= 8 and capacity(d).fits for d in deployments)
    assert {d.customer_id for d in deployments} <= {c.id for c in customers}
    assert len({i.id for i in instances}) == len(instances)
    assert synthetic_fleet(1_000, SEED, NOW) == (customers, deployments, instances)
    assert synthetic_fleet(37, SEED, NOW)[2] and len(synthetic_fleet(37, SEED, NOW)[2]) == 37


def test_deployments_generated_apart_give_the_same_rows() -> None:
    """Generation groups rows by serving group and deployment: generating the fleet at once must give
    each instance the rows it gets when its deployment is generated alone (churn included)."""
    customers, deployments, instances = synthetic_fleet(60, SEED, NOW)
    instances[0] = instances[0].model_copy(
        update={"state": InstanceState.INTERRUPTED, "ended_at": NOW + timedelta(minutes=7)}
    )
    instances[1] = instances[1].model_copy(update={"launched_at": NOW + timedelta(minutes=4)})
    window = (NOW, NOW + timedelta(minutes=12))
    whole = generate(
        customers, deployments, instances, [], *window, seed=SEED, step_s=60, quality_sample_s=60
    )
    for domain in Domain:
        apart = pl.concat(
            [
                generate(
                    customers,
                    [d],
                    [i for i in instances if i.deployment_id == d.id],
                    [],
                    *window,
                    seed=SEED,
                    step_s=60,
                    quality_sample_s=60,
                )[domain]
                for d in deployments
            ]
        ).sort("ts", "instance_id", maintain_order=True)  # a GPU row's order within its instance kept
        assert_frame_equal(whole[domain], apart, check_exact=True)


def test_quality_follows_each_instance_engine(fleet) -> None:
    """A canary on int4 weights loses the quality the serving model expects of it; its siblings don't."""
    customers, deployments, instances = fleet
    dep = next(d for d in deployments if d.id == "acme-chat-8b")
    canary = next(i for i in instances if i.deployment_id == dep.id)
    int4 = canary.engine.model_copy(update={"quantization": Quantization.INT4_GPTQ})
    mixed = [i.model_copy(update={"engine": int4}) if i.id == canary.id else i for i in instances]
    q = generate(customers, deployments, mixed, [], NOW, NOW + timedelta(hours=1), seed=SEED)[Domain.QUALITY]
    by = dict(
        q.filter(pl.col("deployment_id") == dep.id)
        .group_by("instance_id")
        .agg(pl.col("quality_score").mean())
        .iter_rows()
    )
    factor = quality_factor(model(dep.model), int4)
    assert factor < 0.97
    siblings = [v for k, v in by.items() if k != canary.id]
    assert by[canary.id] / (sum(siblings) / len(siblings)) == pytest.approx(factor, abs=0.01)
    assert min(siblings) == pytest.approx(QUALITY_MEAN, abs=0.01)
