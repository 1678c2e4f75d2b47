"""`optiinfra audit`: read the append-only audit log (newest first) or verify its hash chain.

``optiinfra audit verify`` walks every entry and approval (resources/audit_chain.py) and reports the
first broken link; it exits 1 when the log was tampered with, 0 when it is intact.
"""

from __future__ import annotations

import argparse
import json

from optiinfra_assets.commands import MAX_ACTOR_CHARS, bounded_text, limit, open_state
from optiinfra_assets.config import Settings

# Exit status of a verification that found a broken link (0 ok, 2 bad argument, 3 store unreachable).
TAMPERED = 1


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    state = open_state(settings)
    if args.action == "verify":
        result = state.verify_audit()
        if args.json:
            print(json.dumps(result.model_dump(), indent=2))
        elif result.ok:
            print(f"audit log intact: {result.entries} entries, {result.approvals} approvals sealed")
        else:
            print(f"audit log BROKEN: {result.problem}")
        return 0 if result.ok else TAMPERED
    entries = state.list_audit(entity_id=args.entity, limit=args.limit, newest_first=not args.oldest_first)
    rows = [e.model_dump(mode="json") for e in entries]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from optiinfra_assets.cli import _print_table  # the one table printer; cli imports this module

        _print_table(rows, ["id", "at", "actor", "action", "entity_type", "entity_id"])
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="read the append-only audit log (newest first), or `audit verify` its hash chain"
    )
    audit.add_argument(
        "action", nargs="?", choices=["list", "verify"], default="list", help="list (default) or verify"
    )
    audit.add_argument("--entity", type=bounded_text(MAX_ACTOR_CHARS), help="only entries about this id")
    audit.add_argument("--limit", type=limit, default=200, help="entries to show (default 200)")
    audit.add_argument("--oldest-first", action="store_true", help="the oldest entries first")
    audit.add_argument("--json", action="store_true")
    audit.set_defaults(func=cmd_audit)
