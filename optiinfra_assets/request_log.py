"""Real deployments' request logs as JSON lines, read as they grow.

Each line is one served request::

    {"ts": "2026-05-11T12:00:03Z", "deployment": "acme-chat-8b", "prompt": "...", "context": "...",
     "response": "...", "latency_ms": 812.5}

``ts`` is ISO-8601 text or epoch seconds/milliseconds; ``context`` (the retrieved passages of a RAG
service) and ``latency_ms`` may be absent; optional ``id`` (the request id, else one derived from the file
and byte offset, stable across re-reads) and ``instance`` (the replica that served it, else the
deployment's first running instance: a load balancer's log rarely knows).

``OPTIINFRA_REQUEST_LOG_PATH`` names a file or a folder of ``*.jsonl`` files (a log shipper writing one
file per hour, say). Every collection reads what was appended since the last one: the byte offset of each
file is kept in the state store's source state, a partial last line waits for its newline, and a file that
shrank (rotated, truncated) is read again from its start. Lines go through the same ingestion path as the
sandbox's text (:func:`optiinfra_assets.request_samples.ingest_requests`): scored offline, validated,
stored; a line that is not JSON, lacks a field, has a mistyped one or names an unknown deployment is
quarantined with the file, line and field in its reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from optiinfra_assets.metrics import TS
from optiinfra_assets.models import Deployment, Instance
from optiinfra_assets.request_samples import PROBLEM_COLUMNS

STATE_KEY_PREFIX = "request_log:"
# One collection reads at most this much of each file: a huge backlog is caught up over collections.
MAX_BYTES_PER_READ = 16 * 1024 * 1024


class RequestLogLine(BaseModel):
    """One line of a request log (unknown keys ignored; strings are strings, not numbers)."""

    model_config = ConfigDict(extra="ignore")

    ts: datetime
    deployment: StrictStr = Field(min_length=1)
    prompt: StrictStr = ""
    context: StrictStr | None = None
    response: StrictStr
    latency_ms: float | None = Field(None, ge=0, allow_inf_nan=False)
    id: StrictStr | None = None
    instance: StrictStr | None = None


def log_files(path: Path) -> list[Path]:
    """The file, or the folder's ``*.jsonl`` files in name order (oldest first for dated names)."""
    if path.is_dir():
        return sorted(p for p in path.glob("*.jsonl") if p.is_file())
    return [path] if path.is_file() else []


def _problem(exc: ValidationError) -> tuple[str, str]:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"][:1]) or "line"
    return field, f"field '{field}': {err['msg'].lower()}"


def parse_line(raw: bytes) -> RequestLogLine:
    """One line; ValueError(field, reason) names the field where there is one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("line", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError("line", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError("line", f"expected a JSON object, got {type(obj).__name__}")
    try:
        return RequestLogLine.model_validate(obj)
    except ValidationError as exc:
        raise ValueError(*_problem(exc)) from None


class RequestLogReader:
    """Reads what was appended to the log since the last read; offsets persist in ``state``."""

    def __init__(self, path: str | Path, state: Any, max_bytes: int = MAX_BYTES_PER_READ) -> None:
        self.path = Path(path).expanduser()
        self.state = state  # resources.sources.SourceState: get/put_source_state
        self.max_bytes = max_bytes

    def _key(self, file: Path) -> str:
        return STATE_KEY_PREFIX + str(file.resolve())

    def read(
        self, deployments: Sequence[Deployment], instances: Sequence[Instance]
    ) -> tuple[pl.DataFrame, str]:
        """(request frame with a ``problem`` for each bad line, status line)."""
        if not self.path.exists():
            return _frame([]), f"request log {self.path}: not found"
        owner = {d.id: d.customer_id for d in deployments}
        first_instance: dict[str, str] = {}
        for inst in sorted(instances, key=lambda i: i.id):
            first_instance.setdefault(inst.deployment_id, inst.id)
        rows: list[dict[str, Any]] = []
        files = log_files(self.path)
        for file in files:
            rows.extend(self._read_file(file, owner, first_instance))
        bad = sum(r["problem"] is not None for r in rows)
        return _frame(rows), f"request log {self.path}: {len(files)} files, {len(rows)} new lines, {bad} bad"

    def _read_file(
        self, file: Path, owner: Mapping[str, str], first_instance: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        key = self._key(file)
        saved = self.state.get_source_state(key) or {}
        offset, line_no = int(saved.get("offset", 0)), int(saved.get("line", 0))
        size = file.stat().st_size
        if size < offset:  # rotated or truncated: what is there now is new
            offset, line_no = 0, 0
        if size == offset:
            return []
        with file.open("rb") as stream:
            stream.seek(offset)
            chunk = stream.read(self.max_bytes)
        end = chunk.rfind(b"\n") + 1  # a partial last line waits for its newline
        if end == 0:
            return []
        rows = []
        position = offset
        for raw in chunk[:end].splitlines(keepends=True):
            line_no += 1
            if raw.strip():
                rows.append(self._row(file, line_no, position, raw, owner, first_instance))
            position += len(raw)
        self.state.put_source_state(key, {"offset": offset + end, "line": line_no, "size": size})
        return rows

    def _row(
        self,
        file: Path,
        line_no: int,
        position: int,
        raw: bytes,
        owner: Mapping[str, str],
        first_instance: Mapping[str, str],
    ) -> dict[str, Any]:
        where = f"{file.name} line {line_no}"
        text = raw.decode("utf-8", errors="replace").strip()
        row: dict[str, Any] = {"raw": text, "problem": None, "problem_field": None}
        try:
            line = parse_line(raw)
        except ValueError as exc:
            field, reason = exc.args
            return row | {"problem": f"{where}: {reason}", "problem_field": field}
        if line.deployment not in owner:
            reason = f"{where}: field 'deployment': unknown deployment '{line.deployment}'"
            return row | {"problem": reason, "problem_field": "deployment"}
        instance = line.instance or first_instance.get(line.deployment)
        if instance is None:
            reason = f"{where}: deployment '{line.deployment}' has no running instance to attribute it to"
            return row | {"problem": reason, "problem_field": "instance"}
        request_id = (
            line.id
            or "log-" + hashlib.blake2b(f"{file.resolve()}:{position}".encode(), digest_size=8).hexdigest()
        )
        return row | {
            "ts": line.ts,
            "customer_id": owner[line.deployment],
            "deployment_id": line.deployment,
            "instance_id": instance,
            "request_id": request_id,
            "prompt": line.prompt,
            "context": line.context or "",
            "response": line.response,
            "latency_ms": line.latency_ms,
        }


_SCHEMA: dict[str, pl.DataType] = {
    "ts": TS,
    "customer_id": pl.String(),
    "deployment_id": pl.String(),
    "instance_id": pl.String(),
    "request_id": pl.String(),
    "prompt": pl.String(),
    "context": pl.String(),
    "response": pl.String(),
    "latency_ms": pl.Float64(),
    **dict.fromkeys(PROBLEM_COLUMNS, pl.String()),
}


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame([{name: row.get(name) for name in _SCHEMA} for row in rows], schema=_SCHEMA)
