"""The four agents: what each can do and which assets carry its work (health is read from those)."""

from __future__ import annotations

from pydantic import BaseModel


class AgentInfo(BaseModel):
    name: str
    capabilities: list[str]
    assets: list[str]  # asset keys whose freshness is the agent's health
    max_age_minutes: int  # older than this is stale


AGENTS: tuple[AgentInfo, ...] = (
    AgentInfo(
        name="cost",
        capabilities=["spot migration", "cost baselines"],
        assets=["cost_metrics", "cost_baselines", "spot_migration_recommendations"],
        max_age_minutes=60,
    ),
    AgentInfo(
        name="performance",
        capabilities=["latency/throughput baselines", "SLO headroom validation"],
        assets=["performance_metrics", "performance_baselines"],
        max_age_minutes=60,
    ),
    AgentInfo(
        name="resource",
        capabilities=["GPU utilization (sandbox, NVML)", "KV-cache use", "spot capacity validation"],
        assets=["resource_metrics", "resource_baselines"],
        max_age_minutes=60,
    ),
    AgentInfo(
        name="application",
        capabilities=["quality baselines", "quality-gated rollout with automatic rollback"],
        assets=["quality_metrics", "quality_baselines"],
        max_age_minutes=60,
    ),
)
