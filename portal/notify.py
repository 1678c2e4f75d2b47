"""Notifications: a decision needed, an approval, a rollback, an escalation (and anomaly or budget alerts
posted by a caller) → Slack, PagerDuty or a generic webhook, configured per customer.

Events come from the stores, never from a second bookkeeping: open recommendations waiting for a person,
and the append-only audit log read past a cursor (approvals, rejections, rollbacks, escalations). Each
(channel, event) is delivered at most once: a delivery is retried with backoff, then recorded as
``delivered`` or ``failed`` with the last error (a UNIQUE row per channel and event), never lost silently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator

from optiinfra_assets.models import RecommendationStatus
from resources.state_store import (
    StateStore,
    UnknownRecommendationError,
    audit_log,
    notification_channels,
    notification_deliveries,
)

CURSOR_KEY = "portal:notifications"
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
    status: str  # delivered | failed
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
        events = list(events)
        by_customer: dict[str, list[Channel]] = {}
        for channel in self.channels({e.customer_id for e in events}):
            by_customer.setdefault(channel.customer_id, []).append(channel)
        done = self._delivered_keys([c.id for cs in by_customer.values() for c in cs])
        out = []
        for event in events:
            for channel in by_customer.get(event.customer_id, []):
                if event.kind not in channel.events or (channel.id, event.key) in done:
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
                try:
                    with self.state.engine.begin() as conn:
                        conn.execute(notification_deliveries.insert().values(**delivery.model_dump()))
                except sa.exc.IntegrityError:  # another process delivered it meanwhile
                    continue
                done.add((channel.id, event.key))
                out.append(delivery)
        return out

    def _delivered_keys(self, channel_ids: list[int]) -> set[tuple[int, str]]:
        if not channel_ids:
            return set()
        query = sa.select(notification_deliveries.c.channel_id, notification_deliveries.c.event_key).where(
            notification_deliveries.c.channel_id.in_(channel_ids)
        )
        with self.state.engine.connect() as conn:
            return {(r.channel_id, r.event_key) for r in conn.execute(query)}

    # ---- the events, from the stores ----------------------------------------------------------

    def pending_events(self) -> list[Event]:
        """One poll: recommendations waiting for a person, and audit entries past the cursor."""
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
        cursor = self.state.get_source_state(CURSOR_KEY)
        after = int(cursor["after_id"]) if cursor else latest_audit_id(self.state)
        entries = self.state.list_audit(after_id=after, limit=1000)
        for entry in entries:
            event = audit_event(
                self.state, entry.id, entry.action, entry.entity_id, entry.actor, entry.detail
            )
            if event is not None:
                events.append(event.model_copy(update={"at": entry.at}))
        last = entries[-1].id if entries else after
        self.state.put_source_state(CURSOR_KEY, {"after_id": last})
        return events

    def poll(self) -> list[Delivery]:
        return self.dispatch(self.pending_events())


_AUDIT_EVENTS = {
    "approve": (EventKind.APPROVAL, "info", "approved"),
    "reject": (EventKind.APPROVAL, "info", "rejected"),
    "rolled_back": (EventKind.ROLLBACK, "critical", "rolled back"),
    "escalate": (EventKind.ESCALATION, "warning", "escalated to the customer"),
}


def audit_event(
    state: StateStore, entry_id: int, action: str, rec_id: str, actor: str, detail: dict[str, Any]
) -> Event | None:
    """The notification an audit entry about a recommendation makes, if any."""
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
        key=f"audit:{entry_id}",
        customer_id=rec.customer_id,
        title=f"{rec.kind} on {rec.deployment_id} {verb} by {actor}",
        detail=str(why),
        entity_id=rec_id,
        severity=severity,
        at=datetime.now(UTC),
    )


def latest_audit_id(state: StateStore) -> int:
    """The newest audit entry's id: where a new follower (notifier, live feed) starts."""
    with state.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.coalesce(sa.func.max(audit_log.c.id), 0))) or 0)
