"""The agent registry: each agent's capabilities and health, health being the freshness Dagster
evaluates for the agent's assets (the FreshnessPolicy applied in definitions.py)."""

import dagster as dg

from optiinfra_assets.agents.registry import agents
from optiinfra_assets.reporting import table

HEALTH = {"PASS": "healthy", "WARN": "late", "FAIL": "stale", "UNKNOWN": "unknown"}


@dg.asset(
    group_name="agents",
    kinds={"python"},
    automation_condition=(
        dg.AutomationCondition.on_cron("*/15 * * * *") & ~dg.AutomationCondition.in_progress()
    ).with_label("every 15 minutes"),
)
def agent_registry(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Each agent's capabilities, detectors and the kinds it validates; its health is the worst
    freshness state of its assets (unknown until the freshness daemon has evaluated them)."""
    rows = []
    for agent in agents():
        keys = [dg.AssetKey(k) for k in agent.assets]
        records = context.instance.get_freshness_state_records(keys) if keys else {}
        states = [records[k].freshness_state.value if k in records else "UNKNOWN" for k in keys]
        worst = next((s for s in ("FAIL", "WARN", "UNKNOWN", "PASS") if s in states), "UNKNOWN")
        rows.append(
            {
                "agent": agent.name,
                "capabilities": ", ".join(agent.capabilities) or "-",
                "detectors": ", ".join(agent.detectors) or "-",
                "validates": ", ".join(agent.validates) or "-",
                "health": HEALTH[worst],
            }
        )
    return dg.MaterializeResult(
        metadata={
            "agents": len(rows),
            "healthy_agents": sum(1 for r in rows if r["health"] == "healthy"),
            "registry": table(rows),
        }
    )
