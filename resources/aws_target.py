"""The AWS target: approved changes applied to EC2 through boto3 (``OPTIINFRA_TARGET=aws``).

Same contract as the sandbox target (resources/targets.py): every operation states a desired state
(instances per pool of instance type, lifecycle and engine config) and converges EC2 to it, make before
break, idempotently. On EC2:

* **Launch templates**, one per deployment and pool (``optiinfra-<deployment>-<type>-<engine hash>``), hold
  the AMI, the instance type, the engine config as user data (what the instance's vLLM starts with) and
  the tags; instances are launched from them, spot ones with spot market options.
* **Tags** mark what is ours: ``optiinfra:managed=true``, ``optiinfra:deployment``, ``optiinfra:engine``
  (the engine config's hash: the pool). Only instances carrying the deployment's tag are ever counted,
  and a termination re-reads each instance's tags first: an instance without them is never touched.
* **Dry run** (``OPTIINFRA_AWS_DRY_RUN=true``): every mutating call is sent with ``DryRun=True``; EC2 answers
  whether it would have succeeded (and whether we hold the permission), and the actions are reported as
  "would ..." with nothing changed, in EC2 or in the state store.
* **Errors**: throttling and ``InsufficientInstanceCapacity`` are retried with exponential backoff; when
  the attempts are spent, what this call launched is terminated again and :class:`AwsTargetError` names
  the call, the error and the attempts, so the executor rolls the change back and records the reason.

The state store mirrors EC2 (instances launched and ended, the deployment's config and rollout), so the
fleet, the executor's stage counts and the CLI read it as they read the sandbox. Observation comes from
the metric store (what the collectors scrape from the instances), plus replica counts from EC2.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import DeploymentConfig, EngineConfig, Instance, InstanceState, Lifecycle
from optiinfra_assets.serving import ConfigError, validate_config
from resources.metric_store import MetricStore
from resources.state_store import StateStore
from resources.targets import Pool, _check_prices, pools, stage_pools

ACTOR = "target:aws"
TAG_MANAGED = "optiinfra:managed"
TAG_DEPLOYMENT = "optiinfra:deployment"
TAG_ENGINE = "optiinfra:engine"
LIVE_STATES = ("pending", "running")
THROTTLING = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
NO_CAPACITY = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity"})
RETRIED = THROTTLING | NO_CAPACITY


class AwsTargetError(RuntimeError):
    """A change EC2 refused or could not serve; the message names the call, the error and the attempts."""


class RetryPolicy(BaseModel):
    """Backoff of a retried EC2 call: ``base_delay_s`` x 2^attempt, at most ``max_delay_s``."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(5, ge=1, description="calls in all, the first one included")
    base_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(20.0, ge=0)

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2.0**attempt)


DEFAULT_RETRY = RetryPolicy()


def ec2_client(region: str) -> Any:
    """An EC2 client whose own retries are off: this module retries, with backoff it records."""
    import boto3

    return boto3.client("ec2", region_name=region, config=Config(retries={"total_max_attempts": 1}))


def engine_hash(engine: EngineConfig) -> str:
    """A short stable id of an engine config: the pool an instance belongs to (a tag value is too short
    for the whole config, which travels as the launch template's user data)."""
    return hashlib.sha256(engine.model_dump_json().encode()).hexdigest()[:12]


def _pool_key(pool: Pool) -> tuple[str, Lifecycle, str]:
    itype, lifecycle, engine = pool
    return itype, lifecycle, engine_hash(engine)


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


class AwsTarget:
    """Deployments as tagged EC2 instances launched from per-pool launch templates."""

    name = "aws"

    def __init__(
        self,
        state: StateStore,
        ec2: Any,
        image_id: str,
        *,
        dry_run: bool = False,
        subnet_ids: tuple[str, ...] = (),
        metrics: MetricStore | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not image_id:
            raise ValueError(
                "OPTIINFRA_AWS_IMAGE_ID: the AWS target needs the AMI its instances boot, got ''"
            )
        self.state, self.ec2, self.image_id = state, ec2, image_id
        self.dry_run, self.subnet_ids, self.metrics = dry_run, subnet_ids, metrics
        self.retry, self.sleep = retry, sleep
        self.clock = clock or (lambda: datetime.now(UTC))

    # ---- calling EC2 ----------------------------------------------------------------------------

    def _call(self, operation: str, *, missing_ok: bool = False, **params: Any) -> dict[str, Any] | None:
        """One EC2 call, retried with backoff on throttling and missing capacity. In dry-run mode a
        mutating call is sent with DryRun=True and returns None when EC2 says it would have succeeded.
        ``missing_ok``: a "not found" answer returns None too."""
        mutating = not operation.startswith("describe_")
        if self.dry_run and mutating:
            params = params | {"DryRun": True}
        for attempt in range(self.retry.max_attempts):
            try:
                return getattr(self.ec2, operation)(**params)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == "DryRunOperation" or (missing_ok and "NotFound" in code):
                    return None
                if code not in RETRIED:
                    raise AwsTargetError(
                        f"{operation}: {code}: {exc.response['Error'].get('Message', '')}"
                    ) from exc
                last = f"{code}: {exc.response['Error'].get('Message', '')}"
                if attempt + 1 < self.retry.max_attempts:
                    self.sleep(self.retry.delay(attempt))
        raise AwsTargetError(f"{operation}: {last} (gave up after {self.retry.max_attempts} attempts)")

    def _instances(self, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self._call(
                "describe_instances", Filters=filters, **({"NextToken": token} if token else {})
            )
            assert page is not None
            out += [i for r in page.get("Reservations", []) for i in r.get("Instances", [])]
            token = page.get("NextToken")
            if not token:
                return out

    def managed(self, deployment_id: str) -> list[dict[str, Any]]:
        """The deployment's live instances: pending or running and tagged as ours for it."""
        return self._instances(
            [
                {"Name": f"tag:{TAG_DEPLOYMENT}", "Values": [deployment_id]},
                {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
                {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
            ]
        )

    @staticmethod
    def _lifecycle(instance: dict[str, Any]) -> Lifecycle:
        return Lifecycle.SPOT if instance.get("InstanceLifecycle") == "spot" else Lifecycle.ON_DEMAND

    # ---- launch templates -----------------------------------------------------------------------

    def _template_name(self, deployment_id: str, pool: Pool) -> str:
        itype, _, engine = pool
        return f"optiinfra-{deployment_id}-{itype}-{engine_hash(engine)}"

    def _ensure_template(self, deployment_id: str, pool: Pool) -> tuple[str | None, list[str]]:
        """The pool's launch template (created when missing); (its name, what was done). The name is None
        in a dry run that would create it: there is no template to launch from yet."""
        name = self._template_name(deployment_id, pool)
        if self._call("describe_launch_templates", missing_ok=True, LaunchTemplateNames=[name]) is not None:
            return name, []
        itype, _, engine = pool
        tags = self._tag_list(deployment_id, engine)
        data = {
            "ImageId": self.image_id,
            "InstanceType": itype,
            "UserData": base64.b64encode(engine.model_dump_json().encode()).decode(),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}],
        }
        done = self._call(
            "create_launch_template",
            LaunchTemplateName=name,
            LaunchTemplateData=data,
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": tags}],
        )
        if done is None:
            return None, [f"would create launch template {name}"]
        return name, [f"created launch template {name}"]

    @staticmethod
    def _tag_list(deployment_id: str, engine: EngineConfig) -> list[dict[str, str]]:
        return [
            {"Key": TAG_MANAGED, "Value": "true"},
            {"Key": TAG_DEPLOYMENT, "Value": deployment_id},
            {"Key": TAG_ENGINE, "Value": engine_hash(engine)},
        ]

    # ---- launching and terminating --------------------------------------------------------------

    def _launch(self, deployment_id: str, pool: Pool, n: int) -> tuple[list[str], list[str]]:
        """(instance ids launched, what was done): n instances of the pool, all or none."""
        if n <= 0:
            return [], []
        template, actions = self._ensure_template(deployment_id, pool)
        itype, lifecycle, engine = pool
        # A dry run with no template yet asks EC2 about the same launch with the template's data inline.
        source = (
            {"LaunchTemplate": {"LaunchTemplateName": template, "Version": "$Latest"}}
            if template is not None
            else {"ImageId": self.image_id, "InstanceType": itype}
        )
        params: dict[str, Any] = {
            **source,
            "MinCount": n,
            "MaxCount": n,
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": self._tag_list(deployment_id, engine)}
            ],
            # The same token on every retry: EC2 launches once however often a throttled call is repeated.
            "ClientToken": uuid.uuid4().hex,
        }
        if self.subnet_ids:
            params["SubnetId"] = self.subnet_ids[0]
        if lifecycle is Lifecycle.SPOT:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        reply = self._call("run_instances", **params)
        if reply is None:
            return [], [*actions, f"would launch {n} x {itype} ({lifecycle}) for {deployment_id}"]
        launched = reply.get("Instances", [])
        now = self.clock()
        self.state.add_instances(
            [
                Instance(
                    id=i["InstanceId"],
                    deployment_id=deployment_id,
                    instance_type=itype,
                    lifecycle=lifecycle,
                    engine=engine,
                    az=i.get("Placement", {}).get("AvailabilityZone", ""),
                    launched_at=now,
                )
                for i in launched
            ]
        )
        ids = [i["InstanceId"] for i in launched]
        for iid in ids:
            detail = {"deployment_id": deployment_id, "lifecycle": str(lifecycle), "instance_type": itype}
            self.state.audit(ACTOR, "launch_instance", "instance", iid, detail)
        return ids, [*actions, *(f"launched {iid} ({itype}, {lifecycle}) for {deployment_id}" for iid in ids)]

    def _terminate(self, deployment_id: str, ids: Iterable[str]) -> list[str]:
        """Terminate instances of the deployment; each is re-read first and left alone unless it carries
        the deployment's and the project's tags."""
        ids = list(ids)
        if not ids:
            return []
        found = self._instances([{"Name": "instance-id", "Values": ids}])
        ours = [
            i["InstanceId"]
            for i in found
            if _tags(i).get(TAG_MANAGED) == "true" and _tags(i).get(TAG_DEPLOYMENT) == deployment_id
        ]
        refused = sorted(set(ids) - set(ours))
        actions = [f"left {iid} alone: it is not tagged as {deployment_id}'s" for iid in refused]
        if not ours:
            return actions
        reply = self._call("terminate_instances", InstanceIds=ours)
        if reply is None:
            return [*actions, *(f"would terminate {iid} of {deployment_id}" for iid in ours)]
        now = self.clock()
        for iid in ours:
            self.state.end_instance(iid, InstanceState.TERMINATED, now)
            self.state.audit(ACTOR, "terminate_instance", "instance", iid, {"deployment_id": deployment_id})
        return [*actions, *(f"terminated {iid} of {deployment_id}" for iid in ours)]

    def _sync_ended(self, deployment_id: str, live: list[dict[str, Any]]) -> list[str]:
        """Instances the state store has running that EC2 no longer runs (a spot reclaim) end there too."""
        live_ids = {i["InstanceId"] for i in live}
        gone = [i for i in self.state.list_instances(deployment_id) if i.id not in live_ids]
        now = self.clock()
        for inst in gone:
            ended = (
                InstanceState.INTERRUPTED if inst.lifecycle is Lifecycle.SPOT else InstanceState.TERMINATED
            )
            self.state.end_instance(inst.id, ended, now)
        return [f"{i.id} ({i.lifecycle}) of {deployment_id} is gone from EC2" for i in gone]

    def _converge(self, deployment_id: str, want: dict[Pool, int], *, release: bool = True) -> list[str]:
        """Launch what each pool lacks; then (make before break) terminate surplus, newest first. A launch
        that fails for good terminates what this call launched before the error is raised."""
        live = self.managed(deployment_id)
        actions = [] if self.dry_run else self._sync_ended(deployment_id, live)
        have: dict[tuple[str, Lifecycle, str], list[dict[str, Any]]] = {}
        for inst in sorted(live, key=lambda i: i.get("LaunchTime") or datetime.min.replace(tzinfo=UTC)):
            key = (inst["InstanceType"], self._lifecycle(inst), _tags(inst).get(TAG_ENGINE, ""))
            have.setdefault(key, []).append(inst)
        launched: list[str] = []
        try:
            for pool, n in want.items():
                ids, done = self._launch(deployment_id, pool, n - len(have.get(_pool_key(pool), [])))
                launched += ids
                actions += done
        except AwsTargetError as exc:
            undone = self._terminate(deployment_id, launched)
            detail = {"reason": str(exc), "launched_then_terminated": launched, "actions": actions + undone}
            self.state.audit(ACTOR, "launch_failed", "deployment", deployment_id, detail)
            raise
        if release:
            wanted = {_pool_key(pool): n for pool, n in want.items()}
            surplus: list[str] = []
            for key, instances in have.items():
                extra = len(instances) - wanted.get(key, 0)
                if extra > 0:
                    surplus += [i["InstanceId"] for i in instances[::-1][:extra]]
            actions += self._terminate(deployment_id, surplus)
        return actions

    # ---- the Target protocol ----------------------------------------------------------------------

    def current(self, deployment_id: str) -> DeploymentConfig:
        return self.state.get_deployment(deployment_id).config

    def apply(self, deployment_id: str, desired: DeploymentConfig, fraction: float) -> list[str]:
        deployment = self.state.get_deployment(deployment_id)
        validate_config(deployment.model, desired)  # ConfigError names the field: nothing is launched
        if desired.gpus_per_replica is not None:  # docs/operations.md: shared hosts are the sandbox's only
            why = "shared hosts (several replicas per EC2 instance) are not built for the AWS target"
            raise ConfigError("gpus_per_replica", desired.gpus_per_replica, why)
        want = stage_pools(deployment.config, desired, fraction)
        _check_prices(want)
        actions = self._converge(deployment_id, want)
        if self.dry_run:
            return actions
        if fraction >= 1.0:
            update: dict[str, Any] = {"config": desired, "rollout_to": None, "rollout_fraction": 0.0}
        else:
            update = {"rollout_to": desired, "rollout_fraction": fraction}
        self.state.upsert_deployment(deployment.model_copy(update=update))
        if actions:
            detail = {"fraction": fraction, "changes": deployment.config.changes(desired), "actions": actions}
            self.state.audit(ACTOR, "apply", "deployment", deployment_id, detail)
        return actions

    def rollback(self, deployment_id: str, to: DeploymentConfig) -> list[str]:
        deployment = self.state.get_deployment(deployment_id)
        _check_prices(pools(to))
        actions = self._converge(deployment_id, pools(to))
        if self.dry_run:
            return actions
        self.state.upsert_deployment(
            deployment.model_copy(update={"config": to, "rollout_to": None, "rollout_fraction": 0.0})
        )
        if actions:
            detail = {"to": to.model_dump(mode="json"), "actions": actions}
            self.state.audit(ACTOR, "rollback", "deployment", deployment_id, detail)
        return actions

    def heal(self, deployment_id: str) -> list[str]:
        """Re-launch what the deployment's desired state lacks (a spot reclaim); never terminates."""
        deployment = self.state.get_deployment(deployment_id)
        if deployment.rollout_to is not None:
            want = stage_pools(deployment.config, deployment.rollout_to, deployment.rollout_fraction)
        else:
            want = pools(deployment.config)
        actions = self._converge(deployment_id, want, release=False)
        if actions and not self.dry_run:
            self.state.audit(ACTOR, "heal", "deployment", deployment_id, {"actions": actions})
        return actions

    def observe(self, deployment_id: str, seconds: int) -> dict[str, float]:
        """Replica counts from EC2 and, with a metric store, the deployment's metrics of the last
        ``seconds`` as the collectors stored them (an empty window reports no figure rather than zeros)."""
        live = [i for i in self.managed(deployment_id) if i["State"]["Name"] == "running"]
        out = {
            "running_replicas": float(len(live)),
            "spot_replicas": float(sum(self._lifecycle(i) is Lifecycle.SPOT for i in live)),
        }
        if self.metrics is not None:
            out |= metrics_observation(self.metrics, deployment_id, self.clock() - timedelta(seconds=seconds))
        return out

    def observe_samples(
        self, deployment_id: str, seconds: int, canary: Collection[Pool]
    ) -> dict[str, list[float]]:
        """The stored per-row quality and p95 latency of the last ``seconds``, split into the instances of
        the ``canary`` pools (as the state store mirrors them from EC2) and the others. Without a metric
        store there are no samples, and the A/B check says so."""
        if self.metrics is None:
            return {}
        in_canary = {
            i.id
            for i in self.state.list_instances(deployment_id)
            if (i.instance_type, i.lifecycle, i.engine) in canary
        }
        since = self.clock() - timedelta(seconds=seconds)
        return metrics_samples(self.metrics, deployment_id, since, in_canary)


def metrics_samples(
    metrics: MetricStore, deployment_id: str, since: datetime, canary_ids: Collection[str]
) -> dict[str, list[float]]:
    """Per-row samples by arm (``quality_canary`` ... ``latency_control``) as the collectors stored them."""
    db = metrics.database
    where = "deployment_id = {deployment_id:String} AND ts >= {since:DateTime64(3, 'UTC')}"
    params = {"deployment_id": deployment_id, "since": since}
    out: dict[str, list[float]] = {}
    with metrics.session():
        for name, domain, column in (
            ("quality", Domain.QUALITY, "quality_score"),
            ("latency", Domain.PERFORMANCE, "latency_p95_ms"),
        ):
            frame = metrics.query_polars(
                f"SELECT instance_id, {column} AS v FROM {db}.{SCHEMAS[domain].table} "
                f"WHERE {where} AND isFinite({column})",
                params,
            )
            canary = frame["instance_id"].is_in(list(canary_ids))
            out[f"{name}_canary"] = frame.filter(canary)["v"].to_list()
            out[f"{name}_control"] = frame.filter(~canary)["v"].to_list()
    return out


def metrics_observation(metrics: MetricStore, deployment_id: str, since: datetime) -> dict[str, float]:
    """The deployment's stored metrics since ``since``, named as the sandbox's observation names them."""
    db = metrics.database
    where = "deployment_id = {deployment_id:String} AND ts >= {since:DateTime64(3, 'UTC')}"
    params = {"deployment_id": deployment_id, "since": since}
    queries = {
        Domain.PERFORMANCE: "avg(latency_p95_ms) AS latency_p95_ms, avg(ttft_ms) AS ttft_ms, "
        "sum(tokens_per_s) / greatest(uniqExact(ts), 1) AS tokens_per_s, "
        "sum(requests_per_s) / greatest(uniqExact(ts), 1) AS requests_per_s, count() AS n",
        Domain.RESOURCE: "avg(gpu_util_pct) AS gpu_util_pct, count() AS n",
        Domain.QUALITY: "avg(quality_score) AS quality_mean, avg(hallucination_score) AS hallucination_mean, "
        "count() AS n",
    }
    out: dict[str, float] = {}
    with metrics.session():
        for domain, select in queries.items():
            row = metrics.query_polars(
                f"SELECT {select} FROM {db}.{SCHEMAS[domain].table} WHERE {where}", params
            ).row(0, named=True)
            if row["n"]:
                out |= {k: float(v) for k, v in row.items() if k != "n" and v is not None}
    return out


def open_aws_target(state: StateStore) -> AwsTarget:
    """The AWS target from the OPTIINFRA_AWS_* settings, observing through the configured metric store."""
    from optiinfra_assets.config import Settings
    from resources.metric_store import open_metric_store

    settings = Settings.from_env()
    return AwsTarget(
        state,
        ec2_client(settings.aws_region),
        settings.aws_image_id,
        dry_run=settings.aws_dry_run,
        subnet_ids=tuple(s.strip() for s in settings.aws_subnet_ids.split(",") if s.strip()),
        metrics=open_metric_store(settings.clickhouse_url, settings.home),
    )
