"""Each agent's logic as plain Python, and the one list of what the agents can do.

``CAPABILITIES`` (changes) and ``DETECTORS`` (monitors) are collected here once; the workflow, the Dagster
assets, the CLI, the agent registry and coordination iterate them and never name a kind. Adding a
capability is one module in its agent's folder and one line below. ``VALIDATORS`` says how each agent
judges a change any capability proposes.
"""

from __future__ import annotations

from optiinfra_assets.agents import application, performance, resource
from optiinfra_assets.agents.capability import Capability, Detector, Validator
from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.agents.performance.latency_anomalies import LatencyAnomalies

AGENTS: tuple[str, ...] = ("cost", "performance", "resource", "application")

CAPABILITIES: tuple[Capability, ...] = (SpotMigration(),)

DETECTORS: tuple[Detector, ...] = (LatencyAnomalies(),)

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
