"""`optiinfra collect --once --json`: one collection per process against real expositions over HTTP. The
second process rates against the scrape the first kept in the state store (SQLite or PostgreSQL)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_sources import ExpositionServer, small_fleet

from optiinfra_assets.cli import main
from optiinfra_assets.collection import collect_metrics
from optiinfra_assets.commands.collect import collection_json
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.snapshot import FleetSnapshot
from resources.metric_store import ChdbMetricStore
from resources.sources import SourceBatch, empty_frames
from resources.state_store import StateStore

ROOT = Path(__file__).resolve().parents[1]


def optiinfra(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "optiinfra_assets.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def collect_json(env: dict[str, str]) -> dict[str, Any]:
    done = optiinfra(env, "collect", "--once", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """This machine's environment without any OPTIINFRA_* setting of its own, state under tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OPTIINFRA_")}
    return {**clean, "OPTIINFRA_HOME": str(tmp_path / "home")}


def seeded_fleet(state_url: str) -> FleetSnapshot:
    fleet = small_fleet()
    state = StateStore(state_url)
    state.migrate()
    state.upsert_customer(fleet.customers[0])
    state.upsert_deployment(fleet.deployments[0])
    state.add_instances(fleet.instances)
    state.dispose()
    return fleet


def test_two_collections_in_two_processes_store_rated_rows(
    env: dict[str, str], state_url: str, tmp_path: Path
) -> None:
    known = seeded_fleet(state_url).instances[0]
    with ExpositionServer() as server:
        env |= {
            "OPTIINFRA_DATABASE_URL": state_url,
            "OPTIINFRA_METRICS_SOURCE": "prometheus",
            "OPTIINFRA_PROMETHEUS_TARGETS": f"{known.id}={server.url}/v1dp,"
            f"i-own={server.url}/tgi,i-idle={server.url}/idle",
        }
        first = collect_json(env)
        second = collect_json(env)

    assert first["stored"]["performance"] == 0
    assert "rates start with the next collection" in first["statuses"][0]
    assert second["statuses"] == ["ok"]
    # No per-GPU rows from a vLLM/TGI scrape (gpu: 0), and that is no error.
    assert second["stored"] == {"cost": 0, "performance": 3, "resource": 0, "quality": 0, "gpu": 0}
    assert second["quarantined"]["performance"] == {"rows": 0, "reasons": {}, "examples": []}
    assert [(o["instance_id"], o["source"]) for o in second["observed_instances"]] == [
        ("i-idle", "prometheus"),
        ("i-own", "prometheus"),
    ]

    table = SCHEMAS[Domain.PERFORMANCE].table
    stored = ChdbMetricStore(tmp_path / "home" / "chdb").query_polars(f"SELECT * FROM optiinfra.{table}")
    rows = {r["instance_id"]: r for r in stored.iter_rows(named=True)}
    vllm, tgi, idle = rows[known.id], rows["i-own"], rows["i-idle"]
    assert (vllm["customer_id"], vllm["deployment_id"]) == ("acme", known.deployment_id)
    assert vllm["kv_cache_usage"] == pytest.approx(0.6) and vllm["queue_length"] == 5.0
    # Rates over the wall-clock time between the processes: 16 completed requests and 4096 tokens a round.
    assert vllm["requests_per_s"] > 0 and vllm["tokens_per_s"] == pytest.approx(256 * vllm["requests_per_s"])
    assert vllm["ttft_ms"] == pytest.approx(100.0) and vllm["latency_p95_ms"] == pytest.approx(9500.0)
    assert (tgi["customer_id"], tgi["deployment_id"]) == ("unmanaged", "unmanaged:i-own")
    assert tgi["itl_ms"] == pytest.approx(10.9) and math.isnan(tgi["kv_cache_usage"])
    assert idle["requests_per_s"] == 0.0 and math.isnan(idle["latency_p50_ms"])


def test_a_bad_source_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_METRICS_SOURCE", "prometheus")
    monkeypatch.setenv("OPTIINFRA_PROMETHEUS_TARGETS", "http://h:8000/metrics")
    assert main(["collect", "--once", "--json"]) == 2
    assert "OPTIINFRA_PROMETHEUS_TARGETS" in capsys.readouterr().err
    assert not (tmp_path / "home" / "chdb").exists()  # refused before any store was opened


class _BrokenExporter:
    """A source whose server exports a KV usage over 1 for one of its two rows."""

    name = "test"
    replays_history = False
    may_omit_measures = True

    def __init__(self, instance_id: str, deployment_id: str) -> None:
        self.keys = {"customer_id": "acme", "deployment_id": deployment_id, "instance_id": instance_id}

    def collect(self, fleet: FleetSnapshot, start: datetime, end: datetime) -> SourceBatch:
        frames = empty_frames()
        rows = [{"ts": end, **self.keys, "kv_cache_usage": kv, "queue_length": 1.0} for kv in (0.5, 1.7)]
        rows[1]["ts"] = end.replace(microsecond=1000)
        frames[Domain.PERFORMANCE] = pl.DataFrame(rows, schema=SCHEMAS[Domain.PERFORMANCE].polars_schema)
        return SourceBatch(frames, "ok")


def test_the_summary_names_what_was_quarantined_and_why(state: StateStore, tmp_path: Path) -> None:
    fleet = small_fleet()
    state.upsert_customer(fleet.customers[0])
    state.upsert_deployment(fleet.deployments[0])
    state.add_instances(fleet.instances)
    store = ChdbMetricStore(tmp_path / "chdb")
    store.migrate()
    source = _BrokenExporter(fleet.instances[0].id, fleet.deployments[0].id)
    now = datetime.now(UTC).replace(microsecond=0)
    report = collect_metrics(state, store, lambda _: source, now, backfill_days=1, backfill_step_s=60)
    summary = collection_json("test", report, store, state)
    assert summary["stored"]["performance"] == 1
    assert summary["quarantined"]["performance"] == {
        "rows": 1,
        "reasons": {"kv_cache_usage: out of range": 1},
        "examples": ["kv_cache_usage: out of range 1.7 > 1.0"],
    }
    json.dumps(summary)  # all of it is JSON
