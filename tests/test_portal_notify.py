"""Notifications against a local HTTP server standing in for Slack, PagerDuty and a webhook: events from the
stores, per-customer channels, retries, failed deliveries recorded, each event sent once per channel."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from optiinfra_assets.models import Estimate, Recommendation, RecommendationStatus, Risk, UnregisteredEvidence
from optiinfra_assets.notifications import ChannelKind, ChannelSpec, EventKind, Notifier
from optiinfra_assets.workflow import decide, ensure_sandbox_fleet
from portal.accounts import Accounts
from portal.app import create_app
from portal.settings import PortalSettings
from resources.metric_store import open_metric_store
from resources.state_store import StateStore


class Receiver:
    """Records every POST; /flaky fails its first request, /down always fails."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.flaky_failed = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests.append((self.path, body))
                status = 200
                if self.path == "/down":
                    status = 503
                elif self.path == "/flaky" and not receiver.flaky_failed:
                    receiver.flaky_failed, status = True, 500
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"unavailable")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict]:
        return [body for p, body in self.requests if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def _pending(state: StateStore, rec_id: str, deployment: str) -> Recommendation:
    dep = state.get_deployment(deployment)
    now = datetime.now(UTC)
    rec = Recommendation(
        id=rec_id,
        kind="spot_migration",
        customer_id=dep.customer_id,
        deployment_id=deployment,
        created_at=now,
        expires_at=now + timedelta(hours=24),
        current=dep.config,
        desired=dep.config.model_copy(update={"on_demand_replicas": 0, "spot_replicas": dep.replicas}),
        estimate=Estimate(monthly_savings_usd=900.0),
        risk=Risk.HIGH,
        risk_score=0.8,
        summary=f"move {deployment} to spot",
        evidence=UnregisteredEvidence(kind="notify_test"),
    )
    assert state.add_recommendation(rec)
    return rec


def test_events_reach_each_customers_channels_once_with_retries(
    state: StateStore, receiver: Receiver
) -> None:
    ensure_sandbox_fleet(state, seed=1, now=datetime.now(UTC))
    notifier = Notifier(state, backoff_s=0.0, sleep=lambda _: None)
    assert notifier.poll() == []  # the cursor starts now: history is not replayed
    slack = notifier.add_channel("acme", ChannelSpec(kind="slack", url=f"{receiver.url}/slack"), by="ada")
    hook = notifier.add_channel("acme", ChannelSpec(kind="webhook", url=f"{receiver.url}/flaky"), by="ada")
    pager = notifier.add_channel(
        "acme",
        ChannelSpec(
            kind="pagerduty",
            url=f"{receiver.url}/down",
            routing_key="R0UT1NG",
            events=[EventKind.ROLLBACK, EventKind.ESCALATION],
        ),
        by="ada",
    )
    notifier.add_channel("globex", ChannelSpec(kind="slack", url=f"{receiver.url}/globex"), by="ada")
    rec = _pending(state, "rec-notify", "acme-chat-8b")

    first = notifier.poll()
    assert {(d.channel_id, d.event_kind, d.status, d.attempts) for d in first} == {
        (slack.id, EventKind.DECISION_NEEDED, "delivered", 1),
        (hook.id, EventKind.DECISION_NEEDED, "delivered", 2),  # failed once, retried
    }
    assert "Decision needed: spot_migration on acme-chat-8b (high risk)" in receiver.to("/slack")[0]["text"]
    assert receiver.to("/flaky")[-1]["entity_id"] == rec.id
    assert receiver.to("/globex") == []  # another customer's channel hears nothing of acme
    assert notifier.poll() == []  # each event once per channel

    decide(state, rec.id, "approve", "ann", "go", via="ui")
    state.audit("executor", "rolled_back", "recommendation", rec.id, {"reason": "quality_gate failed at 10%"})
    second = notifier.poll()
    kinds = {(d.channel_id, d.event_kind, d.status) for d in second}
    assert (slack.id, EventKind.APPROVAL, "delivered") in kinds
    assert (slack.id, EventKind.ROLLBACK, "delivered") in kinds
    assert (pager.id, EventKind.ROLLBACK, "failed") in kinds
    failed = next(d for d in second if d.channel_id == pager.id)
    assert failed.attempts == 3 and failed.last_error.startswith("HTTP 503")
    page = receiver.to("/down")[0]
    assert page["routing_key"] == "R0UT1NG" and page["event_action"] == "trigger"
    assert page["payload"]["severity"] == "critical" and "rolled back" in page["payload"]["summary"]
    assert len(receiver.to("/down")) == 3
    recorded = notifier.deliveries(["acme"])
    assert {d.status for d in recorded} == {"delivered", "failed"}  # the failure is kept, not lost
    assert notifier.deliveries(["globex"]) == []


def test_channel_input_is_validated() -> None:
    with pytest.raises(ValidationError, match="url"):
        ChannelSpec(kind=ChannelKind.WEBHOOK, url="file:///etc/passwd")
    with pytest.raises(ValidationError, match="routing_key"):
        ChannelSpec(kind=ChannelKind.PAGERDUTY, url="https://events.example.test/v2/enqueue")
    with pytest.raises(ValidationError, match="events"):
        ChannelSpec(kind=ChannelKind.SLACK, url="https://hooks.example.test/x", events=["gossip"])


def test_only_a_customers_admin_configures_its_channels(
    state: StateStore, tmp_path, receiver: Receiver
) -> None:
    ensure_sandbox_fleet(state, seed=1, now=datetime.now(UTC))
    accounts = Accounts(state)
    for name, role, customers in [
        ("ada", "admin", ["acme"]),
        ("ann", "approver", ["acme"]),
        ("gil", "admin", ["globex"]),
    ]:
        accounts.add_user(name, role, customers, "high", "a long enough password", by="test")
    metrics = open_metric_store("", tmp_path)
    with TestClient(create_app(state, metrics, PortalSettings())) as client:

        def as_user(name: str) -> dict[str, str]:
            token = client.post("/api/login", json={"username": name, "password": "a long enough password"})
            return {"Authorization": f"Bearer {token.json()['token']}"}

        spec = {"kind": "slack", "url": f"{receiver.url}/slack", "events": ["rollback"]}
        made = client.post("/api/customers/acme/channels", json=spec, headers=as_user("ada"))
        assert made.status_code == 201 and made.json()["events"] == ["rollback"]
        assert (
            client.post("/api/customers/acme/channels", json=spec, headers=as_user("ann")).status_code == 403
        )
        assert client.get("/api/customers/acme/channels", headers=as_user("gil")).status_code == 404
        bad = client.post(
            "/api/customers/acme/channels",
            json={**spec, "url": "javascript:alert(1)"},
            headers=as_user("ada"),
        )
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["body", "url"]
        assert [
            c["kind"] for c in client.get("/api/customers/acme/channels", headers=as_user("ada")).json()
        ] == ["slack"]


def test_an_escalation_is_announced_once_whichever_store_shows_it_first(
    state: StateStore, receiver: Receiver
) -> None:
    ensure_sandbox_fleet(state, seed=1, now=datetime.now(UTC))
    notifier = Notifier(state, backoff_s=0.0, sleep=lambda _: None)
    notifier.poll()
    notifier.add_channel(
        "acme",
        ChannelSpec(kind="webhook", url=f"{receiver.url}/hook", events=[EventKind.ESCALATION]),
        by="ada",
    )
    rec = _pending(state, "rec-escalated", "acme-chat-8b")
    reason = "conflicts with rec-other on acme-chat-8b: the customer decides"
    # stored as escalated by coordination (no audit entry yet): the store shows it
    state.update_recommendation(
        rec.model_copy(update={"status": RecommendationStatus.ESCALATED, "status_reason": reason})
    )
    first = notifier.poll()
    assert [(d.event_kind, d.event_key, d.status) for d in first] == [
        (EventKind.ESCALATION, "escalation:rec-escalated", "delivered")
    ]
    assert receiver.to("/hook")[0]["detail"] == reason
    # a later ``escalate`` audit entry about the same recommendation is the same notice
    state.audit("coordination", "escalate", "recommendation", rec.id, {"reason": reason})
    assert notifier.poll() == []
    assert len(receiver.to("/hook")) == 1
