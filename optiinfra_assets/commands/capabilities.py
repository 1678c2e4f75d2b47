"""`optiinfra capabilities`: what the agents can do, where it shows in Dagster, and when it last ran."""

from __future__ import annotations

import argparse
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optiinfra_assets.agents import CAPABILITIES, DETECTORS
from optiinfra_assets.agents.capability import ANALYSIS_CHECK, FINDINGS_CHECK
from optiinfra_assets.config import Settings
from resources.state_store import StateStore, state_store_url


def _last_materializations(names: list[str], home: Path) -> dict[str, str | None]:
    """asset name -> ISO time of its last materialization, from Dagster's instance (DAGSTER_HOME, or
    OPTIINFRA_HOME/dagster as `make run` sets it); None when it never ran or there is no instance."""
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster")
    if not (dagster_home / "dagster.yaml").exists():
        return dict.fromkeys(names)
    import dagster as dg  # only here: the rest of the CLI starts without Dagster

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        out: dict[str, str | None] = {}
        for name in names:
            event = instance.get_latest_materialization_event(dg.AssetKey(name))
            out[name] = None if event is None else datetime.fromtimestamp(event.timestamp, UTC).isoformat()
        return out


def capability_rows(state: StateStore | None, settings: Settings) -> list[dict[str, Any]]:
    names = [c.asset_name for c in CAPABILITIES] + [d.asset_name for d in DETECTORS]
    last = _last_materializations(names, settings.home)
    counts: dict[str, dict[str, int]] = {}
    if state is not None:
        for rec in state.list_recommendations():
            by_status = counts.setdefault(rec.kind, {})
            by_status[rec.status.value] = by_status.get(rec.status.value, 0) + 1
    rows: list[dict[str, Any]] = [
        {
            "kind": cap.kind,
            "type": "capability",
            "agent": cap.agent,
            "objective": cap.objective.value,
            "description": cap.description,
            "validated_by": list(cap.validators),
            "stages": list(cap.stages or settings.decisions.rollout_stages),
            "stage_checks": [check.__name__ for check in cap.stage_checks],
            "valued_by": list(cap.valued_by),
            "asset_keys": [cap.asset_name],
            "asset_checks": [f"{cap.asset_name}:{ANALYSIS_CHECK}"],
            "last_run": last[cap.asset_name],
            "recommendations": counts.get(cap.kind, {}),
        }
        for cap in CAPABILITIES
    ]
    rows += [
        {
            "kind": det.name,
            "type": "detector",
            "agent": det.agent,
            "objective": None,
            "description": det.description,
            "asset_keys": [det.asset_name],
            "asset_checks": [f"{det.asset_name}:{FINDINGS_CHECK}"],
            "last_run": last[det.asset_name],
        }
        for det in DETECTORS
    ]
    return rows


def cmd_capabilities(args: argparse.Namespace, settings: Settings) -> int:
    state = StateStore(state_store_url(settings.database_url, settings.home))
    state.migrate()
    rows = capability_rows(state, settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(
            f"{row['kind']:<28} {row['type']:<10} {row['agent']:<12} {row['objective'] or '-':<12} "
            f"last run {row['last_run'] or 'never'}"
        )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "capabilities", help="every capability and detector: agent, objective, assets, last run"
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_capabilities)
