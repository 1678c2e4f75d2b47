"""The `optiinfra` command: read and decide recommendations, follow executions, poke the sandbox.

It talks to the same stores as the Dagster assets (chosen by the same OPTIINFRA_* variables) and to
nothing else: a decision made here is picked up by approval_sensor within one sensor interval.
Exit codes: 0 ok, 2 a refused request (unknown/decided/expired recommendation, bad argument),
3 a store that cannot be reached.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from optiinfra_assets import commands
from optiinfra_assets.commands.fleet import HOST_COLUMNS, as_text, host_rows
from optiinfra_assets.config import (
    ENV_VARS,
    TARGET_MODULES,
    Settings,
    SettingsError,
    prepare_home,
    restrict_new_files,
    target_available,
)
from optiinfra_assets.models import Fault, FaultKind, Recommendation, RecommendationStatus, Risk
from optiinfra_assets.request_text import DegradationMode
from optiinfra_assets.workflow import decide, fleet_summary
from resources.errors import StoreUnavailableError, mask_secrets
from resources.state_store import RecommendationError


def recommendation_json(rec: Recommendation) -> dict[str, Any]:
    assessment = rec.risk_assessment
    return {
        "id": rec.id,
        "kind": rec.kind,
        "status": rec.status.value,
        "customer": rec.customer_id,
        "deployment": rec.deployment_id,
        "estimated_monthly_savings_usd": round(rec.estimated_monthly_savings_usd, 2),
        "estimate": rec.estimate.model_dump(mode="json"),
        "changes": {k: {"from": a, "to": b} for k, (a, b) in rec.current.changes(rec.desired).items()},
        "current": rec.current.model_dump(mode="json"),
        "desired": rec.desired.model_dump(mode="json"),
        "stages": rec.stages,
        "status_reason": rec.status_reason,
        "evidence": rec.evidence.model_dump(mode="json"),
        "risk": rec.risk.value,
        "risk_score": round(rec.risk_score, 3),
        "summary": rec.summary,
        "created_at": rec.created_at.isoformat(),
        "expires_at": rec.expires_at.isoformat(),
        "validations": [v.model_dump() for v in rec.validations],
        "risk_assessment": assessment.model_dump(mode="json") if assessment else None,
        "decided_by": rec.decided_by,
        "decided_at": rec.decided_at.isoformat() if rec.decided_at else None,
        "decision_comment": rec.decision_comment,
    }


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_recommendations(args: argparse.Namespace, settings: Settings) -> int:
    if args.status is not None:
        RecommendationStatus(args.status)  # a clear error for a bad value, before touching the store
    recs = commands.open_state(settings).list_recommendations(
        status=args.status, kind=args.kind, limit=args.limit
    )
    rows = [recommendation_json(r) for r in recs]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        columns = ["id", "kind", "status", "customer", "deployment", "estimated_monthly_savings_usd", "risk"]
        _print_table(rows, [*columns, "status_reason"])
    return 0


def cmd_decide(args: argparse.Namespace, settings: Settings) -> int:
    approval = decide(commands.open_state(settings), args.id, args.decision, args.by, args.comment, via="cli")
    verb = "approved" if approval.decision.value == "approve" else "rejected"
    print(f"{approval.recommendation_id} {verb} by {approval.by} (approval #{approval.id})")
    return 0


def cmd_sandbox(args: argparse.Namespace, settings: Settings) -> int:
    from resources.targets import interrupt_spot_instance  # the sandbox only; keeps `optiinfra` start fast

    state = commands.open_state(settings)
    now = datetime.now(UTC)
    if args.action == "status":
        rows = fleet_summary(state)
        hosts = host_rows(state.list_hosts(), state.list_instances())
        if args.json:
            print(json.dumps({"deployments": rows, "hosts": hosts}, indent=2))
            return 0
        _print_table(
            rows, ["deployment", "customer", "model", "instance_type", "on_demand", "spot", "faults"]
        )
        if hosts:  # shared hosts and the slices of each deployment on them
            print(f"\nshared hosts ({len(hosts)})")
            _print_table(as_text(hosts), HOST_COLUMNS)
        return 0
    state.get_deployment(args.deployment)  # KeyError naming it if unknown
    if args.action == "degrade-quality":
        fault = Fault(
            deployment_id=args.deployment,
            kind=FaultKind.QUALITY_DEGRADATION,
            params={"drop_pct": args.drop_pct, "scope": args.scope, "mode": args.mode},
            created_at=now,
        )
        fault_id = state.add_fault(fault)
        state.audit("cli", "inject_fault", "deployment", args.deployment, fault.model_dump(mode="json"))
        print(
            f"fault #{fault_id}: quality of {args.deployment} ({args.scope} replicas) drops {args.drop_pct}%"
        )
    elif args.action == "lose-spot":
        lost = interrupt_spot_instance(state, args.deployment, now)
        if lost is None:
            print("no running spot instance to lose")
        else:
            gone = {i.id: i for i in state.list_instances(args.deployment, include_ended=True)}[lost]
            host = f", with its host {gone.host_id} and every slice on it" if gone.host_id else ""
            print(f"spot instance {lost} of {args.deployment} interrupted{host}")
    elif args.action == "clear":
        print(f"cleared {state.clear_faults(args.deployment)} fault(s) on {args.deployment}")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """Open (and migrate) every store: `make run` calls this first, so an unreachable store is one
    clear line naming its URL (password masked) instead of tracebacks from every sensor."""
    from optiinfra_assets.workflow import open_services

    prepare_home(settings)
    if not target_available(settings.target):
        raise ValueError(
            f"OPTIINFRA_TARGET={settings.target!r}: not available in this installation "
            f"(its module {TARGET_MODULES[settings.target]} is missing)"
        )
    services = open_services(settings)
    services.memory.count()  # local mode opens its folder only on use
    print(f"state store   {services.state.display_url} ({services.state.engine.dialect.name}): ok")
    print(f"metric store  {services.metrics.display_url}: ok")
    print(f"memory store  {services.memory.display_url}: ok")
    print(f"llm           {settings.llm_model or 'none (deterministic method, labelled as such)'}")
    print(f"target        {services.target.name}: available")
    return 0


# A monthly budget: a positive, finite number of USD (the bound only refuses nonsense), or 'off'.
_budget_usd = commands.bounded_float(0, 1e12, lo_open=True)


def _budget(text: str) -> float | str:
    """A monthly budget argument: a positive number of USD, or 'off'."""
    return text if text == "off" else _budget_usd(text)


def cmd_policy(args: argparse.Namespace, settings: Settings) -> int:
    state = commands.open_state(settings)
    if args.action == "set":
        if args.auto_approve_max_risk is None and args.budget_usd is None:
            raise ValueError("policy set: give --auto-approve-max-risk, --budget-usd or both")
        customer = state.get_customer(args.customer)
        update: dict[str, Any] = {}
        if args.auto_approve_max_risk is not None:
            level = None if args.auto_approve_max_risk == "off" else Risk(args.auto_approve_max_risk)
            update["auto_approve_max_risk"] = level
            print(
                f"{customer.id}: auto-approval {'off' if level is None else f'for risk up to {level.value}'}"
            )
        if args.budget_usd is not None:
            budget = None if args.budget_usd == "off" else args.budget_usd
            update["monthly_budget_usd"] = budget
            print(f"{customer.id}: monthly budget {'none' if budget is None else f'${budget:,.2f}'}")
        state.upsert_customer(customer.model_copy(update=update))
        state.audit(args.by, "set_policy", "customer", customer.id, update)
        return 0
    rows = [
        {
            "customer": c.id,
            "auto_approve_max_risk": c.auto_approve_max_risk or "off",
            "allow_spot": c.allow_spot,
            "slo_p95_latency_ms": c.slo_p95_latency_ms,
            "min_monthly_savings_usd": c.min_monthly_savings_usd,
            "monthly_budget_usd": c.monthly_budget_usd or "none",
        }
        for c in state.list_customers()
    ]
    _print_table(rows, list(rows[0]) if rows else ["customer"])
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    import os

    for name, (default, help_text) in ENV_VARS.items():
        shown = mask_secrets(os.environ.get(name, default))  # URLs and targets may carry credentials
        print(f"{name}={shown}\n    {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiinfra", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    recs = sub.add_parser("recommendations", help="list recommendations")
    recs.add_argument("--status", choices=[s.value for s in RecommendationStatus])
    recs.add_argument("--kind", type=commands.bounded_text(64))
    recs.add_argument("--limit", type=commands.limit)
    recs.add_argument("--json", action="store_true")
    recs.set_defaults(func=cmd_recommendations)

    for decision in ("approve", "reject"):
        p = sub.add_parser(decision, help=f"{decision} a pending recommendation")
        p.add_argument("id")
        p.add_argument(
            "--by", required=True, type=commands.actor, help="who decides (recorded in the audit log)"
        )
        p.add_argument("--comment", default="", type=commands.comment)
        p.set_defaults(func=cmd_decide, decision=decision)

    sandbox = sub.add_parser("sandbox", help="inspect the sandbox fleet or inject a fault")
    actions = sandbox.add_subparsers(dest="action", required=True)
    status = actions.add_parser(
        "status", help="deployments and their on-demand/spot replicas; shared hosts and their slices"
    )
    status.add_argument("--json", action="store_true")
    degrade = actions.add_parser("degrade-quality", help="lower output quality of a deployment")
    degrade.add_argument("deployment")
    degrade.add_argument("--drop-pct", type=commands.bounded_float(0, 100, lo_open=True), default=12.0)
    degrade.add_argument("--scope", choices=["spot", "all"], default="spot")
    degrade.add_argument(
        "--mode",
        choices=[m.value for m in DegradationMode if m != DegradationMode.CLEAN],
        default=DegradationMode.HALLUCINATION.value,
        help="how the answers go wrong in their text (default: a broken model version's invented facts)",
    )
    lose = actions.add_parser("lose-spot", help="the cloud reclaims one spot instance")
    lose.add_argument("deployment")
    clear = actions.add_parser("clear", help="clear a deployment's faults")
    clear.add_argument("deployment")
    sandbox.set_defaults(func=cmd_sandbox)

    policy = sub.add_parser("policy", help="customers' written auto-approval policies (off by default)")
    policy_actions = policy.add_subparsers(dest="action", required=True)
    policy_actions.add_parser("show", help="each customer's policy and preferences")
    set_policy = policy_actions.add_parser(
        "set", help="auto-approve changes of a customer up to a risk level"
    )
    set_policy.add_argument("customer")
    set_policy.add_argument("--auto-approve-max-risk", choices=["off", *(r.value for r in Risk)])
    set_policy.add_argument(
        "--budget-usd",
        type=_budget,
        help="the customer's monthly budget in USD ('off': none); the budget forecast alerts against it",
    )
    set_policy.add_argument(
        "--by", required=True, type=commands.actor, help="who writes the policy (recorded in the audit log)"
    )
    policy.set_defaults(func=cmd_policy)

    check = sub.add_parser("check", help="open every store and say which engine answers")
    check.set_defaults(func=cmd_check)

    config = sub.add_parser("config", help="the OPTIINFRA_* variables in effect (passwords masked)")
    config.set_defaults(func=cmd_config)

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    restrict_new_files()  # state this process creates is owner-only
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, Settings.from_env()))
    except SettingsError as exc:  # a store location that cannot work is a store that cannot be opened
        print(f"optiinfra: error: {exc}", file=sys.stderr)
        return 3 if exc.about_stores else 2
    except (RecommendationError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"optiinfra: error: {message}", file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:
        print(f"optiinfra: error: {exc}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # `optiinfra ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
