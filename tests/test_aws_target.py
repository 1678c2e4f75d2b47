"""The AWS target against moto's EC2 (never live AWS): tagged instances from launch templates, pools by
lifecycle and engine, untagged instances untouched, dry run, throttling and missing capacity retried with
backoff, then rolled back by the executor with the reason recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from optiinfra_assets import sandbox
from optiinfra_assets.agents.capability import Capability, Objective, Proposal, Skip
from optiinfra_assets.agents.rollout import RolloutContext, execute
from optiinfra_assets.catalog import default_config
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import (
    Customer,
    Decision,
    Deployment,
    DeploymentConfig,
    Evidence,
    ExecutionStatus,
    InstanceState,
    Lifecycle,
    Recommendation,
    RecommendationStatus,
    Risk,
)
from optiinfra_assets.snapshot import FleetSnapshot
from resources.aws_target import (
    TAG_DEPLOYMENT,
    AwsTarget,
    AwsTargetError,
    RetryPolicy,
    ec2_client,
    engine_hash,
    open_aws_target,
)
from resources.memory_store import open_memory_store
from resources.metric_store import open_metric_store
from resources.state_store import StateStore
from resources.targets import open_target

REGION = "us-east-1"
DEP = "acme-chat-8b"
ITYPE = "g6e.xlarge"
ON_DEMAND_2 = default_config(ITYPE, 2)
SPOT_MIX = ON_DEMAND_2.model_copy(update={"on_demand_replicas": 1, "spot_replicas": 2})


@pytest.fixture
def ec2(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    # moto's catalogue of public AMIs takes ~10 s to load and nothing here needs it: any AMI id boots.
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        yield ec2_client(REGION)


@pytest.fixture
def image_id(ec2) -> str:
    return "ami-0abcdef1234567890"


@pytest.fixture
def fleet(state: StateStore) -> StateStore:
    state.upsert_customer(
        Customer(id="acme", name="Acme", slo_p95_latency_ms=45_000, min_monthly_savings_usd=0)
    )
    state.upsert_deployment(
        Deployment(
            id=DEP, customer_id="acme", model="Llama-3.1-8B", config=ON_DEMAND_2, base_requests_per_s=1.0
        )
    )
    return state


class Delays:
    """The sleeps a target asked for (the test does not wait)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def delays() -> Delays:
    return Delays()


@pytest.fixture
def target(fleet: StateStore, ec2, image_id: str, delays: Delays) -> AwsTarget:
    aws = AwsTarget(fleet, ec2, image_id, retry=RetryPolicy(max_attempts=4, base_delay_s=0.5), sleep=delays)
    aws.rollback(DEP, ON_DEMAND_2)  # EC2 brought to the deployment's recorded config: 2 on demand
    delays.calls.clear()
    return aws


def live(ec2, **filters: str) -> list[dict]:
    spec = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    spec += [{"Name": k, "Values": [v]} for k, v in filters.items()]
    return [i for r in ec2.describe_instances(Filters=spec)["Reservations"] for i in r["Instances"]]


def inject(ec2, operation: str, code: str, times: int) -> list[int]:
    """Make the next ``times`` calls of ``operation`` fail with ``code`` (botocore's before-call hook answers
    instead of moto); returns a one-item list counting the failures served."""
    served = [0]

    def fail(**_: object):
        if served[0] >= times:
            return None
        served[0] += 1
        response = AWSResponse(f"https://ec2.{REGION}.amazonaws.com/", 503, {}, None)
        return response, {"Error": {"Code": code, "Message": f"injected {code}"}, "ResponseMetadata": {}}

    ec2.meta.events.register(f"before-call.ec2.{operation}", fail)
    return served


def test_apply_launches_tagged_instances_from_launch_templates(
    target: AwsTarget, ec2, fleet: StateStore
) -> None:
    actions = target.apply(DEP, SPOT_MIX, 1.0)
    mine = live(ec2, **{f"tag:{TAG_DEPLOYMENT}": DEP})
    assert sorted(i.get("InstanceLifecycle", "on-demand") for i in mine) == ["on-demand", "spot", "spot"]
    for inst in mine:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["optiinfra:managed"] == "true" and tags["optiinfra:engine"] == engine_hash(
            SPOT_MIX.engine
        )
        assert inst["InstanceType"] == ITYPE
    (template,) = ec2.describe_launch_templates()["LaunchTemplates"]
    assert template["LaunchTemplateName"] == f"optiinfra-{DEP}-{ITYPE}-{engine_hash(SPOT_MIX.engine)}"
    assert any(a.startswith("launched") for a in actions) and any(a.startswith("terminated") for a in actions)
    # The state store mirrors EC2 and now records the new config.
    running = fleet.list_instances(DEP)
    assert sorted(i.id for i in running) == sorted(i["InstanceId"] for i in mine)
    assert sum(i.lifecycle is Lifecycle.SPOT for i in running) == 2
    assert target.current(DEP) == SPOT_MIX
    assert target.apply(DEP, SPOT_MIX, 1.0) == []  # idempotent


def test_a_stage_is_make_before_break_and_heal_replaces_a_reclaim(
    target: AwsTarget, ec2, fleet: StateStore
) -> None:
    target.apply(DEP, SPOT_MIX, 0.5)  # one spot in, one on-demand out
    mine = live(ec2, **{f"tag:{TAG_DEPLOYMENT}": DEP})
    assert sorted(i.get("InstanceLifecycle", "on-demand") for i in mine) == ["on-demand", "spot"]
    assert fleet.get_deployment(DEP).rollout_fraction == 0.5
    spot = next(i["InstanceId"] for i in mine if i.get("InstanceLifecycle") == "spot")
    ec2.terminate_instances(InstanceIds=[spot])  # the cloud reclaims it
    healed = target.heal(DEP)
    assert any("gone from EC2" in a for a in healed) and any(a.startswith("launched") for a in healed)
    assert len(live(ec2, **{f"tag:{TAG_DEPLOYMENT}": DEP})) == 2
    assert next(i for i in fleet.list_instances(DEP, include_ended=True) if i.id == spot).state is (
        InstanceState.INTERRUPTED
    )
    assert target.observe(DEP, 60) == {"running_replicas": 2.0, "spot_replicas": 1.0}


def test_instances_without_the_projects_tag_are_never_touched(target: AwsTarget, ec2, image_id: str) -> None:
    foreign = ec2.run_instances(ImageId=image_id, InstanceType=ITYPE, MinCount=1, MaxCount=1)["Instances"][0]
    other = ec2.run_instances(
        ImageId=image_id,
        InstanceType=ITYPE,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": TAG_DEPLOYMENT, "Value": DEP}]}],
    )["Instances"][0]  # the deployment's tag but not the project's "managed" one
    target.apply(DEP, default_config(ITYPE, 1), 1.0)
    assert len(live(ec2, **{"tag:optiinfra:managed": "true"})) == 1
    survivors = {i["InstanceId"] for i in live(ec2)}
    assert {foreign["InstanceId"], other["InstanceId"]} <= survivors
    # Even asked by id, the target refuses to terminate what is not tagged as the deployment's.
    assert target._terminate(DEP, [foreign["InstanceId"]]) == [
        f"left {foreign['InstanceId']} alone: it is not tagged as {DEP}'s"
    ]
    assert foreign["InstanceId"] in {i["InstanceId"] for i in live(ec2)}


def test_dry_run_reports_and_changes_nothing(
    target: AwsTarget, ec2, fleet: StateStore, image_id: str
) -> None:
    before = {i["InstanceId"] for i in live(ec2)}
    dry = AwsTarget(fleet, ec2, image_id, dry_run=True)
    actions = dry.apply(DEP, SPOT_MIX, 1.0)
    # The pool's launch template exists (the fixture launched from it): a launch and a termination.
    assert actions[0] == f"would launch 2 x {ITYPE} (spot) for {DEP}"
    assert len(actions) == 2 and actions[1].startswith("would terminate i-")
    assert {i["InstanceId"] for i in live(ec2)} == before
    assert fleet.get_deployment(DEP).config == ON_DEMAND_2 and len(fleet.list_instances(DEP)) == 2


def test_throttling_is_retried_with_backoff(target: AwsTarget, ec2, delays: Delays) -> None:
    served = inject(ec2, "RunInstances", "RequestLimitExceeded", times=2)
    target.apply(DEP, default_config(ITYPE, 3), 1.0)
    assert served == [2] and delays.calls == [0.5, 1.0]
    assert len(live(ec2, **{f"tag:{TAG_DEPLOYMENT}": DEP})) == 3


def test_missing_capacity_gives_up_and_undoes_the_launches_of_the_call(
    target: AwsTarget, ec2, fleet: StateStore, delays: Delays
) -> None:
    # The on-demand pool grows first (it launches); the spot pool never gets capacity.
    bigger = ON_DEMAND_2.model_copy(update={"on_demand_replicas": 3, "spot_replicas": 2})

    def spot_has_no_capacity(params: dict, **_: object):
        if not any(key.startswith("InstanceMarketOptions") for key in params["body"]):  # the serialized call
            return None
        response = AWSResponse(f"https://ec2.{REGION}.amazonaws.com/", 500, {}, None)
        error = {"Code": "InsufficientInstanceCapacity", "Message": f"no {ITYPE} spot capacity"}
        return response, {"Error": error, "ResponseMetadata": {}}

    ec2.meta.events.register("before-call.ec2.RunInstances", spot_has_no_capacity)
    with pytest.raises(AwsTargetError, match=r"InsufficientInstanceCapacity.*gave up after 4 attempts"):
        target.apply(DEP, bigger, 1.0)
    assert delays.calls == [0.5, 1.0, 2.0]
    assert len(live(ec2, **{f"tag:{TAG_DEPLOYMENT}": DEP})) == 2  # the extra on-demand one was terminated
    (failed,) = [e for e in fleet.list_audit(DEP) if e.action == "launch_failed"]
    assert "InsufficientInstanceCapacity" in failed.detail["reason"]
    assert fleet.get_deployment(DEP).config == ON_DEMAND_2


class ToSpotEvidence(Evidence):
    kind: Literal["test_aws_to_spot"] = "test_aws_to_spot"


class ToSpot(Capability):
    """Moves a deployment to spot: defined only in this test, with no checks between stages."""

    kind: ClassVar[str] = "test_aws_to_spot"
    agent: ClassVar[str] = "cost"
    objective: ClassVar[Objective] = Objective.COST
    description: ClassVar[str] = "test: to spot on AWS"
    evidence_model = ToSpotEvidence

    def analyze(self, snapshot: FleetSnapshot, settings: DecisionSettings) -> Iterator[Proposal | Skip]:
        return iter(())


def _approved(state: StateStore, desired: DeploymentConfig) -> Recommendation:
    now = datetime.now(UTC)
    rec = Recommendation(
        id="rec-aws-1",
        kind=ToSpot.kind,
        customer_id="acme",
        deployment_id=DEP,
        created_at=now,
        expires_at=now + timedelta(hours=1),
        current=ON_DEMAND_2,
        desired=desired,
        risk=Risk.LOW,
        risk_score=0.1,
        summary="to spot",
        evidence=ToSpotEvidence(),
    )
    assert state.add_recommendation(rec)
    state.decide(rec.id, Decision.APPROVE, "alice", "ok", via="cli")
    return rec


def test_the_executor_rolls_back_and_records_why_capacity_ran_out(
    target: AwsTarget, ec2, fleet: StateStore, tmp_path: Path
) -> None:
    rec = _approved(fleet, SPOT_MIX)
    inject(ec2, "RunInstances", "InsufficientInstanceCapacity", times=100)
    ctx = RolloutContext(
        state=fleet,
        target=target,
        memory=open_memory_store("", tmp_path),
        baselines={},
        capabilities=(ToSpot(),),
        sleep=lambda s: None,
    )
    with pytest.raises(AwsTargetError):
        execute(ctx, rec.id, run_id=None)
    execution = fleet.get_execution(rec.id)
    assert execution is not None and execution.status is ExecutionStatus.FAILED
    assert (
        "InsufficientInstanceCapacity" in execution.reason and "gave up after 4 attempts" in execution.reason
    )
    assert fleet.get_recommendation(rec.id).status is RecommendationStatus.FAILED
    mine = live(ec2, **{f"tag:{TAG_DEPLOYMENT}": DEP})
    assert [i.get("InstanceLifecycle", "on-demand") for i in mine] == ["on-demand", "on-demand"]
    assert fleet.get_deployment(DEP).config == ON_DEMAND_2


def test_open_target_selects_aws_from_the_settings(
    fleet: StateStore, ec2, image_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path))
    monkeypatch.setenv("OPTIINFRA_AWS_DRY_RUN", "true")
    with pytest.raises(ValueError, match="OPTIINFRA_AWS_IMAGE_ID"):
        open_aws_target(fleet)
    monkeypatch.setenv("OPTIINFRA_AWS_IMAGE_ID", image_id)
    aws = open_target("aws", fleet, seed=0)
    assert isinstance(aws, AwsTarget) and aws.name == "aws" and aws.dry_run
    with pytest.raises(ValueError, match="unknown target 'gcp'"):
        open_target("gcp", fleet, seed=0)


def test_observe_reads_the_soak_window_from_the_metric_store(
    target: AwsTarget, ec2, fleet: StateStore, image_id: str, tmp_path: Path
) -> None:
    """What the collectors stored for the deployment's instances (here: sandbox rows for the EC2 ids)."""
    now = datetime.now(UTC).replace(microsecond=0)
    # The instances were launched a moment ago: generate as if they had served for the last hour.
    served = [i.model_copy(update={"launched_at": now - timedelta(hours=1)}) for i in fleet.list_instances()]
    frames = sandbox.generate(
        fleet.list_customers(),
        fleet.list_deployments(),
        served,
        [],
        now - timedelta(seconds=120),
        now,
        seed=1,
        step_s=1,
        quality_sample_s=1,
    )
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    with metrics.session():
        for domain, frame in frames.items():
            assert ingest(metrics, domain, frame, fleet.instance_index()).quarantined == 0
    aws = AwsTarget(fleet, ec2, image_id, metrics=metrics, clock=lambda: now)
    seen = aws.observe(DEP, 60)
    recent = frames[Domain.PERFORMANCE].filter(pl.col("ts") >= now - timedelta(seconds=60))
    assert seen["running_replicas"] == 2.0 and seen["spot_replicas"] == 0.0
    assert seen["latency_p95_ms"] == pytest.approx(recent["latency_p95_ms"].mean())
    assert 0.0 < seen["quality_mean"] <= 1.0 and seen["gpu_util_pct"] > 0.0
    assert set(aws.observe("no-such-deployment", 60)) == {"running_replicas", "spot_replicas"}
    # The A/B arms: one running instance's pool is the canary, the other instance is the control.
    canary_instance = next(i for i in fleet.list_instances(DEP))
    pool = (canary_instance.instance_type, canary_instance.lifecycle, canary_instance.engine)
    arms = aws.observe_samples(DEP, 60, {pool})
    quality = frames[Domain.QUALITY].filter(pl.col("ts") >= now - timedelta(seconds=60))
    in_pool = {i.id for i in fleet.list_instances(DEP) if (i.instance_type, i.lifecycle, i.engine) == pool}
    want_canary = quality.filter(pl.col("instance_id").is_in(list(in_pool)))["quality_score"]
    assert sorted(arms["quality_canary"]) == pytest.approx(sorted(want_canary.to_list()))
    assert len(arms["quality_canary"]) + len(arms["quality_control"]) == quality.height
    assert arms["latency_canary"] and AwsTarget(fleet, ec2, image_id).observe_samples(DEP, 60, {pool}) == {}
