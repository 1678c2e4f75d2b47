"""The ingestion path: every rule, mixed batches, and accepted + quarantined == received, always."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from optiinfra_assets.ingest import ingest, validate_batch
from optiinfra_assets.metrics import SCHEMAS, Domain
from resources.metric_store import ChdbMetricStore

T0 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
FLEET = {"i-abc": ("c-1", "d-1"), "i-def": ("c-1", "d-2")}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rows(domain: Domain, n: int, **columns: list[object]) -> pl.DataFrame:
    """n valid rows on i-abc, one second apart; ``columns`` override whole columns (any dtype)."""
    schema = SCHEMAS[domain]
    data: dict[str, list[object]] = {
        "ts": [at(i) for i in range(n)],
        "customer_id": ["c-1"] * n,
        "deployment_id": ["d-1"] * n,
        "instance_id": ["i-abc"] * n,
        **{name: [f"{name}-{i}" for i in range(n)] for name in schema.labels},
        **{m.name: [0.5] * n for m in schema.measures},
    }
    data.update(columns)
    return pl.DataFrame(data, strict=False)


@pytest.fixture
def store(tmp_path: Path) -> ChdbMetricStore:
    s = ChdbMetricStore(tmp_path / "chdb")
    s.migrate()
    return s


def reasons(domain: Domain, frame: pl.DataFrame, watermarks: dict[str, datetime] | None = None) -> list[str]:
    good, bad = validate_batch(domain, frame, FLEET, watermarks or {})
    assert good.height + bad.height == frame.height
    return bad["reason"].to_list()


def test_valid_batch_passes_in_the_exact_schema() -> None:
    good, bad = validate_batch(Domain.PERFORMANCE, rows(Domain.PERFORMANCE, 4, extra=[1, 2, 3, 4]), FLEET, {})
    assert bad.is_empty() and good.height == 4
    assert good.schema == pl.Schema(SCHEMAS[Domain.PERFORMANCE].polars_schema)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (float("nan"), "ttft_ms: NaN"),
        (float("inf"), "ttft_ms: inf"),
        (None, "ttft_ms: null"),
        ("abc", "ttft_ms: not a number ('abc')"),
        (-3.2, "ttft_ms: negative (-3.2)"),
    ],
)
def test_measure_rules(value: object, reason: str) -> None:
    frame = rows(Domain.PERFORMANCE, 2, ttft_ms=[1.0, value])
    assert reasons(Domain.PERFORMANCE, frame) == [reason]


def test_range_rule_and_strings_that_cast() -> None:
    frame = rows(Domain.PERFORMANCE, 3, kv_cache_usage=["0.5", 1.7, "1"])
    assert reasons(Domain.PERFORMANCE, frame) == ["kv_cache_usage: out of range 1.7 > 1.0"]


def test_timestamp_rules() -> None:
    frame = rows(
        Domain.RESOURCE,
        4,
        ts=[at(0).isoformat(), "yesterday", None, at(3).strftime("%Y-%m-%d %H:%M:%S")],
    )
    assert reasons(Domain.RESOURCE, frame) == ["ts: not a timestamp ('yesterday')", "ts: null"]
    epoch_ms = rows(Domain.RESOURCE, 2, ts=[int(at(0).timestamp() * 1000), 5])
    assert [r.split(" (")[0] for r in reasons(Domain.RESOURCE, epoch_ms)] == ["ts: out of range"]


def test_fleet_rules() -> None:
    frame = rows(
        Domain.RESOURCE,
        4,
        instance_id=["i-abc", "i-zzz", "i-def", "i-abc"],
        customer_id=["c-1", "c-1", "c-1", "c-9"],
        deployment_id=["d-1", "d-1", "d-1", "d-1"],
    )
    assert reasons(Domain.RESOURCE, frame) == [
        "instance_id: unknown instance 'i-zzz'",
        "deployment_id: 'd-1' does not match the fleet ('d-2' for i-def)",
        "customer_id: 'c-9' does not match the fleet ('c-1' for i-abc)",
    ]


def test_order_rules_in_the_batch_and_against_the_watermark() -> None:
    frame = rows(Domain.RESOURCE, 4, ts=[at(5), at(1), at(5), at(6)])
    got = reasons(Domain.RESOURCE, frame)
    assert len(got) == 2
    assert got[0].startswith("ts: out of order (") and got[0].endswith(" for i-abc)")
    assert at(1).strftime("%H:%M:%S") in got[0] and at(5).strftime("%H:%M:%S") in got[0]
    assert got[1].startswith("ts: duplicate (i-abc ") and at(5).strftime("%H:%M:%S") in got[1]
    stored = reasons(Domain.RESOURCE, rows(Domain.RESOURCE, 3), watermarks={"i-abc": at(1)})
    assert [r.split(" (")[0] for r in stored] == ["ts: out of order", "ts: duplicate"]


def test_an_invalid_earlier_row_does_not_shadow_a_valid_one() -> None:
    frame = rows(Domain.RESOURCE, 2, ts=[at(5), at(5)], power_w=[float("nan"), 300.0])
    good, bad = validate_batch(Domain.RESOURCE, frame, FLEET, {})
    assert good["power_w"].to_list() == [300.0] and bad["reason"].to_list() == ["power_w: NaN"]


def test_quality_duplicates_are_by_request_id() -> None:
    frame = rows(Domain.QUALITY, 3, ts=[at(1)] * 3, request_id=["r-1", "r-2", "r-1"])
    assert reasons(Domain.QUALITY, frame) == ["request_id: duplicate ('r-1')"]


def test_missing_column_quarantines_the_whole_batch_with_raw_rows() -> None:
    frame = rows(Domain.PERFORMANCE, 3).drop("itl_ms")
    good, bad = validate_batch(Domain.PERFORMANCE, frame, FLEET, {})
    assert good.is_empty() and bad.height == 3
    assert set(bad["reason"]) == {"columns: missing 'itl_ms'"}
    assert json.loads(bad["raw"][0])["instance_id"] == "i-abc"


def test_raw_json_keeps_the_original_values() -> None:
    frame = rows(Domain.PERFORMANCE, 2, ttft_ms=[1.0, float("nan")], itl_ms=["2", "x"], extra=["e0", "e1"])
    _, bad = validate_batch(Domain.PERFORMANCE, frame, FLEET, {})
    raw = json.loads(bad["raw"][0])
    assert raw["ttft_ms"] == "NaN" and raw["itl_ms"] == "x" and raw["extra"] == "e1"


def test_ingest_lands_good_rows_and_quarantines_the_rest(store: ChdbMetricStore) -> None:
    frame = rows(Domain.PERFORMANCE, 6, ttft_ms=[1.0, float("nan"), 3.0, -1.0, 5.0, 6.0])
    report = ingest(store, Domain.PERFORMANCE, frame, FLEET)
    assert (report.received, report.accepted, report.quarantined) == (6, 4, 2)
    assert report.reasons == {"ttft_ms: NaN": 1, "ttft_ms: negative": 1}
    assert store.count("performance_metrics") == 4
    q = store.query_polars(
        "SELECT domain, reason, field, value, raw, batch_id, received_at FROM optiinfra.metric_quarantine "
        "ORDER BY reason"
    )
    assert q["reason"].to_list() == ["ttft_ms: NaN", "ttft_ms: negative (-1.0)"]
    assert set(q["batch_id"]) == {report.batch_id} and set(q["domain"]) == {"performance"}
    assert q["field"].to_list() == ["ttft_ms", "ttft_ms"] and q["value"].to_list() == ["NaN", "-1.0"]
    # The same batch again: the stored rows are re-collected (skipped), the malformed ones still fail.
    again = ingest(store, Domain.PERFORMANCE, frame, FLEET)
    assert (again.accepted, again.quarantined, again.already_stored) == (0, 2, 4)
    assert store.count("performance_metrics") == 4


def _malformed(rng: np.random.Generator, domain: Domain, n: int) -> pl.DataFrame:
    schema = SCHEMAS[domain]
    seconds = rng.integers(0, n, n)
    instances = np.array(["i-abc", "i-def", "i-zzz", None], dtype=object)
    junk = np.array([float("nan"), float("inf"), -1.0, 2.0, None, "abc", "0.25", 0.75, 150.0], dtype=object)
    columns: dict[str, list[object]] = {
        "ts": [
            at(int(s)).isoformat() if rng.random() > 0.1 else rng.choice(["nope", "", None]) for s in seconds
        ],
        "customer_id": rng.choice(
            np.array(["c-1", "c-2", None], dtype=object), n, p=[0.8, 0.1, 0.1]
        ).tolist(),
        "deployment_id": rng.choice(np.array(["d-1", "d-2"], dtype=object), n).tolist(),
        "instance_id": rng.choice(instances, n, p=[0.5, 0.3, 0.1, 0.1]).tolist(),
    }
    for name in schema.labels:
        columns[name] = rng.choice(np.array(["a", "b", None], dtype=object), n).tolist()
    for m in schema.measures:
        columns[m.name] = [v if rng.random() < 0.2 else float(rng.uniform(0, 1)) for v in rng.choice(junk, n)]
    frame = pl.DataFrame(columns, strict=False)
    if rng.random() < 0.1:
        frame = frame.drop(schema.columns[int(rng.integers(0, len(schema.columns)))])
    return frame


def test_conservation_on_random_malformed_batches(store: ChdbMetricStore) -> None:
    rng = np.random.default_rng(11)
    with store.session():
        for i in range(40):
            domain = list(Domain)[i % 4]
            frame = _malformed(rng, domain, int(rng.integers(1, 200)))
            report = ingest(store, domain, frame, FLEET)
            assert report.accepted + report.quarantined == report.received == frame.height
            assert sum(report.reasons.values()) == report.quarantined
        total = sum(store.count(s.table) for s in SCHEMAS.values()) + store.count("metric_quarantine")
    assert total > 0


def test_a_large_clean_batch_passes_whole() -> None:
    """200k clean rows of one instance: all accepted (speed is bench/ingest.py's business)."""
    n = 200_000
    frame = pl.DataFrame(
        {
            "ts": pl.datetime_range(at(0), at(n - 1), "1s", eager=True, time_unit="ms"),
            "customer_id": ["c-1"] * n,
            "deployment_id": ["d-1"] * n,
            "instance_id": ["i-abc"] * n,
            **{m.name: np.full(n, 0.5) for m in SCHEMAS[Domain.RESOURCE].measures},
        }
    )
    good, bad = validate_batch(Domain.RESOURCE, frame, FLEET, {}, now=at(n))
    assert good.height == n and bad.is_empty()
