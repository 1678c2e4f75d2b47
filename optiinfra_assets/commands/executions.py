"""`optiinfra executions`: list executions and their stages; `executions reconcile` drives every change
stuck between states to a final one (optiinfra_assets/reconcile.py, as the 5-minute schedule does);
`executions rollback ID --by NAME --comment TEXT` is a person rolling a change back, audited.

What Dagster knows of the executor's runs is read from its instance (DAGSTER_HOME, or
OPTIINFRA_HOME/dagster as `make run` sets it) when there is one; without it, a change counts as abandoned
once nothing happened to it for longer than an executor run may last.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from optiinfra_assets.commands import MAX_ACTOR_CHARS, actor, bounded_text, comment, open_state
from optiinfra_assets.config import Settings, prepare_home
from optiinfra_assets.models import Execution, ExecutionStatus
from optiinfra_assets.reconcile import RunFacts, reconcile, roll_back_by_person
from resources.state_store import StateStore


def _state(settings: Settings) -> StateStore:
    prepare_home(settings)  # reconciling reads Dagster's runs under home, whichever state store is used
    return open_state(settings)


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    from optiinfra_assets.cli import _print_table  # the one table printer; cli imports this module

    _print_table(rows, columns)


def execution_json(execution: Execution) -> dict[str, Any]:
    return {
        "recommendation_id": execution.recommendation_id,
        "status": execution.status.value,
        "stage": execution.stage,
        "started_at": execution.started_at.isoformat(),
        "finished_at": execution.finished_at.isoformat() if execution.finished_at else None,
        "reason": execution.reason,
        "run_id": execution.run_id,
        "stages": [s.model_dump(mode="json") for s in execution.stages],
    }


def _dagster_home(settings: Settings) -> Path | None:
    home = Path(os.environ.get("DAGSTER_HOME") or settings.home / "dagster")
    return home if (home / "dagster.yaml").exists() else None


def _run_facts(dagster_home: Path, rec_ids: Iterable[str]) -> dict[str, RunFacts]:
    """What the Dagster instance knows of these recommendations' executor runs."""
    import dagster as dg  # only here: the rest of the CLI starts without Dagster

    from sensors.reconcile import executor_run_facts

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return executor_run_facts(instance, rec_ids)


def run_lookup(settings: Settings) -> Callable[[Iterable[str]], dict[str, RunFacts]] | None:
    """Dagster's word on runs when there is an instance; None without one."""
    home = _dagster_home(settings)
    return None if home is None else partial(_run_facts, home)


def unrecorded_json(state: StateStore) -> list[dict[str, Any]]:
    """Recommendations marked executing with no execution record (their run died before writing one):
    listed, so that they are not invisible, until the reconciler settles them."""
    rows = []
    for rec in state.list_recommendations(status="executing"):
        if state.get_execution(rec.id) is None:
            rows.append(
                {
                    "recommendation_id": rec.id,
                    "status": "unrecorded",
                    "stage": 0,
                    "started_at": None,
                    "finished_at": None,
                    "reason": "executing, but no execution was recorded: `optiinfra executions reconcile` "
                    "settles it",
                    "run_id": None,
                    "stages": [],
                }
            )
    return rows


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    state = _state(settings)
    rows = [execution_json(e) for e in state.list_executions(status=args.status)]
    if args.status is None:
        rows = unrecorded_json(state) + rows
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, ["recommendation_id", "status", "stage", "started_at", "reason"])
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from optiinfra_assets.agents.rollout import execute
    from optiinfra_assets.workflow import open_services, rollout_context

    prepare_home(settings)
    services = open_services(settings)
    runs = run_lookup(settings)

    def ensure_outcome(rec_id: str) -> None:  # a finished execution: execute() only records its outcome
        execute(rollout_context(services, rec_id), rec_id, None)

    report = reconcile(
        services.state,
        services.target,
        datetime.now(UTC),
        runs,
        ensure_outcome=ensure_outcome,
        dry_run=args.dry_run,
    )
    rows = [f.model_dump(mode="json") for f in report.findings]
    if args.json:
        print(
            json.dumps(
                {"at": report.at.isoformat(), "dry_run": report.dry_run, "dagster_runs": runs is not None}
                | {"findings": rows},
                indent=2,
            )
        )
    else:
        if runs is None:
            print("(no Dagster instance: a change counts as abandoned after the executor's max runtime)")
        _print_table(rows, ["subject", "deployment_id", "found", "action", "did", "error"])
    return 1 if report.errors else 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from resources.targets import open_target

    state = _state(settings)
    lookup = run_lookup(settings)
    runs = None if lookup is None else lookup([args.id])
    execution = roll_back_by_person(
        state,
        open_target(settings.target, state, settings.seed),
        args.id,
        args.by,
        args.comment,
        datetime.now(UTC),
        runs,
    )
    if args.json:
        print(json.dumps(execution_json(execution), indent=2))
    else:
        print(f"{args.id}: {execution.reason}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    execs = sub.add_parser(
        "executions",
        help="list executions and their stages; `reconcile` stuck ones; `rollback` one (a person's act)",
    )
    execs.add_argument("--status", choices=[s.value for s in ExecutionStatus])
    execs.add_argument("--json", action="store_true")
    execs.set_defaults(func=cmd_list)
    actions = execs.add_subparsers(dest="action", required=False)

    rec = actions.add_parser(
        "reconcile",
        help="drive every change stuck between states to a final state; heal capacity lost after a rollout",
    )
    rec.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=cmd_reconcile)

    rollback = actions.add_parser(
        "rollback", help="roll a change back to the deployment's config before it (recorded in the audit log)"
    )
    rollback.add_argument(
        "id", type=bounded_text(MAX_ACTOR_CHARS, allow_empty=False), help="recommendation id"
    )
    rollback.add_argument(
        "--by", required=True, type=actor, help="who rolls back (recorded in the audit log)"
    )
    rollback.add_argument("--comment", required=True, type=comment, help="why")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(func=cmd_rollback)
