"""The fleet as one pass of work sees it: read once, with set-based queries, then handed around.

Collection reads only the fleet (customers, deployments, instances, faults). Analysis reads the same plus
each deployment's whole-week baselines and recent figures, one query per metric domain for the whole
fleet, so that no capability ever queries a store per deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any

import polars as pl

from optiinfra_assets.models import (
    Customer,
    Deployment,
    DeploymentConfig,
    Fault,
    Instance,
    InstanceState,
    Lifecycle,
)

# The ``hourly`` key of instance-hours per deployment, instance type, lifecycle and hour
# (MetricStore.hourly_usage): what a reserved-capacity commitment is sized on.
USAGE = "usage"


@dataclass(frozen=True)
class BaselineStat:
    median: float
    mad: float
    p05: float
    p95: float
    n: int


@dataclass
class FleetSnapshot:
    customers: list[Customer]
    deployments: list[Deployment]
    instances: list[Instance]  # running ones, plus ended ones when the reader asked for them
    faults: list[Fault] = field(default_factory=list)
    taken_at: datetime | None = None
    # deployment_id -> metric -> whole-week baseline (the ALL_HOURS row); empty for collection.
    baselines: dict[str, dict[str, BaselineStat]] = field(default_factory=dict)
    # domain -> per deployment-hour rollup of the lookback (MetricStore.hourly), the whole fleet at once.
    hourly: dict[str, pl.DataFrame] = field(default_factory=dict)
    # The worst sampled requests of the last hour per deployment, with their text and scores
    # (optiinfra_assets.request_samples.load_worst): the offending responses a quality finding shows.
    worst_requests: pl.DataFrame = field(default_factory=pl.DataFrame)
    # Changes OptiInfra finished recently (agents.application.degradation.Change), to blame for a drop.
    changes: list[Any] = field(default_factory=list)
    # What this pass's detectors found (agents.capability.Finding), for capabilities that act on them.
    findings: list[Any] = field(default_factory=list)

    def owners(self) -> dict[str, tuple[str, str]]:
        """instance_id -> (customer_id, deployment_id) for every instance the fleet knows."""
        customer_of = {d.id: d.customer_id for d in self.deployments}
        return {
            i.id: (customer_of[i.deployment_id], i.deployment_id)
            for i in self.instances
            if i.deployment_id in customer_of
        }

    def owner(self, instance_id: str) -> tuple[str, str]:
        """(customer_id, deployment_id) of an instance; empty strings when the fleet does not know it."""
        return self.owners().get(instance_id, ("", ""))

    @cached_property
    def customer_by_id(self) -> dict[str, Customer]:
        return {c.id: c for c in self.customers}

    @cached_property
    def running_by_deployment(self) -> dict[str, list[Instance]]:
        out: dict[str, list[Instance]] = {d.id: [] for d in self.deployments}
        for inst in self.instances:
            if inst.state is InstanceState.RUNNING and inst.deployment_id in out:
                out[inst.deployment_id].append(inst)
        return out

    def baseline(self, deployment_id: str, metric: str) -> BaselineStat | None:
        return self.baselines.get(deployment_id, {}).get(metric)

    @cached_property
    def _hourly_by_deployment(self) -> dict[str, dict[str, pl.DataFrame]]:
        # Split each domain's frame once: filtering it per deployment would scan it once per deployment.
        return {
            domain: {
                key[0]: part.sort("hour")
                for key, part in frame.partition_by("deployment_id", as_dict=True).items()
            }
            for domain, frame in self.hourly.items()
            if not frame.is_empty()
        }

    def hourly_of(self, domain: str, deployment_id: str) -> pl.DataFrame:
        """The deployment's hourly rows of a domain, oldest first (empty when none were read)."""
        return self._hourly_by_deployment.get(domain, {}).get(deployment_id, pl.DataFrame())

    def with_config(self, deployment_id: str, config: DeploymentConfig) -> FleetSnapshot:
        """This snapshot as if ``deployment_id`` already ran as ``config`` (for re-evaluating a change on
        top of another): its recorded config and running instances are replaced by planned ones."""
        deployments = [
            d.model_copy(update={"config": config}) if d.id == deployment_id else d for d in self.deployments
        ]
        template = next((i for i in self.instances if i.deployment_id == deployment_id), None)
        launched = template.launched_at if template else (self.taken_at or datetime.min)
        planned = [
            Instance(
                id=f"planned-{deployment_id}-{lc.value}-{n}",
                deployment_id=deployment_id,
                instance_type=config.instance_type,
                lifecycle=lc,
                engine=config.engine,
                launched_at=launched,
            )
            for lc in (Lifecycle.ON_DEMAND, Lifecycle.SPOT)
            for n in range(config.replicas_on(lc))
        ]
        others = [i for i in self.instances if i.deployment_id != deployment_id]
        return self._derived(replace(self, deployments=deployments, instances=others + planned))

    def only(self, deployment_id: str) -> FleetSnapshot:
        """This snapshot narrowed to one deployment: re-evaluating one change re-analyzes that deployment,
        not the whole fleet once per conflict."""
        narrowed = [d for d in self.deployments if d.id == deployment_id]
        return self._derived(replace(self, deployments=narrowed))

    def _derived(self, other: FleetSnapshot) -> FleetSnapshot:
        # The hourly figures are the same: keep their split by deployment rather than redo it per copy.
        if "_hourly_by_deployment" in self.__dict__:
            other.__dict__["_hourly_by_deployment"] = self.__dict__["_hourly_by_deployment"]
        return other
