"""Request logs as JSON lines: read as they grow (offsets in the state store, both engines), scored and
ingested like the sandbox's text, bad lines quarantined naming file, line and field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from optiinfra_assets.config import Settings
from optiinfra_assets.request_log import RequestLogReader
from optiinfra_assets.request_samples import ingest_requests
from optiinfra_assets.workflow import ensure_sandbox_fleet
from resources.metric_store import QUARANTINE_TABLE, REQUEST_SAMPLES_TABLE, ChdbMetricStore
from resources.sources import SandboxSource, WithRequestLog, configured_metric_source

NOW = datetime.now(UTC).replace(microsecond=0)
CONTEXT = "The Orion X2 is a router made by Northwind Labs. It supports 64 connected devices."


def _line(seconds_ago: int, **fields: object) -> str:
    body = {
        "ts": (NOW - timedelta(seconds=seconds_ago)).isoformat().replace("+00:00", "Z"),
        "deployment": "globex-rag-qwen",
        "prompt": "What does the Orion X2 support?",
        "context": CONTEXT,
        "response": "The Orion X2 supports 64 connected devices.",
        "latency_ms": 640.0,
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}) + "\n"


@pytest.fixture
def fleet_state(state):
    ensure_sandbox_fleet(state, seed=3, now=NOW - timedelta(days=1))
    return state


@pytest.fixture
def store(tmp_path: Path):
    metric_store = ChdbMetricStore(tmp_path / "chdb")
    metric_store.migrate()
    yield metric_store
    metric_store.close()


def _read(reader: RequestLogReader, state) -> pl.DataFrame:
    frame, status = reader.read(state.list_deployments(), state.list_instances())
    assert "request log" in status
    return frame


def test_lines_are_scored_stored_and_bad_ones_quarantined_by_file_line_and_field(
    fleet_state, store, tmp_path: Path
) -> None:
    log = tmp_path / "requests.jsonl"
    log.write_text(
        _line(50, id="r-good")
        + _line(
            49,
            id="r-invented",
            response="The Orion X2 supports 900 devices and was built by Zephyr Dynamics in 1970.",
        )
        + _line(
            48,
            id="r-no-context",
            context=None,
            latency_ms=None,
            ts=int((NOW - timedelta(seconds=48)).timestamp()),
        )
        + "{not json\n"
        + _line(46, response=None)
        + _line(45, response=12)
        + _line(44, deployment="nobody-knows")
        + _line(43, latency_ms=-5)
        + "\n"
        + _line(42, id="r-partial")[:40]  # still being written: no newline yet
    )
    known = fleet_state.instance_index()
    report = ingest_requests(store, _read(RequestLogReader(log, fleet_state), fleet_state), known)
    assert (report.received, report.accepted, report.quarantined) == (8, 3, 5)
    with store.session():
        stored = store.query_polars(f"SELECT * FROM {store.database}.{REQUEST_SAMPLES_TABLE} ORDER BY ts")
        reasons = store.query_polars(
            f"SELECT reason, field FROM {store.database}.{QUARANTINE_TABLE} ORDER BY reason"
        )
    assert stored["request_id"].to_list() == ["r-good", "r-invented", "r-no-context"]
    scores = dict(zip(stored["request_id"], stored["hallucination_score"], strict=True))
    assert scores["r-good"] < 0.1 < 0.5 < scores["r-invented"]
    assert scores["r-no-context"] == 0.5  # nothing to ground it in: the neutral value
    assert stored.filter(pl.col("request_id") == "r-good")["latency_ms"][0] == 640.0
    assert stored["deployment_id"].unique().to_list() == ["globex-rag-qwen"]
    text = "\n".join(reasons["reason"])
    assert "requests.jsonl line 4: not valid JSON" in text
    assert "line 5: field 'response': field required" in text
    assert "line 6: field 'response': input should be a valid string" in text
    assert "line 7: field 'deployment': unknown deployment 'nobody-knows'" in text
    assert "line 8: field 'latency_ms'" in text
    assert set(reasons["field"]) == {"line", "response", "deployment", "latency_ms"}

    # The log grows: the partial line is completed and one more arrives; only they are read, by a new
    # reader (a new process): the offset is in the state store.
    with log.open("a") as out:
        out.write(_line(42, id="r-partial")[40:] + _line(41, id="r-next"))
    again = _read(RequestLogReader(log, fleet_state), fleet_state)
    assert again["request_id"].to_list() == ["r-partial", "r-next"]
    assert _read(RequestLogReader(log, fleet_state), fleet_state).is_empty()
    # Rotated (truncated and rewritten): read from its start again.
    log.write_text(_line(10, id="r-after-rotation"))
    assert _read(RequestLogReader(log, fleet_state), fleet_state)["request_id"].to_list() == [
        "r-after-rotation"
    ]


def test_a_growing_folder_reads_each_file_once(fleet_state, tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "2026-05-11T10.jsonl").write_text(_line(30, id="a") + _line(29, id="b"))
    (folder / "notes.txt").write_text("not a log\n")
    reader = RequestLogReader(folder, fleet_state)
    assert _read(reader, fleet_state)["request_id"].to_list() == ["a", "b"]
    (folder / "2026-05-11T11.jsonl").write_text(_line(20, id="c"))
    assert _read(reader, fleet_state)["request_id"].to_list() == ["c"]
    missing = RequestLogReader(tmp_path / "nowhere", fleet_state).read([], [])
    assert missing[0].is_empty() and "not found" in missing[1]


def test_the_request_log_is_wired_into_source_selection(fleet_state, tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "requests.jsonl"
    log.write_text(_line(5, id="wired"))
    monkeypatch.setenv("OPTIINFRA_REQUEST_LOG_PATH", str(log))
    source = configured_metric_source(Settings.from_env(), fleet_state, step_s=60)
    assert isinstance(source, WithRequestLog) and isinstance(source.source, SandboxSource)
    monkeypatch.delenv("OPTIINFRA_REQUEST_LOG_PATH")
    assert isinstance(configured_metric_source(Settings.from_env(), fleet_state), SandboxSource)
