"""`optiinfra instances`: the fleet's instances, a slice of a shared host with its host and the GPUs it holds;
and the shared hosts' rows `optiinfra sandbox status` lists (docs/operations.md, "shared placements")."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

from optiinfra_assets.catalog import instance_type
from optiinfra_assets.commands import bounded_text, open_state
from optiinfra_assets.config import Settings
from optiinfra_assets.models import Host, Instance

HOST_COLUMNS = (
    "host",
    "instance_type",
    "lifecycle",
    "dedicated_to",
    "gpus_used",
    "gpus_total",
    "deployments",
)
INSTANCE_COLUMNS = (
    "instance",
    "deployment",
    "instance_type",
    "lifecycle",
    "state",
    "host",
    "gpus",
    "launched_at",
)


def host_rows(hosts: list[Host], instances: list[Instance]) -> list[dict[str, Any]]:
    """One row per host given: its GPUs held by the running slices among ``instances`` out of its type's, and
    its tenants' deployments with the GPUs each holds there (``slices``: every slice on it)."""
    slices: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.host_id and inst.ended_at is None:
            slices[inst.host_id].append(inst)
    rows = []
    for host in hosts:
        held: dict[str, int] = defaultdict(int)
        for inst in slices[host.id]:
            held[inst.deployment_id] += inst.gpus or 0
        rows.append(
            {
                "host": host.id,
                "instance_type": host.instance_type,
                "lifecycle": host.lifecycle.value,
                "state": host.state.value,
                "dedicated_to": host.dedicated_customer_id,
                "az": host.az,
                "gpus_used": sum(held.values()),
                "gpus_total": instance_type(host.instance_type).gpu_count,
                "deployments": dict(sorted(held.items())),
                "slices": [
                    {"instance": i.id, "deployment": i.deployment_id, "gpus": i.gpus} for i in slices[host.id]
                ],
                "launched_at": host.launched_at.isoformat(),
            }
        )
    return rows


def instance_rows(instances: list[Instance]) -> list[dict[str, Any]]:
    """One row per instance: ``gpus`` are those it holds (a slice's share of its host, else its type's)."""
    return [
        {
            "instance": i.id,
            "deployment": i.deployment_id,
            "instance_type": i.instance_type,
            "lifecycle": i.lifecycle.value,
            "state": i.state.value,
            "az": i.az,
            "host": i.host_id,
            "gpus": i.gpus or instance_type(i.instance_type).gpu_count,
            "launched_at": i.launched_at.isoformat(),
            "ended_at": i.ended_at.isoformat() if i.ended_at else None,
        }
        for i in instances
    ]


def as_text(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a text table: no value shown as None, a host's tenants as 'deployment (n GPUs), ...'."""
    out = []
    for row in rows:
        shown = {k: "" if v is None else v for k, v in row.items()}
        if isinstance(row.get("deployments"), dict):
            shown["deployments"] = ", ".join(
                f"{d} ({n} GPU{'' if n == 1 else 's'})" for d, n in row["deployments"].items()
            )
        out.append(shown)
    return out


def cmd_instances(args: argparse.Namespace, settings: Settings) -> int:
    state = open_state(settings)
    if args.deployment is not None:
        state.get_deployment(args.deployment)  # KeyError naming it if unknown
    rows = instance_rows(state.list_instances(args.deployment, include_ended=args.all))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from optiinfra_assets.cli import _print_table  # the one table printer; cli imports this module

        _print_table(as_text(rows), [*INSTANCE_COLUMNS, *(["ended_at"] if args.all else [])])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "instances", help="running instances; a slice of a shared host with its host and the GPUs it holds"
    )
    parser.add_argument("--deployment", type=bounded_text(64), help="only this deployment's")
    parser.add_argument("--all", action="store_true", help="ended instances too")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_instances)
