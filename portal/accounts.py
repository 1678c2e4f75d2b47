"""Local users, their roles and customer scopes, password hashing and login sessions.

Plain functions over the state store's portal tables (migration 6); no web framework here. Passwords are
hashed with scrypt (hashlib, memory-hard) and a random salt; there is no default user or password: the
first user is created with ``optiinfra users add``. A session token is random; only its SHA-256 is stored,
with its expiry and the session's CSRF token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import sqlalchemy as sa
from pydantic import BaseModel, Field, field_validator

from optiinfra_assets.models import Recommendation, Risk
from resources.state_store import StateStore, portal_sessions, portal_users

ALL_CUSTOMERS = "*"
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MIN_PASSWORD_CHARS = 10
RISK_ORDER = (Risk.LOW, Risk.MEDIUM, Risk.HIGH)

# scrypt cost: 2^15 x 8 x 1 takes ~60 ms and 32 MiB here, enough to make guessing slow.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1


class Role(StrEnum):
    VIEWER = "viewer"  # reads its customers' fleets
    APPROVER = "approver"  # + decides their recommendations up to its max risk
    ADMIN = "admin"  # + manages their notification channels; decides at any risk


class PortalUser(BaseModel):
    username: str = Field(pattern=USERNAME_PATTERN)
    role: Role
    customers: list[str] = Field(min_length=1)
    max_risk: Risk = Risk.LOW
    created_at: datetime
    has_password: bool = True

    @field_validator("customers")
    @classmethod
    def _customer_ids(cls, value: list[str]) -> list[str]:
        for cid in value:
            if cid != ALL_CUSTOMERS and not re.match(CUSTOMER_PATTERN, cid):
                raise ValueError(f"customers: {cid!r} is not a customer id")
        return sorted(set(value))

    def sees(self, customer_id: str) -> bool:
        return ALL_CUSTOMERS in self.customers or customer_id in self.customers

    def visible(self, customer_ids: list[str]) -> list[str]:
        return [c for c in customer_ids if self.sees(c)]

    def may_decide(self, rec: Recommendation) -> tuple[bool, str]:
        """Whether this user may approve or reject ``rec``, and why not."""
        if not self.sees(rec.customer_id):
            return False, f"user {self.username!r} is not scoped to customer {rec.customer_id!r}"
        if self.role is Role.VIEWER:
            return False, f"user {self.username!r} is a viewer: viewers cannot decide"
        if self.role is Role.APPROVER and RISK_ORDER.index(rec.risk) > RISK_ORDER.index(self.max_risk):
            return False, (
                f"recommendation {rec.id!r} is {rec.risk.value} risk; user {self.username!r} may approve "
                f"up to {self.max_risk.value} risk"
            )
        return True, ""


class Session(BaseModel):
    username: str
    csrf_token: str
    expires_at: datetime


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, maxmem=64 * 2**20
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), maxmem=64 * 2**20
    )
    return hmac.compare_digest(expected, actual)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"password: at least {MIN_PASSWORD_CHARS} characters, got {len(password)}")


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Accounts:
    """Users and sessions in the state store (SQLite or PostgreSQL)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    @staticmethod
    def _user(row: sa.RowMapping) -> PortalUser:
        return PortalUser(
            username=row["username"],
            role=row["role"],
            customers=row["customers"],
            max_risk=row["max_risk"],
            created_at=_utc(row["created_at"]),
            has_password=row["password_hash"] is not None,
        )

    def add_user(
        self,
        username: str,
        role: Role | str,
        customers: list[str],
        max_risk: Risk | str,
        password: str | None,
        *,
        by: str,
    ) -> PortalUser:
        """Create a user (ValueError naming the field for bad input or an existing name). ``password``
        None: the user signs in through OpenID Connect only."""
        user = PortalUser(
            username=username,
            role=Role(role),
            customers=customers,
            max_risk=Risk(max_risk),
            created_at=datetime.now(UTC),
            has_password=password is not None,
        )
        if password is not None:
            check_password_strength(password)
        try:
            with self.state.engine.begin() as conn:
                conn.execute(
                    portal_users.insert().values(
                        username=user.username,
                        password_hash=hash_password(password) if password is not None else None,
                        role=user.role.value,
                        customers=user.customers,
                        max_risk=user.max_risk.value,
                        created_at=user.created_at,
                    )
                )
        except sa.exc.IntegrityError:
            raise ValueError(f"username: {username!r} already exists") from None
        detail = {"role": user.role.value, "customers": user.customers, "max_risk": user.max_risk.value}
        self.state.audit(by, "add_user", "portal_user", user.username, detail)
        return user

    def remove_user(self, username: str, *, by: str) -> None:
        with self.state.engine.begin() as conn:
            gone = conn.execute(portal_users.delete().where(portal_users.c.username == username)).rowcount
            conn.execute(portal_sessions.delete().where(portal_sessions.c.username == username))
        if not gone:
            raise KeyError(f"username: unknown user {username!r}")
        self.state.audit(by, "remove_user", "portal_user", username, {})

    def get_user(self, username: str) -> PortalUser | None:
        with self.state.engine.connect() as conn:
            row = (
                conn.execute(sa.select(portal_users).where(portal_users.c.username == username))
                .mappings()
                .first()
            )
        return None if row is None else self._user(row)

    def list_users(self) -> list[PortalUser]:
        with self.state.engine.connect() as conn:
            rows = conn.execute(sa.select(portal_users).order_by(portal_users.c.username)).mappings()
            return [self._user(r) for r in rows]

    def authenticate(self, username: str, password: str) -> PortalUser | None:
        """The user if the password matches; None otherwise (the same work either way)."""
        with self.state.engine.connect() as conn:
            row = (
                conn.execute(sa.select(portal_users).where(portal_users.c.username == username))
                .mappings()
                .first()
            )
        if row is None or row["password_hash"] is None:
            verify_password(password, _DUMMY_HASH)  # the same work, so timing does not tell names apart
            return None
        return self._user(row) if verify_password(password, row["password_hash"]) else None

    def start_session(
        self, username: str, ttl: timedelta, now: datetime | None = None
    ) -> tuple[str, Session]:
        """A new session: the token (given to the client once) and what the store keeps of it."""
        now = now or datetime.now(UTC)
        token = secrets.token_urlsafe(32)
        session = Session(username=username, csrf_token=secrets.token_urlsafe(24), expires_at=now + ttl)
        with self.state.engine.begin() as conn:
            conn.execute(portal_sessions.delete().where(portal_sessions.c.expires_at < now))
            conn.execute(
                portal_sessions.insert().values(
                    token_hash=_token_hash(token),
                    username=username,
                    csrf_token=session.csrf_token,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    def session(self, token: str, now: datetime | None = None) -> Session | None:
        """The live session of a token; None if unknown or expired."""
        now = now or datetime.now(UTC)
        with self.state.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(portal_sessions).where(portal_sessions.c.token_hash == _token_hash(token))
                )
                .mappings()
                .first()
            )
        if row is None or _utc(row["expires_at"]) <= now:
            return None
        return Session(
            username=row["username"], csrf_token=row["csrf_token"], expires_at=_utc(row["expires_at"])
        )

    def end_session(self, token: str) -> None:
        with self.state.engine.begin() as conn:
            conn.execute(portal_sessions.delete().where(portal_sessions.c.token_hash == _token_hash(token)))


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
