"""Requests as text: the sandbox's corpus, degradation that shows in the text, and the ingestion of
sampled requests (scores as quality rows, text beside them) on a real chdb store."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from workflow_fixtures import run_rollout

from optiinfra_assets.agents.quality_scoring import score_response
from optiinfra_assets.metrics import SCHEMAS, Domain
from optiinfra_assets.models import ExecutionStatus, Fault, FaultKind
from optiinfra_assets.request_samples import ingest_requests, load_worst
from optiinfra_assets.request_text import (
    ITEMS_PER_KIND,
    DegradationMode,
    RequestKind,
    degraded_share,
    relative_quality,
    render,
)
from optiinfra_assets.sandbox import REQUEST_KINDS, generate, initial_faults, initial_fleet, request_samples
from optiinfra_assets.workflow import run_analysis_pass
from resources.metric_store import QUARANTINE_TABLE, REQUEST_SAMPLES_TABLE, ChdbMetricStore

SEED = 42
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def _scored(kind: RequestKind, item: int, mode: DegradationMode):
    text = render(kind, item, mode)
    clean = render(kind, item, DegradationMode.CLEAN)
    assert text.prompt == clean.prompt and text.context == clean.context  # only the answer degrades
    return score_response(text.response, text.context, text.prompt)


@pytest.mark.parametrize("kind", list(RequestKind))
def test_each_degradation_shows_in_the_text_itself(kind: RequestKind) -> None:
    """The scorer reads only the text; each mode must move the score it is about, on every item."""
    for item in range(ITEMS_PER_KIND):
        assert render(kind, item, DegradationMode.CLEAN) == render(kind, item, DegradationMode.CLEAN)
        good = _scored(kind, item, DegradationMode.CLEAN)
        assert good.quality_score >= 0.95 and good.hallucination_score < 0.05, (kind, item, good)
        assert good.flags.format_ok and not good.flags.refusal and not good.flags.truncated
        assert _scored(kind, item, DegradationMode.HALLUCINATION).hallucination_score > 0.5
        assert _scored(kind, item, DegradationMode.TOXICITY).toxicity_score > 0.4
        assert _scored(kind, item, DegradationMode.TRUNCATION).flags.truncated
        assert _scored(kind, item, DegradationMode.REFUSAL).flags.refusal
        assert not _scored(kind, item, DegradationMode.FORMAT).flags.format_ok
        for mode in DegradationMode:
            if mode != DegradationMode.CLEAN:
                assert _scored(kind, item, mode).quality_score < good.quality_score - 0.3, (kind, item, mode)


def test_degraded_share_makes_the_mean_drop_what_the_fault_says() -> None:
    for kind in RequestKind:
        for mode in (DegradationMode.HALLUCINATION, DegradationMode.TRUNCATION):
            share = degraded_share(kind, mode, 12)
            assert 0 < share < 1
            assert share * (1 - relative_quality(kind, mode)) == pytest.approx(0.12)
    assert degraded_share(RequestKind.RAG, DegradationMode.HALLUCINATION, 0) == 0


@pytest.fixture
def fleet():
    return initial_fleet(SEED, NOW - timedelta(days=1))


def _fault(deployment_id: str, mode: str, drop_pct: float, at: datetime) -> Fault:
    params = {"drop_pct": drop_pct, "scope": "all", "mode": mode}
    return Fault(
        deployment_id=deployment_id, kind=FaultKind.QUALITY_DEGRADATION, params=params, created_at=at
    )


def test_a_toxicity_fault_shows_as_toxic_responses_and_only_after_it_started(fleet) -> None:
    customers, deployments, instances = fleet
    dep = "acme-chat-8b"
    fault = _fault(dep, "toxicity", 15, NOW + timedelta(minutes=30))
    window = (NOW, NOW + timedelta(hours=1))
    q = generate(customers, deployments, instances, [fault], *window, seed=SEED)[Domain.QUALITY]
    texts = request_samples(customers, deployments, instances, [fault], *window, seed=SEED)
    assert texts["request_id"].to_list() == q["request_id"].to_list()  # the same sampled requests
    mine = q.filter(pl.col("deployment_id") == dep)
    before = mine.filter(pl.col("ts") < fault.created_at)
    after = mine.filter(pl.col("ts") >= fault.created_at)
    assert before["toxicity_score"].max() == 0.0
    toxic_share = (after["toxicity_score"] > 0.4).mean()
    assert 0.05 < toxic_share < 0.4  # the share that makes quality drop ~15%
    assert after["quality_score"].mean() < 0.92 * before["quality_score"].mean()
    others = q.filter(pl.col("deployment_id") != dep)
    assert others["toxicity_score"].max() == 0.0
    # The scores are the scorer's verdict on the text it emits.
    joined = texts.join(q, on="request_id").filter(pl.col("toxicity_score") > 0).head(5)
    assert joined.height == 5
    for row in joined.iter_rows(named=True):
        verdict = score_response(row["response"], row["context"], row["prompt"])
        assert verdict.toxicity_score == row["toxicity_score"]
        assert verdict.hallucination_score == row["hallucination_score"]


def test_each_customer_serves_its_kind_of_request(fleet) -> None:
    customers, deployments, instances = fleet
    texts = request_samples(customers, deployments, instances, [], NOW, NOW + timedelta(minutes=2), seed=SEED)
    code = texts.filter(pl.col("customer_id") == "initech")
    assert REQUEST_KINDS["initech"] == RequestKind.CODE and code.height
    assert code["response"].str.contains("```python").all()
    rag = texts.filter(pl.col("customer_id") == "globex")
    assert rag["context"].str.starts_with("[1]").all()


@pytest.fixture
def store(tmp_path: Path):
    metric_store = ChdbMetricStore(tmp_path / "chdb")
    metric_store.migrate()
    yield metric_store
    metric_store.close()


def test_ingest_requests_stores_scores_and_text_and_quarantines_with_the_text(fleet, store) -> None:
    customers, deployments, instances = fleet
    dep = "globex-rag-qwen"
    fault = _fault(dep, "hallucination", 20, NOW)
    texts = request_samples(
        customers, deployments, instances, [fault], NOW, NOW + timedelta(minutes=5), seed=SEED
    )
    scored = generate(customers, deployments, instances, [fault], NOW, NOW + timedelta(minutes=5), seed=SEED)[
        Domain.QUALITY
    ]
    with_scores = texts.join(scored.select("request_id", "quality_score"), on="request_id")
    # The first request brings no score (as a real log would not): it is scored from its text.
    first = with_scores.row(0, named=True)
    with_scores = with_scores.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(None)
        .otherwise(pl.col("quality_score"))
        .alias("quality_score")
    )
    known = {i.id: (d.customer_id, d.id) for d in deployments for i in instances if i.deployment_id == d.id}
    # One row from an instance the fleet does not know: quarantined, its text in the raw row.
    stranger = with_scores.head(1).with_columns(
        pl.lit("i-stranger").alias("instance_id"), pl.lit("q-stranger").alias("request_id")
    )
    batch = pl.concat([with_scores, stranger])
    report = ingest_requests(store, batch, known)
    assert (report.received, report.accepted, report.quarantined) == (batch.height, with_scores.height, 1)
    assert report.reasons == {"instance_id: unknown instance": 1}
    with store.session():
        quality = store.query_polars(f"SELECT * FROM {store.database}.{SCHEMAS[Domain.QUALITY].table}")
        stored = store.query_polars(f"SELECT * FROM {store.database}.{REQUEST_SAMPLES_TABLE}")
        quarantined = store.query_polars(f"SELECT raw FROM {store.database}.{QUARANTINE_TABLE}")
        worst = load_worst(store, NOW, per_deployment=2).filter(
            (pl.col("deployment_id") == dep) & (pl.col("worst_by") == "hallucination_score")
        )
    assert quality.height == stored.height == with_scores.height
    # Brought scores are kept (the sandbox's quality includes the engine); the missing ones are scored.
    by_id = dict(zip(stored["request_id"], stored["quality_score"], strict=True))
    expected = dict(zip(with_scores["request_id"], with_scores["quality_score"], strict=True))
    expected[first["request_id"]] = score_response(
        first["response"], first["context"], first["prompt"]
    ).quality_score
    assert expected[first["request_id"]] != first["quality_score"]
    assert by_id == pytest.approx(expected)
    assert stored.filter(pl.col("deployment_id") == dep)["hallucination_score"].max() > 0.5
    raw = json.loads(quarantined["raw"][0])
    assert raw["instance_id"] == "i-stranger" and raw["response"] == stranger["response"][0]
    assert worst.height == 2 and (worst["hallucination_score"] > 0.5).all()
    assert worst["response"].str.contains("Actually").all()
    with pytest.raises(ValueError, match="response"):
        ingest_requests(store, batch.drop("response"), known)


def test_the_sandbox_seeds_its_degraded_deployments(fleet) -> None:
    customers, deployments, _ = fleet
    faults = initial_faults(NOW)
    ids = {d.id for d in deployments}
    assert {f.deployment_id for f in faults} <= ids
    assert {f.params["mode"] for f in faults} >= {"hallucination", "toxicity"}
    assert all(f.created_at == NOW and f.kind == FaultKind.QUALITY_DEGRADATION for f in faults)
    vandelay = next(c for c in customers if c.id == "vandelay")
    assert vandelay.auto_approve_max_risk is not None


def test_the_degraded_spot_candidate_is_approved_by_policy_and_rolled_back_by_the_ab_test(svc, clock) -> None:
    """make run's A/B rollback, without a click: vandelay's policy approves the spot migration, its spot
    replicas serve the broken build, and the first look of the A/B test already sees it."""
    report = run_analysis_pass(svc, clock())  # every capability, as make run has them
    spot = report.capabilities["spot_migration"]
    (rec,) = [r for r in spot.created if r.deployment_id == "vandelay-rag-llama8b"]
    assert rec.id in spot.auto_approved
    execution = run_rollout(svc, clock, rec.id)
    assert execution.status == ExecutionStatus.ROLLED_BACK
    check = execution.stages[-1].checks[0]
    assert check.verdict == "degraded" and check.test is not None and "welch" in check.test
    assert check.p_value is not None and check.samples["canary"] >= 60
    # Remembered: the next proposal is riskier, over the policy's low-risk limit, and waits for a person.
    clock.advance(900)
    again = run_analysis_pass(svc, clock()).capabilities["spot_migration"]
    (retry,) = [r for r in again.created if r.deployment_id == "vandelay-rag-llama8b"]
    assert retry.risk_score > rec.risk_score and retry.id not in again.auto_approved
