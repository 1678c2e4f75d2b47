"""Notifications: a decision needed, an approval, a rollback, an escalation, an anomaly or a budget alert
→ Slack, PagerDuty or a generic webhook, configured per customer.

Events come from the stores, never from a second bookkeeping: open recommendations waiting for a person,
and the append-only audit log read past a cursor (approvals, rejections, rollbacks, escalations, and the
detectors' high and medium findings, which the analysis pass records there once each: ``record_findings``).
Each (channel, event) is delivered at most once: a delivery is claimed first (a UNIQUE row per channel and
event, so two pollers, the portal's loop and the Dagster ``notifications_sensor``, never both send it),
retried with backoff, then recorded as ``delivered`` or ``failed`` with the last error, never lost silently.
Plain code, no Dagster and no web framework: the portal and the Dagster sensor both run it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator

from optiinfra_assets.agents.capability import Finding
from optiinfra_assets.agents.cost.budget_forecast import BudgetForecasts
from optiinfra_assets.models import RecommendationStatus, Risk
from resources.state_store import (
    StateStore,
    UnknownRecommendationError,
    audit_log,
    notification_channels,
    notification_deliveries,
)

CURSOR_KEY = "portal:notifications"
# A claim still "sending" this long after it was taken belongs to a poller that died (one delivery takes
# at most attempts x the HTTP timeout plus the backoff, well under a minute): another may take it over.
CLAIM_STALE = timedelta(minutes=10)
FINDING_ACTION = "finding"  # the audit action a detector's finding is recorded under
NOTIFIED_SEVERITIES = (Risk.HIGH, Risk.MEDIUM)  # low findings are informational: the asset shows them
BUDGET_DETECTORS = frozenset({BudgetForecasts.name})  # their findings are budget alerts, others anomalies
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"


class EventKind(StrEnum):
    DECISION_NEEDED = "decision_needed"
    APPROVAL = "approval"
    ROLLBACK = "rollback"
    ANOMALY = "anomaly"
    BUDGET_ALERT = "budget_alert"
    ESCALATION = "escalation"


class ChannelKind(StrEnum):
    SLACK = "slack"  # an incoming-webhook URL
    PAGERDUTY = "pagerduty"  # Events API v2 (routing_key required)
    WEBHOOK = "webhook"  # any URL: the event as JSON


class Event(BaseModel):
    kind: EventKind
    key: str  # unique per event: a channel receives it at most once
    customer_id: str
    title: str
    detail: str = ""
    entity_id: str = ""
    severity: str = "info"  # info | warning | critical (PagerDuty's severities)
    at: datetime


class ChannelSpec(BaseModel):
    """A channel as configured by a customer's admin (the API's input)."""

    kind: ChannelKind
    url: str = Field(max_length=2000)
    routing_key: str | None = Field(None, max_length=200)
    events: list[EventKind] = Field(default_factory=lambda: list(EventKind), min_length=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: expected an http(s) URL, got {value!r}")
        return value

    def model_post_init(self, _: Any) -> None:
        if self.kind is ChannelKind.PAGERDUTY and not self.routing_key:
            raise ValueError("routing_key: PagerDuty channels need their integration key")


class Channel(ChannelSpec):
    id: int
    customer_id: str


class Delivery(BaseModel):
    channel_id: int
    event_key: str
    event_kind: EventKind
    customer_id: str
    status: str  # sending (claimed, being tried) | delivered | failed
    attempts: int
    last_error: str
    at: datetime


def payload(channel: Channel | ChannelSpec, event: Event) -> dict[str, Any]:
    """The request body each service expects."""
    if channel.kind is ChannelKind.SLACK:
        return {"text": f"*{event.title}*\n{event.detail}".strip()}
    if channel.kind is ChannelKind.PAGERDUTY:
        return {
            "routing_key": channel.routing_key,
            "event_action": "trigger",
            "dedup_key": event.key,
            "payload": {
                "summary": event.title[:1024],
                "source": f"optiinfra:{event.customer_id}",
                "severity": event.severity,
                "custom_details": {"detail": event.detail, "entity": event.entity_id, "kind": event.kind},
            },
        }
    return event.model_dump(mode="json")


class Notifier:
    def __init__(
        self,
        state: StateStore,
        client: httpx.Client | None = None,
        attempts: int = 3,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state = state
        self.client = client or httpx.Client(timeout=5.0)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.sleep = sleep

    # ---- configuration ------------------------------------------------------------------------

    def add_channel(self, customer_id: str, spec: ChannelSpec, *, by: str) -> Channel:
        with self.state.engine.begin() as conn:
            channel_id = conn.execute(
                notification_channels.insert().values(
                    customer_id=customer_id,
                    kind=spec.kind.value,
                    url=spec.url,
                    routing_key=spec.routing_key,
                    events=[e.value for e in spec.events],
                    created_at=datetime.now(UTC),
                )
            ).inserted_primary_key[0]
        channel = Channel(id=int(channel_id), customer_id=customer_id, **spec.model_dump())
        self.state.audit(
            by,
            "add_channel",
            "customer",
            customer_id,
            channel.model_dump(mode="json", exclude={"routing_key"}),
        )
        return channel

    def channels(self, customer_ids: Iterable[str] | None = None) -> list[Channel]:
        query = sa.select(notification_channels).order_by(notification_channels.c.id)
        if customer_ids is not None:
            query = query.where(notification_channels.c.customer_id.in_(list(customer_ids)))
        with self.state.engine.connect() as conn:
            return [Channel.model_validate(dict(r)) for r in conn.execute(query).mappings()]

    def deliveries(self, customer_ids: Iterable[str], limit: int = 200) -> list[Delivery]:
        query = (
            sa.select(notification_deliveries)
            .where(notification_deliveries.c.customer_id.in_(list(customer_ids)))
            .order_by(notification_deliveries.c.id.desc())
            .limit(limit)
        )
        with self.state.engine.connect() as conn:
            rows = conn.execute(query).mappings()
            return [
                Delivery.model_validate({**r, "at": r["at"].replace(tzinfo=r["at"].tzinfo or UTC)})
                for r in rows
            ]

    # ---- delivery -----------------------------------------------------------------------------

    def _send(self, channel: Channel, event: Event) -> tuple[bool, int, str]:
        """Post with retries: (delivered, attempts, last error)."""
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.client.post(channel.url, json=payload(channel, event))
                if response.status_code < 300:
                    return True, attempt, ""
                error = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
        return False, self.attempts, error

    def dispatch(self, events: Iterable[Event]) -> list[Delivery]:
        """Deliver each event to its customer's channels that take its kind, once per channel."""
        return self._dispatch(list(events), deadline=None)[0]

    def _dispatch(self, events: list[Event], deadline: float | None) -> tuple[list[Delivery], int]:
        """The deliveries made, and how many events (from the first) were fully handled: past
        ``deadline`` (a ``time.monotonic`` value) no further event is started."""
        by_customer: dict[str, list[Channel]] = {}
        for channel in self.channels({e.customer_id for e in events}):
            by_customer.setdefault(channel.customer_id, []).append(channel)
        done = self._delivered_keys([c.id for cs in by_customer.values() for c in cs])
        out = []
        for handled, event in enumerate(events):
            if deadline is not None and time.monotonic() >= deadline:
                return out, handled
            for channel in by_customer.get(event.customer_id, []):
                if event.kind not in channel.events or (channel.id, event.key) in done:
                    continue
                if not self._claim(channel, event):  # another poller has it
                    done.add((channel.id, event.key))
                    continue
                ok, attempts, error = self._send(channel, event)
                delivery = Delivery(
                    channel_id=channel.id,
                    event_key=event.key,
                    event_kind=event.kind,
                    customer_id=event.customer_id,
                    status="delivered" if ok else "failed",
                    attempts=attempts,
                    last_error=error,
                    at=datetime.now(UTC),
                )
                with self.state.engine.begin() as conn:
                    conn.execute(
                        notification_deliveries.update()
                        .where(
                            notification_deliveries.c.channel_id == channel.id,
                            notification_deliveries.c.event_key == event.key,
                        )
                        .values(status=delivery.status, attempts=attempts, last_error=error, at=delivery.at)
                    )
                done.add((channel.id, event.key))
                out.append(delivery)
        return out, len(events)

    def _claim(self, channel: Channel, event: Event) -> bool:
        """Take (channel, event) before sending: False if another poller took it first."""
        try:
            with self.state.engine.begin() as conn:
                conn.execute(
                    notification_deliveries.insert().values(
                        channel_id=channel.id,
                        event_key=event.key,
                        event_kind=event.kind.value,
                        customer_id=event.customer_id,
                        status="sending",
                        attempts=0,
                        last_error="",
                        at=datetime.now(UTC),
                    )
                )
        except sa.exc.IntegrityError:
            return self._take_over_stale_claim(channel, event)
        return True

    def _take_over_stale_claim(self, channel: Channel, event: Event) -> bool:
        """A claim still ``sending`` after CLAIM_STALE belongs to a poller that died: take it over."""
        now = datetime.now(UTC)
        with self.state.engine.begin() as conn:
            taken = conn.execute(
                notification_deliveries.update()
                .where(
                    notification_deliveries.c.channel_id == channel.id,
                    notification_deliveries.c.event_key == event.key,
                    notification_deliveries.c.status == "sending",
                    notification_deliveries.c.at < now - CLAIM_STALE,
                )
                .values(at=now)
            )
        return taken.rowcount == 1

    def _delivered_keys(self, channel_ids: list[int]) -> set[tuple[int, str]]:
        if not channel_ids:
            return set()
        stale = datetime.now(UTC) - CLAIM_STALE
        query = sa.select(notification_deliveries.c.channel_id, notification_deliveries.c.event_key).where(
            notification_deliveries.c.channel_id.in_(channel_ids),
            sa.or_(notification_deliveries.c.status != "sending", notification_deliveries.c.at >= stale),
        )
        with self.state.engine.connect() as conn:
            return {(r.channel_id, r.event_key) for r in conn.execute(query)}

    # ---- the events, from the stores ----------------------------------------------------------

    def waiting_events(self) -> list[Event]:
        """Recommendations waiting for a person: listed again at every poll until decided."""
        events = [
            Event(
                kind=EventKind.DECISION_NEEDED,
                key=f"decision_needed:{rec.id}",
                customer_id=rec.customer_id,
                title=f"Decision needed: {rec.kind} on {rec.deployment_id} ({rec.risk.value} risk)",
                detail=rec.summary,
                entity_id=rec.id,
                severity="warning" if rec.risk.value == "high" else "info",
                at=rec.created_at,
            )
            for rec in self.state.list_recommendations(status=RecommendationStatus.PENDING.value)
        ]
        # A recommendation coordination stored as escalated from the start has no audit entry: it is
        # announced from the store, under the key the ``escalate`` entry of a later escalation uses.
        events += [
            Event(
                kind=EventKind.ESCALATION,
                key=escalation_key(rec.id),
                customer_id=rec.customer_id,
                title=f"{rec.kind} on {rec.deployment_id} escalated to the customer",
                detail=rec.status_reason,
                entity_id=rec.id,
                severity="warning",
                at=rec.created_at,
            )
            for rec in self.state.list_recommendations(status=RecommendationStatus.ESCALATED.value)
        ]
        return events

    def poll(self, budget_s: float | None = None) -> list[Delivery]:
        """One poll: the waiting recommendations, then the audit entries past the cursor. The cursor moves
        past an entry only once its event was handled, so an entry a poll had no time for (``budget_s``)
        or died on is read again by the next one (the claims keep it from being sent twice)."""
        cursor = self.state.get_source_state(CURSOR_KEY)
        after = int(cursor["after_id"]) if cursor else latest_audit_id(self.state)
        entries: list[tuple[int, Event | None]] = []
        for entry in self.state.list_audit(after_id=after, limit=1000):
            event = audit_event(
                self.state, entry.id, entry.action, entry.entity_id, entry.actor, entry.detail
            )
            entries.append((entry.id, event.model_copy(update={"at": entry.at}) if event else None))
        waiting = self.waiting_events()
        audited = [event for _, event in entries if event is not None]
        deadline = time.monotonic() + budget_s if budget_s is not None else None
        deliveries, handled = self._dispatch(waiting + audited, deadline)
        audited_handled = max(handled - len(waiting), 0)
        last = after
        for entry_id, event in entries:
            if event is not None:
                if audited_handled == 0:
                    break
                audited_handled -= 1
            last = entry_id
        self.state.put_source_state(CURSOR_KEY, {"after_id": last})
        return deliveries


_AUDIT_EVENTS = {
    "approve": (EventKind.APPROVAL, "info", "approved"),
    "reject": (EventKind.APPROVAL, "info", "rejected"),
    "rolled_back": (EventKind.ROLLBACK, "critical", "rolled back"),
    "escalate": (EventKind.ESCALATION, "warning", "escalated to the customer"),
}


def audit_event(
    state: StateStore, entry_id: int, action: str, rec_id: str, actor: str, detail: dict[str, Any]
) -> Event | None:
    """The notification an audit entry about a recommendation, or a recorded finding, makes, if any."""
    if action == FINDING_ACTION:
        return finding_event(detail)
    if action not in _AUDIT_EVENTS:
        return None
    kind, severity, verb = _AUDIT_EVENTS[action]
    try:
        rec = state.get_recommendation(rec_id)
    except UnknownRecommendationError:
        return None
    why = detail.get("reason") or detail.get("comment") or ""
    return Event(
        kind=kind,
        key=escalation_key(rec_id) if kind is EventKind.ESCALATION else f"audit:{entry_id}",
        customer_id=rec.customer_id,
        title=f"{rec.kind} on {rec.deployment_id} {verb} by {actor}",
        detail=str(why),
        entity_id=rec_id,
        severity=severity,
        at=datetime.now(UTC),
    )


def escalation_key(rec_id: str) -> str:
    """One escalation notice per recommendation, whether the store or the audit log shows it first."""
    return f"escalation:{rec_id}"


def latest_audit_id(state: StateStore) -> int:
    """The newest audit entry's id: where a new follower (notifier, live feed) starts."""
    with state.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.coalesce(sa.func.max(audit_log.c.id), 0))) or 0)


# ---- the detectors' findings --------------------------------------------------------------------------


def finding_key(finding: Finding, now: datetime) -> str:
    """A finding's identity: the same condition seen again by a later pass is the same finding. Where a
    detector gives no start time, the day stands in, so a lasting condition is announced once a day."""
    started = finding.since or now.astimezone(UTC).date().isoformat()
    key = f"finding:{finding.detector}:{finding.deployment_id or finding.customer_id}:{finding.metric}:{started}"
    if len(key) <= notification_deliveries.c.event_key.type.length:
        return key
    return f"finding:{finding.detector}:{hashlib.sha256(key.encode()).hexdigest()}"


def finding_event_kind(finding: Finding) -> EventKind:
    return EventKind.BUDGET_ALERT if finding.detector in BUDGET_DETECTORS else EventKind.ANOMALY


def record_findings(state: StateStore, findings: Iterable[Finding], now: datetime) -> list[str]:
    """Record each high or medium finding not recorded before in the audit log (action ``finding``, on its
    deployment, or its customer for a customer-wide one): the live feed shows it and the notifier delivers
    it. Returns the keys recorded now; a finding a later pass sees again is not recorded twice."""
    wanted: dict[str, Finding] = {}
    for finding in findings:
        if finding.severity in NOTIFIED_SEVERITIES:
            wanted.setdefault(finding_key(finding, now), finding)
    if not wanted:
        return []
    subjects = {f.deployment_id or f.customer_id for f in wanted.values()}
    query = sa.select(audit_log.c.detail).where(
        audit_log.c.action == FINDING_ACTION, audit_log.c.entity_id.in_(subjects)
    )
    with state.engine.connect() as conn:
        known = {(row.detail or {}).get("key") for row in conn.execute(query)}
    recorded = []
    for key, finding in wanted.items():
        if key in known:
            continue
        entity = (
            ("deployment", finding.deployment_id)
            if finding.deployment_id
            else ("customer", finding.customer_id)
        )
        detail = {
            "key": key,
            "event": finding_event_kind(finding).value,
            **finding.model_dump(mode="json"),
        }
        state.audit(f"detector:{finding.detector}", FINDING_ACTION, *entity, detail)
        recorded.append(key)
    return recorded


def finding_event(detail: dict[str, Any]) -> Event | None:
    """The notification a recorded finding makes (None for an entry this version cannot read)."""
    try:
        finding = Finding.model_validate({k: v for k, v in detail.items() if k in Finding.model_fields})
        kind = EventKind(detail["event"])
        key = str(detail["key"])
    except (KeyError, ValueError):
        return None
    label = "Budget alert" if kind is EventKind.BUDGET_ALERT else "Anomaly"
    return Event(
        kind=kind,
        key=key,
        customer_id=finding.customer_id,
        title=f"{label} ({finding.severity.value}): {finding.summary}"[:500],
        detail=finding.explanation,
        entity_id=finding.deployment_id or finding.customer_id,
        severity="critical" if finding.severity is Risk.HIGH else "warning",
        at=datetime.now(UTC),
    )
