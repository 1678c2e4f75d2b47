"""Where approved changes are applied. The sandbox target changes the fleet kept in the StateStore.

Every operation states a desired state and is idempotent: applying it twice changes nothing the second
time, so an executor that crashed half-way can simply apply again. Changes are make-before-break: new
instances are launched before the ones they replace are released.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from optiinfra_assets.catalog import instance_type
from optiinfra_assets.models import Instance, InstanceState, Lifecycle
from optiinfra_assets.sandbox import new_instance_id, observe, pick_az
from resources.state_store import StateStore

ACTOR = "target:sandbox"


class Target(Protocol):
    name: str

    def snapshot(self, deployment_id: str) -> dict[str, Any]: ...

    def set_lifecycle_count(self, deployment_id: str, lifecycle: Lifecycle, count: int) -> list[str]: ...

    def restore(self, deployment_id: str, snapshot: dict[str, Any]) -> list[str]: ...

    def heal(self, deployment_id: str) -> list[str]: ...

    def observe(self, deployment_id: str, seconds: int) -> dict[str, float]: ...


def _other(lifecycle: Lifecycle) -> Lifecycle:
    return Lifecycle.ON_DEMAND if lifecycle == Lifecycle.SPOT else Lifecycle.SPOT


class SandboxTarget:
    """The sandbox fleet persisted in the StateStore; `clock` says what 'now' is (UTC)."""

    name = "sandbox"

    def __init__(self, state: StateStore, seed: int, clock: Callable[[], datetime] | None = None) -> None:
        self.state = state
        self.seed = seed
        self.clock = clock or (lambda: datetime.now(UTC))

    # ---- reading -------------------------------------------------------------------------------

    def snapshot(self, deployment_id: str) -> dict[str, Any]:
        deployment = self.state.get_deployment(deployment_id)
        running = self.state.list_instances(deployment_id)
        counts = {str(lc): sum(i.lifecycle == lc for i in running) for lc in Lifecycle}
        return {
            "deployment_id": deployment_id,
            "replicas": deployment.replicas,
            "lifecycle_counts": counts,
            "instances": [
                {"id": i.id, "lifecycle": str(i.lifecycle), "state": str(i.state)} for i in running
            ],
            "taken_at": self.clock().isoformat(),
        }

    def observe(self, deployment_id: str, seconds: int) -> dict[str, float]:
        return observe(
            self.state.list_customers(),
            self.state.list_deployments(),
            self.state.list_instances(deployment_id, include_ended=True),
            self.state.list_faults(deployment_id),
            deployment_id,
            self.clock(),
            seconds,
            seed=self.seed,
        )

    # ---- changing ------------------------------------------------------------------------------

    def _launch(self, deployment_id: str, lifecycle: Lifecycle, n: int) -> list[str]:
        if n <= 0:
            return []
        deployment = self.state.get_deployment(deployment_id)
        itype = instance_type(deployment.instance_type)
        itype.price_usd_hour(lifecycle)  # refuses a lifecycle the type has no price for, before launching
        taken = {i.id for i in self.state.list_instances(deployment_id, include_ended=True)}
        now, new, k = self.clock(), [], len(taken)
        while len(new) < n:
            iid = new_instance_id(self.seed, deployment_id, k)
            k += 1
            if iid in taken:
                continue
            new.append(
                Instance(
                    id=iid,
                    deployment_id=deployment_id,
                    instance_type=itype.name,
                    lifecycle=lifecycle,
                    az=pick_az(self.seed, iid),
                    launched_at=now,
                )
            )
        self.state.add_instances(new)
        for inst in new:
            detail = {
                "deployment_id": deployment_id,
                "lifecycle": str(lifecycle),
                "instance_type": itype.name,
            }
            self.state.audit(ACTOR, "launch_instance", "instance", inst.id, detail)
        return [f"launched {i.id} ({itype.name}, {lifecycle}) for {deployment_id}" for i in new]

    def _release(self, victims: list[Instance]) -> list[str]:
        now = self.clock()
        actions = []
        for inst in victims:
            self.state.end_instance(inst.id, InstanceState.TERMINATED, now)
            detail = {"deployment_id": inst.deployment_id, "lifecycle": str(inst.lifecycle)}
            self.state.audit(ACTOR, "terminate_instance", "instance", inst.id, detail)
            actions.append(f"released {inst.id} ({inst.lifecycle}) of {inst.deployment_id}")
        return actions

    def set_lifecycle_count(self, deployment_id: str, lifecycle: Lifecycle, count: int) -> list[str]:
        """Afterwards exactly `count` running replicas are on `lifecycle` and the rest, up to the
        deployment's `replicas`, on the other lifecycle."""
        deployment = self.state.get_deployment(deployment_id)
        if not 0 <= count <= deployment.replicas:
            raise ValueError(
                f"{deployment_id} has {deployment.replicas} replicas; cannot put {count} on {lifecycle}"
            )
        want = {lifecycle: count, _other(lifecycle): deployment.replicas - count}
        running = self.state.list_instances(deployment_id)
        have = {lc: [i for i in running if i.lifecycle == lc] for lc in Lifecycle}
        actions: list[str] = []
        for lc in (lifecycle, _other(lifecycle)):  # make ...
            actions += self._launch(deployment_id, lc, want[lc] - len(have[lc]))
        for lc in (_other(lifecycle), lifecycle):  # ... before break; the newest go first
            surplus = len(have[lc]) - want[lc]
            if surplus > 0:
                actions += self._release(have[lc][::-1][:surplus])
        if actions:
            detail = {"lifecycle": str(lifecycle), "count": count, "actions": actions}
            self.state.audit(ACTOR, "set_lifecycle_count", "deployment", deployment_id, detail)
        return actions

    def restore(self, deployment_id: str, snapshot: dict[str, Any]) -> list[str]:
        """Back to the snapshot's lifecycle mix (the instances themselves may be new ones)."""
        spot = int(snapshot["lifecycle_counts"].get(str(Lifecycle.SPOT), 0))
        actions = self.set_lifecycle_count(deployment_id, Lifecycle.SPOT, spot)
        if actions:
            self.state.audit(
                ACTOR, "restore", "deployment", deployment_id, {"to": snapshot["lifecycle_counts"]}
            )
        return actions

    def heal(self, deployment_id: str) -> list[str]:
        """Replace interrupted instances, each with its own lifecycle, until `replicas` are running."""
        deployment = self.state.get_deployment(deployment_id)
        missing = deployment.replicas - len(self.state.list_instances(deployment_id))
        if missing <= 0:
            return []
        lost = [
            i
            for i in self.state.list_instances(deployment_id, include_ended=True)
            if i.state == InstanceState.INTERRUPTED
        ]
        lost.sort(key=lambda i: i.ended_at or i.launched_at, reverse=True)
        lifecycles = [i.lifecycle for i in lost[:missing]]
        lifecycles += [Lifecycle.ON_DEMAND] * (missing - len(lifecycles))
        actions: list[str] = []
        for lc in Lifecycle:
            actions += self._launch(deployment_id, lc, lifecycles.count(lc))
        self.state.audit(ACTOR, "heal", "deployment", deployment_id, {"actions": actions})
        return actions


def interrupt_spot_instance(state: StateStore, deployment_id: str, at: datetime) -> str | None:
    """Sandbox only: the cloud reclaims one running spot instance of the deployment (a spot loss)."""
    spot = [i for i in state.list_instances(deployment_id) if i.lifecycle == Lifecycle.SPOT]
    if not spot:
        return None
    victim = min(spot, key=lambda i: i.id)
    state.end_instance(victim.id, InstanceState.INTERRUPTED, at)
    state.audit("sandbox", "spot_interruption", "instance", victim.id, {"deployment_id": deployment_id})
    return victim.id


def open_target(name: str, state: StateStore, seed: int) -> Target:
    """The target named by OPTIINFRA_TARGET."""
    if name == "sandbox":
        return SandboxTarget(state, seed)
    raise ValueError(f"OPTIINFRA_TARGET: unknown target {name!r} (sandbox)")
