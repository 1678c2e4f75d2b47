"""A snapshot of the asset graph, so that it changes only on purpose (as Dagster's open platform does).

After an intended change: ``OPTIINFRA_UPDATE_SNAPSHOT=1 .venv/bin/pytest tests/test_asset_graph.py`` and
review the diff of tests/snapshots/asset_graph.json like any other code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from optiinfra_assets.definitions import defs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph() -> dict[str, dict[str, object]]:
    repo = defs.get_repository_def()
    asset_graph = repo.asset_graph
    out: dict[str, dict[str, object]] = {}
    for key in sorted(asset_graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = asset_graph.get(key)
        out[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "kinds": sorted(node.kinds),
            "automation": None
            if node.automation_condition is None
            else node.automation_condition.get_label() or type(node.automation_condition).__name__,
            "freshness": None if node.freshness_policy is None else type(node.freshness_policy).__name__,
            "partitioned": node.partitions_def is not None,
            "checks": sorted(k.name for k in asset_graph.get_check_keys_for_assets([key])),
        }
    return out


def test_asset_graph_matches_its_snapshot() -> None:
    current = graph()
    if os.environ.get("OPTIINFRA_UPDATE_SNAPSHOT") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), (
        "the asset graph changed; if on purpose, regenerate the snapshot (see this module's docstring)"
    )


def test_every_capability_and_detector_has_its_asset_in_its_agents_group() -> None:
    from optiinfra_assets.agents import CAPABILITIES, DETECTORS

    current = graph()
    for item in (*CAPABILITIES, *DETECTORS):
        assert current[item.asset_name]["group"] == item.agent
        assert current[item.asset_name]["automation"] is not None
