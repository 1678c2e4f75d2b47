"""`optiinfra users`: the portal's local users (add, list, remove).

The password is read from standard input (one line, when it is not a terminal) or prompted for twice; it
is never an argument (it would show in the shell history and the process list) and there is no default.
``--oidc`` creates a user who signs in through OpenID Connect only (no password).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from optiinfra_assets.config import Settings, prepare_home
from optiinfra_assets.models import Risk
from resources.state_store import StateStore, state_store_url


def _accounts(settings: Settings):
    from portal.accounts import Accounts  # only here: the rest of the CLI starts without the portal

    prepare_home(settings)
    state = StateStore(state_store_url(settings.database_url, settings.home))
    state.migrate()
    return Accounts(state)


def _read_password() -> str:
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line.strip():
            raise ValueError("password: expected one line on standard input, got none")
        return line.rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("password: the two entries differ")
    return first


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    accounts = _accounts(settings)
    if args.action == "add":
        customers = [c.strip() for c in args.customers.split(",") if c.strip()]
        password = None if args.oidc else _read_password()
        user = accounts.add_user(
            args.name, args.role, customers, args.max_risk, password, by=f"cli:{getpass.getuser()}"
        )
        scope = ", ".join(user.customers)
        limit = "" if user.role.value == "viewer" else f", decides up to {user.max_risk.value} risk"
        print(f"user {user.username}: {user.role.value} of {scope}{limit}")
    elif args.action == "remove":
        accounts.remove_user(args.name, by=f"cli:{getpass.getuser()}")
        print(f"user {args.name} removed (and signed out)")
    else:
        rows = [u.model_dump(mode="json") for u in accounts.list_users()]
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for row in rows:
            scope = ",".join(row["customers"])
            print(f"{row['username']:<24} {row['role']:<9} {scope:<30} up to {row['max_risk']} risk")
        if not rows:
            print("(none)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("users", help="the portal's local users and their roles")
    actions = parser.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a user; the password comes from standard input or a prompt")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["viewer", "approver", "admin"])
    add.add_argument(
        "--customers", required=True, help="comma-separated customer ids the user may see, or '*' for all"
    )
    add.add_argument(
        "--max-risk",
        default="low",
        choices=[r.value for r in Risk],
        help="highest risk an approver may approve (default low)",
    )
    add.add_argument("--oidc", action="store_true", help="no password: signs in through OpenID Connect")
    remove = actions.add_parser("remove", help="delete a user and end their sessions")
    remove.add_argument("name")
    listing = actions.add_parser("list", help="every user, role, customers and risk limit")
    listing.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_users)
