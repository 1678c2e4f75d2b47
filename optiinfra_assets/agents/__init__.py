"""Each agent's logic as plain Python, and the one list of what the agents can do.

``CAPABILITIES`` (changes) and ``DETECTORS`` (monitors) are collected here once; the workflow, the Dagster
assets, the CLI, the agent registry and coordination iterate them and never name a kind. Adding a
capability is one module in its agent's folder and one line below. ``VALIDATORS`` says how each agent
judges a change any capability proposes.
"""

from __future__ import annotations

from optiinfra_assets.agents import application, performance, resource
from optiinfra_assets.agents.application.degradation import QualityDegradation, QualityRollback
from optiinfra_assets.agents.application.quality_drift import QualityDrift
from optiinfra_assets.agents.capability import Capability, Detector, Validator
from optiinfra_assets.agents.cost.budget_forecast import BudgetForecasts
from optiinfra_assets.agents.cost.cost_anomalies import CostAnomalies
from optiinfra_assets.agents.cost.reserved_capacity import ReservedCapacity
from optiinfra_assets.agents.cost.right_sizing import RightSizing
from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.agents.performance.batch_tuning import BatchTuning
from optiinfra_assets.agents.performance.kv_cache_tuning import KvCacheTuning
from optiinfra_assets.agents.performance.latency_anomalies import LatencyAnomalies
from optiinfra_assets.agents.performance.parallelism import Parallelism
from optiinfra_assets.agents.performance.quantization import QuantizationCapability
from optiinfra_assets.agents.resource.autoscaling import Autoscaling
from optiinfra_assets.agents.resource.consolidation import Consolidation
from optiinfra_assets.agents.resource.gpu_utilization import GpuUtilization
from optiinfra_assets.agents.resource.kv_cache_optimization import KvCacheOptimization
from optiinfra_assets.agents.resource.resource_anomalies import ResourceAnomalies

AGENTS: tuple[str, ...] = ("cost", "performance", "resource", "application")

CAPABILITIES: tuple[Capability, ...] = (
    SpotMigration(),
    RightSizing(),
    ReservedCapacity(),
    KvCacheTuning(),
    QuantizationCapability(),
    BatchTuning(),
    Parallelism(),
    Autoscaling(),
    Consolidation(),
    KvCacheOptimization(),
    QualityRollback(),
)

DETECTORS: tuple[Detector, ...] = (
    LatencyAnomalies(),
    CostAnomalies(),
    BudgetForecasts(),
    QualityDrift(),
    QualityDegradation(),
    GpuUtilization(),
    ResourceAnomalies(),
)

VALIDATORS: dict[str, Validator] = {
    performance.AGENT: performance.validate,
    resource.AGENT: resource.validate,
    application.AGENT: application.validate,
}


def find_capability(kind: str, capabilities: tuple[Capability, ...] = CAPABILITIES) -> Capability:
    """The capability of a recommendation kind; a KeyError names the kind and the known ones."""
    for cap in capabilities:
        if cap.kind == kind:
            return cap
    known = ", ".join(c.kind for c in capabilities) or "none"
    raise KeyError(f"unknown capability {kind!r} (known: {known})")
