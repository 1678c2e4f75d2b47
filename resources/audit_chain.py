"""The audit log's hash chain: pure functions, no database.

Each entry carries ``seq`` (1, 2, 3, ... with no gap), ``prev_hash`` (the hash of entry ``seq - 1``, or
:data:`GENESIS` for the first) and ``hash``, the SHA-256 of its canonical content including ``prev_hash``.
Changing, removing or inserting an entry anywhere breaks the link after it; an approval is covered by
the digest its decision's entry records (``approval_sha256``). :func:`verify_chain` walks the entries in
the order they were written and names the first broken link.

What a chain without a secret cannot show: someone with write access who recomputes every hash after
the entry they forged. The append-only triggers refuse the UPDATEs that would take, and a missing
trigger is reported by the verification itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

GENESIS = "0" * 64
# The decisions whose audit entry seals an approval row (``seal_approval`` covers rows written before
# the chain existed).
APPROVAL_ACTIONS = ("approve", "reject", "seal_approval")


def canonical_time(at: datetime) -> str:
    """One text for an instant whichever engine returned it (SQLite: naive UTC; PostgreSQL: aware)."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def _digest(content: Mapping[str, Any]) -> str:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def entry_hash(
    *,
    seq: int,
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    detail: Mapping[str, Any],
) -> str:
    return _digest(
        {
            "seq": seq,
            "prev_hash": prev_hash,
            "at": canonical_time(at),
            "actor": actor,
            "action": action,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "detail": detail,
        }
    )


def approval_digest(
    *, id: int, recommendation_id: str, decision: str, decided_by: str, comment: str, at: datetime, via: str
) -> str:
    """The digest of an approval row, recorded in its decision's audit entry."""
    return _digest(
        {
            "id": id,
            "recommendation_id": recommendation_id,
            "decision": decision,
            "decided_by": decided_by,
            "comment": comment,
            "at": canonical_time(at),
            "via": via,
        }
    )


def row_entry_hash(row: Mapping[str, Any], *, seq: int, prev_hash: str) -> str:
    """The :func:`entry_hash` of a row of audit_log chained at ``seq`` after ``prev_hash``."""
    return entry_hash(
        seq=seq,
        prev_hash=prev_hash,
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        entity_type=row["entity_type"],
        entity_id=row["entity_id"],
        detail=row["detail"],
    )


def approval_row_digest(row: Mapping[str, Any]) -> str:
    """The :func:`approval_digest` of a row of the approvals table."""
    return approval_digest(
        id=row["id"],
        recommendation_id=row["recommendation_id"],
        decision=row["decision"],
        decided_by=row["decided_by"],
        comment=row["comment"],
        at=row["at"],
        via=row["via"],
    )


class AuditVerification(BaseModel):
    """The result of :func:`verify_chain`: ``ok``, or the first broken link in words."""

    ok: bool
    entries: int
    approvals: int
    broken_entry_id: int | None = None
    problem: str | None = None


def _entry_problem(row: Mapping[str, Any], expected_seq: int, prev: str) -> str | None:
    """Why this entry breaks the chain, or None."""
    where = f"entry #{row['id']}"
    if row["seq"] is None or row["hash"] is None:
        return f"{where} ({row['action']} by {row['actor']!r}) is not chained: written outside the store"
    if row["seq"] != expected_seq:
        return f"{where} has seq {row['seq']}, expected {expected_seq}: an entry is missing or inserted"
    if row["prev_hash"] != prev:
        return f"{where} (seq {row['seq']}) does not follow the entry before it"
    if row_entry_hash(row, seq=row["seq"], prev_hash=row["prev_hash"]) != row["hash"]:
        return f"{where} (seq {row['seq']}) was changed after it was written"
    return None


def verify_chain(
    entries: Iterable[Mapping[str, Any]],
    approvals: Iterable[Mapping[str, Any]],
    *,
    head_seq: int | None,
    missing_triggers: list[str],
) -> AuditVerification:
    """Check the entries (rows of audit_log in id order), the approvals against the digests the chain
    recorded, the head counter (entries removed from the end) and the append-only triggers."""
    prev, expected_seq, n = GENESIS, 1, 0
    sealed: dict[int, str] = {}
    for row in entries:
        n += 1
        problem = _entry_problem(row, expected_seq, prev)
        if problem is not None:
            return AuditVerification(
                ok=False, entries=n, approvals=0, broken_entry_id=row["id"], problem=problem
            )
        detail = row["detail"] or {}
        if row["action"] in APPROVAL_ACTIONS and "approval_id" in detail:
            sealed[int(detail["approval_id"])] = str(detail.get("approval_sha256"))
        prev, expected_seq = row["hash"], expected_seq + 1
    last_seq = expected_seq - 1
    if head_seq is not None and head_seq > last_seq:
        return AuditVerification(
            ok=False,
            entries=n,
            approvals=0,
            problem=f"entries after seq {last_seq} are missing ({head_seq} were written)",
        )
    checked = 0
    for approval in approvals:
        checked += 1
        digest = approval_row_digest(approval)
        what = f"approval #{approval['id']} of {approval['recommendation_id']!r}"
        if approval["id"] not in sealed:
            return AuditVerification(
                ok=False, entries=n, approvals=checked, problem=f"{what} has no audit entry sealing it"
            )
        if sealed[approval["id"]] != digest:
            return AuditVerification(
                ok=False,
                entries=n,
                approvals=checked,
                problem=f"{what} was changed after it was written (its audit entry seals other content)",
            )
    if missing_triggers:
        return AuditVerification(
            ok=False,
            entries=n,
            approvals=checked,
            problem=f"append-only trigger(s) missing or disabled: {', '.join(missing_triggers)}",
        )
    return AuditVerification(ok=True, entries=n, approvals=checked)
