"""The agent registry: what each agent can do, read from the capability and detector lists."""

from __future__ import annotations

from pydantic import BaseModel

from optiinfra_assets.agents import AGENTS, CAPABILITIES, DETECTORS


class AgentInfo(BaseModel):
    name: str
    capabilities: list[str]  # kinds of change it proposes
    detectors: list[str]  # monitors it runs
    validates: list[str]  # kinds whose proposals it is asked to validate
    assets: list[str]  # asset keys carrying its work (their freshness is its health)


def agents() -> list[AgentInfo]:
    out = []
    for name in AGENTS:
        caps = [c for c in CAPABILITIES if c.agent == name]
        dets = [d for d in DETECTORS if d.agent == name]
        out.append(
            AgentInfo(
                name=name,
                capabilities=[c.kind for c in caps],
                detectors=[d.name for d in dets],
                validates=[c.kind for c in CAPABILITIES if name in c.validators],
                assets=[c.asset_name for c in caps] + [d.asset_name for d in dets],
            )
        )
    return out
