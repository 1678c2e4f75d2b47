"""The agent registry: each agent's capabilities and health (last success, freshness)."""

import time

import dagster as dg

from optiinfra_assets.agents.registry import AGENTS
from optiinfra_assets.reporting import md_table


@dg.asset(group_name="agents", kinds={"python"})
def agent_registry(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Health = age of the newest materialization among the agent's assets (stale past its limit)."""
    now = time.time()
    rows = []
    for agent in AGENTS:
        stamps = []
        for key in agent.assets:
            event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
            if event is not None:
                stamps.append(event.timestamp)
        last = max(stamps) if stamps else None
        age = (now - last) / 60 if last else None
        healthy = age is not None and age <= agent.max_age_minutes
        rows.append(
            {
                "agent": agent.name,
                "capabilities": ", ".join(agent.capabilities),
                "last_success": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(last)) if last else "never",
                "age_minutes": round(age, 1) if age is not None else "",
                "health": "healthy" if healthy else "stale",
            }
        )
    return dg.MaterializeResult(
        metadata={
            "agents": len(rows),
            "healthy_agents": sum(1 for r in rows if r["health"] == "healthy"),
            "registry": dg.MetadataValue.md(md_table(rows)),
        }
    )
