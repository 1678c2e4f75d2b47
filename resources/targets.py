"""Where approved changes are applied. The sandbox target changes the fleet kept in the StateStore.

A change is a desired :class:`DeploymentConfig`; a stage applies a fraction of the way to it. Instances are
grouped in pools of interchangeable ones (instance type, lifecycle, engine config), so one mechanism moves
replicas to spot, swaps their hardware or rolls a new engine config out to a canary.

Every operation states a desired state and is idempotent: applying it twice changes nothing the second
time, so an executor that crashed half-way can simply apply again. Changes are make-before-break: new
instances are launched before the ones they replace are released.

**Shared hosts.** A pool whose engine runs on fewer GPUs than its instance type has (a config with
``gpus_per_replica``; serving.validate_config refuses that otherwise) is a pool of slices: each replica takes
whole GPUs of a multi-GPU host that may hold other deployments' slices. A slice goes on the fullest running
host of its type and lifecycle with room for it, else on a new host; a dedicated-hardware customer's slices
only on its own hosts, and no one else's on them; a deployment keeps at most (its pool's replicas - 1)
slices on one host, so two or more replicas always sit on two or more hosts. Releasing a host's last slice
ends the host; a spot reclaim takes the whole host and every slice on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Protocol

from optiinfra_assets.catalog import instance_type
from optiinfra_assets.models import (
    Customer,
    Deployment,
    DeploymentConfig,
    EngineConfig,
    Fault,
    Host,
    Instance,
    InstanceState,
    Lifecycle,
)
from optiinfra_assets.sandbox import new_instance_id, observe, observe_samples, pick_az
from optiinfra_assets.serving import validate_config
from resources.state_store import StateStore

ACTOR = "target:sandbox"


Pool = tuple[str, Lifecycle, EngineConfig]  # (instance type, lifecycle, engine): interchangeable instances


def pools(config: DeploymentConfig) -> dict[Pool, int]:
    """The instances a config asks for, by pool (pools with no replica left out)."""
    out = {
        (config.instance_type, lc, config.engine): config.replicas_on(lc)
        for lc in (Lifecycle.ON_DEMAND, Lifecycle.SPOT)
    }
    return {pool: n for pool, n in out.items() if n > 0}


def stage_pools(base: DeploymentConfig, desired: DeploymentConfig, fraction: float) -> dict[Pool, int]:
    """Instances per pool ``fraction`` of the way from ``base`` to ``desired``.

    Each pool moves by ceil(fraction x its change), so 10% of a change moves at least one instance, growing
    pools are filled as fast as shrinking ones are drained (the replica count holds for a like-for-like
    swap), and fraction 1 is exactly ``desired``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: expected 0..1, got {fraction}")
    have, want = pools(base), pools(desired)
    out: dict[Pool, int] = {}
    for pool in {**have, **want}:
        b, d = have.get(pool, 0), want.get(pool, 0)
        step = math.ceil(abs(d - b) * fraction - 1e-9)
        n = b + step if d >= b else b - step
        if n > 0:
            out[pool] = n
    return out


def slice_gpus(pool: Pool) -> int | None:
    """GPUs per replica of a pool of slices of shared hosts (its engine's TP x PP, fewer than its type's GPUs);
    None for a pool of whole instances."""
    itype_name, _, engine = pool
    gpus = engine.tensor_parallel_size * engine.pipeline_parallel_size
    return gpus if gpus < instance_type(itype_name).gpu_count else None


def _check_prices(want: dict[Pool, int]) -> None:
    """Refuse, before anything is launched, a pool on a lifecycle its type has no price for (no spot market)."""
    for itype_name, lifecycle, _ in want:
        instance_type(itype_name).price_usd_hour(lifecycle)


class Target(Protocol):
    """Where approved changes are applied. Every operation states a desired state and is idempotent."""

    name: str

    def current(self, deployment_id: str) -> DeploymentConfig:
        """The config the deployment runs as (before any change under way)."""
        ...

    def apply(self, deployment_id: str, desired: DeploymentConfig, fraction: float) -> list[str]:
        """Move ``fraction`` of the way from the current config to ``desired`` (1.0: all of it, after which
        ``desired`` is the current config). Make-before-break; returns what was done."""
        ...

    def rollback(self, deployment_id: str, to: DeploymentConfig) -> list[str]:
        """Back to ``to`` whatever was applied since; returns what was done."""
        ...

    def heal(self, deployment_id: str) -> list[str]:
        """Replace capacity lost outside our control (a spot reclaim) to the deployment's desired state."""
        ...

    def observe(self, deployment_id: str, seconds: int) -> dict[str, float]: ...

    def observe_samples(
        self, deployment_id: str, seconds: int, canary: Collection[Pool]
    ) -> dict[str, list[float]]:
        """Per-request samples of the next ``seconds`` by arm: instances in a ``canary`` pool against the
        others (``quality_canary``, ``quality_control``, ``latency_canary``, ``latency_control``)."""
        ...


class SandboxTarget:
    """The sandbox fleet persisted in the StateStore; `clock` says what 'now' is (UTC)."""

    name = "sandbox"

    def __init__(self, state: StateStore, seed: int, clock: Callable[[], datetime] | None = None) -> None:
        self.state = state
        self.seed = seed
        self.clock = clock or (lambda: datetime.now(UTC))

    # ---- reading -------------------------------------------------------------------------------

    def current(self, deployment_id: str) -> DeploymentConfig:
        return self.state.get_deployment(deployment_id).config

    def _fleet(
        self, deployment_id: str
    ) -> tuple[list[Customer], list[Deployment], list[Instance], list[Fault]]:
        """What the sandbox simulates a deployment from: the customers, deployments, and its instances
        (ended ones too) and faults."""
        return (
            self.state.list_customers(),
            self.state.list_deployments(),
            self.state.list_instances(deployment_id, include_ended=True),
            self.state.list_faults(deployment_id),
        )

    def observe(self, deployment_id: str, seconds: int) -> dict[str, float]:
        return observe(*self._fleet(deployment_id), deployment_id, self.clock(), seconds, seed=self.seed)

    def observe_samples(
        self, deployment_id: str, seconds: int, canary: Collection[Pool]
    ) -> dict[str, list[float]]:
        return observe_samples(
            *self._fleet(deployment_id), deployment_id, self.clock(), seconds, canary, seed=self.seed
        )

    # ---- changing ------------------------------------------------------------------------------

    def _launch(self, deployment_id: str, pool: Pool, n: int, pool_size: int) -> list[str]:
        if n <= 0:
            return []
        itype_name, lifecycle, engine = pool
        itype = instance_type(itype_name)
        gpus = slice_gpus(pool)
        taken = {i.id for i in self.state.list_instances(deployment_id, include_ended=True)}
        now, new, k = self.clock(), [], len(taken)
        actions: list[str] = []
        placer = _HostPlacer(self, deployment_id, itype_name, lifecycle, pool_size) if gpus else None
        while len(new) < n:
            iid = new_instance_id(self.seed, deployment_id, k)
            k += 1
            if iid in taken:
                continue
            host = None
            if placer is not None and gpus is not None:
                host, opened = placer.place(gpus)
                actions += opened
            new.append(
                Instance(
                    id=iid,
                    deployment_id=deployment_id,
                    instance_type=itype.name,
                    lifecycle=lifecycle,
                    engine=engine,
                    az=host.az if host else pick_az(self.seed, iid),
                    launched_at=now,
                    host_id=host.id if host else None,
                    gpus=gpus,
                )
            )
        self.state.add_instances(new)
        for inst in new:
            detail = {
                "deployment_id": deployment_id,
                "lifecycle": str(lifecycle),
                "instance_type": itype.name,
                "engine": engine.model_dump(mode="json"),
            }
            if inst.host_id:
                detail |= {"host_id": inst.host_id, "gpus": inst.gpus}
            self.state.audit(ACTOR, "launch_instance", "instance", inst.id, detail)
        where = {i.id: f" on {i.gpus} GPUs of host {i.host_id}" if i.host_id else "" for i in new}
        return actions + [
            f"launched {i.id} ({itype.name}, {lifecycle}){where[i.id]} for {deployment_id}" for i in new
        ]

    def _release(self, victims: list[Instance]) -> list[str]:
        now = self.clock()
        actions = []
        for inst in victims:
            self.state.end_instance(inst.id, InstanceState.TERMINATED, now)
            detail = {"deployment_id": inst.deployment_id, "lifecycle": str(inst.lifecycle)}
            self.state.audit(ACTOR, "terminate_instance", "instance", inst.id, detail)
            actions.append(f"released {inst.id} ({inst.lifecycle}) of {inst.deployment_id}")
        for host_id in sorted({i.host_id for i in victims if i.host_id}):
            if not self.state.list_host_slices(host_id):  # its last slice left: the host goes too
                self.state.end_host(host_id, InstanceState.TERMINATED, now)
                self.state.audit(ACTOR, "terminate_host", "host", host_id, {"reason": "no slice left"})
                actions.append(f"released host {host_id} (its last slice left)")
        return actions

    def _converge(self, deployment_id: str, want: dict[Pool, int], *, release: bool = True) -> list[str]:
        """Launch what each pool lacks, then (make before break) release surplus, newest first."""
        running = self.state.list_instances(deployment_id)
        have: dict[Pool, list[Instance]] = {}
        for inst in running:
            have.setdefault((inst.instance_type, inst.lifecycle, inst.engine), []).append(inst)
        actions: list[str] = []
        for pool, n in want.items():
            actions += self._launch(deployment_id, pool, n - len(have.get(pool, [])), n)
        if release:
            for pool, instances in have.items():
                surplus = len(instances) - want.get(pool, 0)
                if surplus > 0:
                    actions += self._release(instances[::-1][:surplus])
        return actions

    def apply(self, deployment_id: str, desired: DeploymentConfig, fraction: float) -> list[str]:
        deployment = self.state.get_deployment(deployment_id)
        validate_config(deployment.model, desired)  # ConfigError names the field: nothing is launched
        changes = deployment.config.changes(desired)
        want = stage_pools(deployment.config, desired, fraction)
        _check_prices(want)
        actions = self._converge(deployment_id, want)
        if fraction >= 1.0:
            deployment = deployment.model_copy(
                update={"config": desired, "rollout_to": None, "rollout_fraction": 0.0}
            )
        else:
            deployment = deployment.model_copy(update={"rollout_to": desired, "rollout_fraction": fraction})
        self.state.upsert_deployment(deployment)
        if actions:
            detail = {"fraction": fraction, "changes": changes, "actions": actions}
            self.state.audit(ACTOR, "apply", "deployment", deployment_id, detail)
        return actions

    def rollback(self, deployment_id: str, to: DeploymentConfig) -> list[str]:
        deployment = self.state.get_deployment(deployment_id)
        _check_prices(pools(to))
        actions = self._converge(deployment_id, pools(to))
        self.state.upsert_deployment(
            deployment.model_copy(update={"config": to, "rollout_to": None, "rollout_fraction": 0.0})
        )
        if actions:
            self.state.audit(
                ACTOR,
                "rollback",
                "deployment",
                deployment_id,
                {"to": to.model_dump(mode="json"), "actions": actions},
            )
        return actions

    def heal(self, deployment_id: str) -> list[str]:
        """Re-launch what the deployment's desired state (its config, or the blend of a change under way)
        lacks; never releases, so healing cannot disturb a stage in flight."""
        deployment = self.state.get_deployment(deployment_id)
        if deployment.rollout_to is not None:
            want = stage_pools(deployment.config, deployment.rollout_to, deployment.rollout_fraction)
        else:
            want = pools(deployment.config)
        actions = self._converge(deployment_id, want, release=False)
        if actions:
            self.state.audit(ACTOR, "heal", "deployment", deployment_id, {"actions": actions})
        return actions


def interrupt_spot_instance(state: StateStore, deployment_id: str, at: datetime) -> str | None:
    """Sandbox only: the cloud reclaims one running spot instance of the deployment (a spot loss); a slice's
    whole host is reclaimed, with every slice on it."""
    spot = [i for i in state.list_instances(deployment_id) if i.lifecycle == Lifecycle.SPOT]
    if not spot:
        return None
    victim = min(spot, key=lambda i: i.id)
    lost = state.list_host_slices(victim.host_id) if victim.host_id else [victim]
    for inst in lost:
        state.end_instance(inst.id, InstanceState.INTERRUPTED, at)
        state.audit(
            "sandbox", "spot_interruption", "instance", inst.id, {"deployment_id": inst.deployment_id}
        )
    if victim.host_id:
        state.end_host(victim.host_id, InstanceState.INTERRUPTED, at)
        state.audit("sandbox", "spot_interruption", "host", victim.host_id, {"slices": [i.id for i in lost]})
    return victim.id


class _HostPlacer:
    """Where a deployment's new slices go (module doc): hosts of one type and lifecycle it may use, their free
    GPUs and its slices on each, kept up to date as slices are placed."""

    def __init__(
        self, target: SandboxTarget, deployment_id: str, itype_name: str, lifecycle: Lifecycle, pool_size: int
    ) -> None:
        self.target, self.itype_name, self.lifecycle = target, itype_name, lifecycle
        deployment = target.state.get_deployment(deployment_id)
        customer = next((c for c in target.state.list_customers() if c.id == deployment.customer_id), None)
        self.dedicated_to = customer.id if customer is not None and customer.dedicated_hardware else None
        self.deployment_id = deployment_id
        self.cap = max(1, pool_size - 1)  # slices of this deployment per host: spread over two or more
        self.gpu_count = instance_type(itype_name).gpu_count
        self.hosts = [
            h
            for h in target.state.list_hosts()
            if h.instance_type == itype_name
            and h.lifecycle == lifecycle
            and h.dedicated_customer_id == self.dedicated_to
        ]
        self.used: dict[str, int] = {h.id: 0 for h in self.hosts}
        self.mine: dict[str, int] = {h.id: 0 for h in self.hosts}
        for inst in target.state.list_instances():
            if inst.host_id in self.used:
                self.used[inst.host_id] += inst.gpus or 0
                self.mine[inst.host_id] += inst.deployment_id == deployment_id

    def place(self, gpus: int) -> tuple[Host, list[str]]:
        """The host the next slice goes on (the fullest with room; a new one if none) and what was done."""
        fits = [
            h for h in self.hosts if self.gpu_count - self.used[h.id] >= gpus and self.mine[h.id] < self.cap
        ]
        actions: list[str] = []
        if fits:
            host = min(fits, key=lambda h: (self.gpu_count - self.used[h.id], h.id))
        else:
            host = self._open()
            actions.append(
                f"launched host {host.id} ({self.itype_name}, {self.lifecycle}"
                + (f", dedicated to {self.dedicated_to})" if self.dedicated_to else ")")
            )
        self.used[host.id] += gpus
        self.mine[host.id] += 1
        return host, actions

    def _open(self) -> Host:
        state, seed = self.target.state, self.target.seed
        taken = {h.id for h in state.list_hosts(include_ended=True)}
        k = len(taken)
        while (hid := new_instance_id(seed, f"host:{self.itype_name}", k)) in taken:
            k += 1
        host = Host(
            id=hid,
            instance_type=self.itype_name,
            lifecycle=self.lifecycle,
            dedicated_customer_id=self.dedicated_to,
            az=pick_az(seed, hid),
            launched_at=self.target.clock(),
        )
        state.add_host(host)
        detail = {
            "instance_type": host.instance_type,
            "lifecycle": str(host.lifecycle),
            "dedicated_customer_id": host.dedicated_customer_id,
            "for": self.deployment_id,
        }
        state.audit(ACTOR, "launch_host", "host", host.id, detail)
        self.hosts.append(host)
        self.used[host.id] = 0
        self.mine[host.id] = 0
        return host


def open_target(name: str, state: StateStore, seed: int) -> Target:
    """The target named by OPTIINFRA_TARGET."""
    if name == "sandbox":
        return SandboxTarget(state, seed)
    if name == "aws":
        from resources.aws_target import open_aws_target  # boto3 and the AWS settings only when asked for

        return open_aws_target(state)
    raise ValueError(f"OPTIINFRA_TARGET: unknown target {name!r} (sandbox, aws)")
