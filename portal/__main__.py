"""``python -m portal``: serve the portal (``make run`` starts it beside the Dagster UI).

It opens the same stores as everything else (OPTIINFRA_* variables) and binds 127.0.0.1 unless told
otherwise (OPTIINFRA_PORTAL_HOST, or --host): put an authenticating, TLS-terminating proxy in front of it
before exposing it, and set OPTIINFRA_PORTAL_SECURE_COOKIES=true there.
"""

from __future__ import annotations

import argparse

import uvicorn

from optiinfra_assets.config import Settings, prepare_home
from optiinfra_assets.notifications import Notifier
from portal.app import create_app
from portal.settings import PortalSettings
from resources.metric_store import open_metric_store
from resources.state_store import StateStore, state_store_url


def main(argv: list[str] | None = None) -> None:
    settings = PortalSettings()
    parser = argparse.ArgumentParser(prog="python -m portal", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--no-notifications", action="store_true", help="do not send notifications")
    args = parser.parse_args(argv)
    config = Settings.from_env()
    prepare_home(config)
    state = StateStore(state_store_url(config.database_url, config.home))
    state.migrate()
    metrics = open_metric_store(config.clickhouse_url, config.home)
    metrics.migrate()
    notifier = None if args.no_notifications else Notifier(state)
    app = create_app(state, metrics, settings, notifier=notifier)
    users = len(app.state.portal.accounts.list_users())
    print(f"OptiInfra portal on http://{args.host}:{args.port} (API docs at /docs)", flush=True)
    if not users:
        print("portal: no users yet: create one with `optiinfra users add NAME --role admin --customers '*'`")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
