"""Detector findings reach the customers' channels: recorded once per finding by the analysis pass,
delivered by the Dagster ``notifications_sensor`` (and the portal's loop) exactly once per channel, retried,
failures recorded. Real stores (SQLite and PostgreSQL), a local HTTP server as Slack/PagerDuty/webhook, a
real Dagster test instance. Also the Dagster UI's side of issue 11: check descriptions, run tags."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import pytest
from test_portal_notify import Receiver

from optiinfra_assets.agents.capability import Finding
from optiinfra_assets.models import Risk
from optiinfra_assets.notifications import (
    CLAIM_STALE,
    FINDING_ACTION,
    ChannelKind,
    ChannelSpec,
    Event,
    EventKind,
    Notifier,
    finding_key,
    record_findings,
)
from optiinfra_assets.workflow import decide, ensure_sandbox_fleet
from resources.dagster_resources import StateStoreResource
from resources.state_store import StateStore, notification_deliveries
from sensors.approvals import approval_sensor
from sensors.notifications import notifications_sensor

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


def _finding(
    detector: str = "latency_anomalies",
    deployment: str = "acme-chat-8b",
    severity: Risk = Risk.HIGH,
    since: str | None = "2026-03-02T08:00:00+00:00",
    customer: str = "acme",
) -> Finding:
    return Finding(
        detector=detector,
        customer_id=customer,
        deployment_id=deployment,
        severity=severity,
        metric="ttft_p95_ms" if detector == "latency_anomalies" else "month_end_spend_usd",
        summary=f"{detector} on {deployment or customer}",
        value=900.0,
        expected=300.0,
        since=since,
        explanation="the newest hour is 3x the usual level",
    )


def _tick(instance: dg.DagsterInstance, state_url: str, tmp_path: Path) -> str:
    resource = StateStoreResource(home=str(tmp_path), database_url=state_url)
    result = notifications_sensor(
        dg.build_sensor_context(instance=instance, resources={"state_store": resource})
    )
    assert isinstance(result, dg.SkipReason)
    return result.skip_message or ""


def test_findings_are_recorded_once_each_high_and_medium_only(state: StateStore) -> None:
    ensure_sandbox_fleet(state, seed=1, now=NOW)
    findings = [
        _finding(),
        _finding(),  # the same condition twice in one pass
        _finding(severity=Risk.MEDIUM, deployment="acme-chat-70b"),
        _finding(severity=Risk.LOW, deployment="globex-rag-qwen", customer="globex"),  # informational
        _finding(detector="budget_alerts", deployment="", since=None),  # customer-wide
    ]
    first = record_findings(state, findings, NOW)
    assert len(first) == 3
    assert record_findings(state, findings, NOW + timedelta(minutes=15)) == []  # the next pass: known
    entries = [e for e in state.list_audit(limit=1000) if e.action == FINDING_ACTION]
    assert sorted((e.entity_type, e.entity_id, e.detail["event"]) for e in entries) == [
        ("customer", "acme", "budget_alert"),
        ("deployment", "acme-chat-70b", "anomaly"),
        ("deployment", "acme-chat-8b", "anomaly"),
    ]
    assert {e.actor for e in entries} == {"detector:latency_anomalies", "detector:budget_alerts"}
    # without a start time a lasting condition is announced again the next day, not every pass
    assert record_findings(state, findings, NOW + timedelta(days=1)) == [
        finding_key(findings[-1], NOW + timedelta(days=1))
    ]
    # a new anomalous hour of the same series is a new finding
    assert len(record_findings(state, [_finding(since="2026-03-02T09:00:00+00:00")], NOW)) == 1


def test_the_sensor_delivers_findings_once_retried_and_records_failures(
    state: StateStore, state_url: str, receiver: Receiver, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    ensure_sandbox_fleet(state, seed=1, now=NOW)
    assert _tick(instance, state_url, tmp_path).startswith("0 notifications delivered")  # cursor starts now
    notifier = Notifier(state)
    anomalies = notifier.add_channel(
        "acme",
        ChannelSpec(kind="webhook", url=f"{receiver.url}/flaky", events=[EventKind.ANOMALY]),
        by="ada",
    )
    budget = notifier.add_channel(
        "acme",
        ChannelSpec(kind="slack", url=f"{receiver.url}/slack", events=[EventKind.BUDGET_ALERT]),
        by="ada",
    )
    pager = notifier.add_channel(
        "acme",
        ChannelSpec(
            kind="pagerduty",
            url=f"{receiver.url}/down",
            routing_key="R0UT1NG",
            events=[EventKind.ANOMALY, EventKind.BUDGET_ALERT],
        ),
        by="ada",
    )
    notifier.add_channel("globex", ChannelSpec(kind="webhook", url=f"{receiver.url}/globex"), by="ada")
    record_findings(
        state, [_finding(), _finding(detector="budget_alerts", deployment="", severity=Risk.MEDIUM)], NOW
    )

    message = _tick(instance, state_url, tmp_path)
    assert message == "2 notifications delivered, 2 failed"
    hook = receiver.to("/flaky")
    assert len(hook) == 2 and hook[-1]["kind"] == "anomaly"  # failed once, retried
    assert hook[-1]["entity_id"] == "acme-chat-8b" and hook[-1]["severity"] == "critical"
    assert "budget_alerts on acme" in receiver.to("/slack")[0]["text"]
    pages = receiver.to("/down")
    assert len(pages) == 6  # two events, three attempts each
    assert {p["payload"]["severity"] for p in pages} == {"critical", "warning"}
    assert receiver.to("/globex") == []

    recorded = {(d.channel_id, d.event_kind, d.status, d.attempts) for d in notifier.deliveries(["acme"])}
    assert recorded == {
        (anomalies.id, EventKind.ANOMALY, "delivered", 2),
        (budget.id, EventKind.BUDGET_ALERT, "delivered", 1),
        (pager.id, EventKind.ANOMALY, "failed", 3),
        (pager.id, EventKind.BUDGET_ALERT, "failed", 3),
    }
    # the next pass sees the same conditions: nothing is recorded or sent again
    record_findings(state, [_finding()], NOW + timedelta(minutes=15))
    assert _tick(instance, state_url, tmp_path) == "0 notifications delivered, 0 failed"
    assert len(receiver.requests) == 2 + 1 + 6


def test_the_sensor_also_sends_decisions_and_rollbacks(
    state: StateStore, state_url: str, receiver: Receiver, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from test_portal_notify import _pending

    ensure_sandbox_fleet(state, seed=1, now=NOW)
    _tick(instance, state_url, tmp_path)
    Notifier(state).add_channel("acme", ChannelSpec(kind="webhook", url=f"{receiver.url}/hook"), by="ada")
    rec = _pending(state, "rec-sensor", "acme-chat-8b")
    assert _tick(instance, state_url, tmp_path) == "1 notifications delivered, 0 failed"
    decide(state, rec.id, "approve", "ann", "go", via="ui")
    state.audit("executor", "rolled_back", "recommendation", rec.id, {"reason": "quality_gate failed at 10%"})
    assert _tick(instance, state_url, tmp_path) == "2 notifications delivered, 0 failed"
    assert [b["kind"] for b in receiver.to("/hook")] == ["decision_needed", "approval", "rollback"]


def test_two_pollers_racing_send_each_event_once(state: StateStore, receiver: Receiver) -> None:
    """The portal's loop and the sensor may poll at the same moment: the claim keeps it to one send."""
    ensure_sandbox_fleet(state, seed=1, now=NOW)
    channel = Notifier(state).add_channel(
        "acme", ChannelSpec(kind=ChannelKind.WEBHOOK, url=f"{receiver.url}/hook"), by="ada"
    )
    events = [
        Event(kind=EventKind.ANOMALY, key=f"race:{n}", customer_id="acme", title=f"race {n}", at=NOW)
        for n in range(20)
    ]
    start = threading.Barrier(2)
    results: list[int] = []

    def poller() -> None:
        notifier = Notifier(state, client=httpx.Client(timeout=5.0))
        start.wait()
        results.append(len(notifier.dispatch(events)))

    threads = [threading.Thread(target=poller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(results) == 20
    assert sorted(b["key"] for b in receiver.to("/hook")) == sorted(e.key for e in events)
    assert {d.status for d in Notifier(state).deliveries(["acme"])} == {"delivered"}
    assert all(d.channel_id == channel.id for d in Notifier(state).deliveries(["acme"]))


def test_every_asset_check_has_a_description() -> None:
    from optiinfra_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    missing = [
        key.to_user_string()
        for key in graph.asset_check_keys
        if not (graph.get_check_spec(key).description or "")
    ]
    assert missing == []
    assert len(graph.asset_check_keys) > 10


def test_executor_runs_are_tagged_with_their_deployment(
    state: StateStore, state_url: str, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    from test_portal_notify import _pending

    ensure_sandbox_fleet(state, seed=1, now=NOW)
    rec = _pending(state, "rec-tagged", "acme-chat-8b")
    decide(state, rec.id, "approve", "ann", "go", via="ui")
    resource = StateStoreResource(home=str(tmp_path), database_url=state_url)
    result = approval_sensor(dg.build_sensor_context(instance=instance, resources={"state_store": resource}))
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.tags["optiinfra/deployment"] == "acme-chat-8b"
    assert request.tags["optiinfra/kind"] == "spot_migration"
    assert request.tags["optiinfra/customer"] == "acme"
    assert request.tags["optiinfra/approved_by"] == "ann"


def test_what_a_poll_had_no_time_for_is_sent_by_the_next(state: StateStore, receiver: Receiver) -> None:
    ensure_sandbox_fleet(state, seed=1, now=NOW)
    notifier = Notifier(state)
    notifier.poll()
    notifier.add_channel("acme", ChannelSpec(kind="webhook", url=f"{receiver.url}/hook"), by="ada")
    record_findings(state, [_finding(), _finding(deployment="acme-chat-70b")], NOW)
    assert notifier.poll(budget_s=0.0) == []  # out of time before the first event: the cursor stays
    assert len(notifier.poll()) == 2
    assert sorted(b["entity_id"] for b in receiver.to("/hook")) == ["acme-chat-70b", "acme-chat-8b"]


def test_a_claim_left_by_a_dead_poller_is_taken_over_once_stale(
    state: StateStore, receiver: Receiver
) -> None:
    from test_portal_notify import _pending

    ensure_sandbox_fleet(state, seed=1, now=NOW)
    notifier = Notifier(state)
    notifier.poll()
    channel = notifier.add_channel("acme", ChannelSpec(kind="webhook", url=f"{receiver.url}/hook"), by="ada")
    fresh, dead = _pending(state, "rec-fresh", "acme-chat-8b"), _pending(state, "rec-dead", "acme-chat-70b")
    now = datetime.now(UTC)
    with state.engine.begin() as conn:
        for rec, claimed_at in [(fresh, now), (dead, now - CLAIM_STALE - timedelta(seconds=1))]:
            conn.execute(
                notification_deliveries.insert().values(
                    channel_id=channel.id,
                    event_key=f"decision_needed:{rec.id}",
                    event_kind="decision_needed",
                    customer_id="acme",
                    status="sending",
                    attempts=0,
                    last_error="",
                    at=claimed_at,
                )
            )
    assert [d.event_key for d in notifier.poll()] == ["decision_needed:rec-dead"]
    assert [b["entity_id"] for b in receiver.to("/hook")] == ["rec-dead"]  # the fresh claim is another's
    statuses = {d.event_key: d.status for d in notifier.deliveries(["acme"])}
    assert statuses == {"decision_needed:rec-dead": "delivered", "decision_needed:rec-fresh": "sending"}
