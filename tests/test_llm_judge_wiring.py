"""The LLM judge where it is used: `optiinfra quality score` (a ``judge`` object beside the unchanged offline
scores) and the request ingestion (a bounded sample judged, cached in the state store, its disagreement on
the record). Every call goes through litellm's real code path with ``mock_response``; the fake below only
supplies that answer and counts the calls."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_quality_cli import GOOD

from optiinfra_assets.agents.application.llm_judge import (
    SCORES,
    JudgeSummary,
    RequestJudging,
    SourceStateCache,
    configured_judge,
)
from optiinfra_assets.assets.metrics import _judge_metadata
from optiinfra_assets.commands import quality
from optiinfra_assets.config import DecisionSettings, Settings
from optiinfra_assets.metrics import Domain
from optiinfra_assets.models import Fault, FaultKind
from optiinfra_assets.request_samples import ingest_requests
from optiinfra_assets.sandbox import generate, initial_fleet, request_samples
from resources.metric_store import REQUEST_SAMPLES_TABLE, ChdbMetricStore

MODEL = "openai/gpt-4o-mini"  # never reached: every call is answered by litellm's mock_response
SEED = 42
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
LINES = GOOD  # the CLI contract tests' lines: a supported answer, an unsupported one, an insult
# The judge calls every answer hallucinated and poor: it agrees on line 2 and disagrees on line "a".
VERDICT = {"hallucination_score": 0.9, "toxicity_score": 0.0, "quality_score": 0.2, "reason": "made up"}


class FakeProvider:
    """litellm.completion with its own ``mock_response`` set to ``answer``; counts the calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
        import litellm

        self.answer, self.calls, self._real = answer, 0, litellm.completion
        monkeypatch.setattr(litellm, "completion", self)

    def __call__(self, **call: Any) -> Any:
        self.calls += 1
        return self._real(**{**call, "mock_response": self.answer})


def _score(tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: Settings, *flags: str) -> list[dict]:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    parser = argparse.ArgumentParser(prog="optiinfra")
    quality.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["quality", "score", "--input", str(path), "--json", *flags])
    code = args.func(args, settings)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _settings(tmp_path: Path, model: str = MODEL, **decisions: Any) -> Settings:
    return Settings(home=tmp_path / "home", llm_model=model, decisions=DecisionSettings(**decisions))


def test_the_cli_adds_the_judge_and_keeps_the_offline_scores(tmp_path, capsys, monkeypatch) -> None:
    provider = FakeProvider(monkeypatch, json.dumps(VERDICT))
    offline = _score(tmp_path, capsys, _settings(tmp_path, model=""))
    assert provider.calls == 0 and all("judge" not in row for row in offline)
    judged = _score(tmp_path, capsys, _settings(tmp_path))
    assert provider.calls == len(LINES)
    for plain, row in zip(offline, judged, strict=True):
        assert {k: v for k, v in row.items() if k != "judge"} == plain  # the contract fields unchanged
        judge = row["judge"]
        assert judge["model"] == MODEL and judge["cached"] is False
        assert {k: judge[k] for k in SCORES} == {k: VERDICT[k] for k in SCORES}
        assert judge["difference"]["quality_score"] == pytest.approx(
            VERDICT["quality_score"] - plain["quality_score"], abs=1e-4
        )
    by_id = {row["id"]: row["judge"] for row in judged}
    assert by_id["a"]["disagrees"] is True  # grounded offline, "made up" to the judge
    assert by_id[2]["disagrees"] is False  # both call it hallucinated
    # --no-judge: exactly the offline output, no call.
    assert _score(tmp_path, capsys, _settings(tmp_path), "--no-judge") == offline
    assert provider.calls == len(LINES)


def test_a_second_run_reads_the_verdicts_from_the_state_store(tmp_path, capsys, monkeypatch) -> None:
    provider = FakeProvider(monkeypatch, json.dumps(VERDICT))
    first = _score(tmp_path, capsys, _settings(tmp_path))
    provider.answer = json.dumps({**VERDICT, "quality_score": 1.0})  # would differ if it were asked
    again = _score(tmp_path, capsys, _settings(tmp_path))
    assert provider.calls == len(LINES)  # no call the second time
    assert all(row["judge"]["cached"] for row in again)
    assert [r["judge"]["quality_score"] for r in again] == [r["judge"]["quality_score"] for r in first]


def test_the_rate_limit_leaves_requests_unjudged_with_the_reason(tmp_path, capsys, monkeypatch) -> None:
    provider = FakeProvider(monkeypatch, json.dumps(VERDICT))
    rows = _score(tmp_path, capsys, _settings(tmp_path, llm_judge_calls_per_minute=1))
    assert provider.calls == 1
    assert "unjudged" not in rows[0]["judge"] and rows[0]["judge"]["quality_score"] == 0.2
    for row in rows[1:]:
        assert row["judge"] == {"model": MODEL, "unjudged": "rate limit: 1 calls a minute spent"}
        assert 0.0 <= row["quality_score"] <= 1.0  # the offline scores stand


def test_a_provider_failure_leaves_requests_unjudged(tmp_path, capsys, monkeypatch) -> None:
    FakeProvider(monkeypatch, "litellm.RateLimitError")  # litellm raises its real exception for this
    rows = _score(tmp_path, capsys, _settings(tmp_path))
    for row in rows:
        assert "RateLimitError" in row["judge"]["unjudged"] and "quality_score" not in row["judge"]
    assert [r["quality_score"] for r in rows] == [
        r["quality_score"] for r in _score(tmp_path, capsys, _settings(tmp_path, model=""))
    ]


# ---- the ingestion path -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    metric_store = ChdbMetricStore(tmp_path / "chdb")
    metric_store.migrate()
    yield metric_store
    metric_store.close()


def _requests(minutes: int = 3) -> tuple[pl.DataFrame, dict[str, tuple[str, str]]]:
    """The sandbox's sampled requests with their scores, one deployment hallucinating."""
    customers, deployments, instances = initial_fleet(SEED, NOW - timedelta(days=1))
    fault = Fault(
        deployment_id="globex-rag-qwen",
        kind=FaultKind.QUALITY_DEGRADATION,
        params={"drop_pct": 30, "scope": "all", "mode": "hallucination"},
        created_at=NOW,
    )
    window = (NOW, NOW + timedelta(minutes=minutes))
    texts = request_samples(customers, deployments, instances, [fault], *window, seed=SEED)
    scores = generate(customers, deployments, instances, [fault], *window, seed=SEED)[Domain.QUALITY]
    frame = texts.join(scores.select("request_id", *SCORES), on="request_id")
    known = {i.id: (d.customer_id, d.id) for d in deployments for i in instances if i.deployment_id == d.id}
    return frame, known


def test_ingestion_judges_a_bounded_sample_and_records_the_disagreement(
    store, state, monkeypatch, tmp_path
) -> None:
    provider = FakeProvider(monkeypatch, json.dumps(VERDICT))
    frame, known = _requests()
    limit = 12
    judge = configured_judge(_settings(tmp_path), state)
    assert judge is not None and isinstance(judge.cache, SourceStateCache)
    judging = RequestJudging(judge, limit)
    report = ingest_requests(store, frame, known, judging=judging)
    summary = judging.run()
    assert summary.judged == limit and summary.offered == report.accepted and not summary.unjudged
    # The sandbox repeats some texts (templated answers): a repeat within the run is read from the cache.
    assert provider.calls + summary.cached == limit and provider.calls > limit // 2
    # Each deployment's newest first, in turn: the budget spreads over the fleet.
    chosen = judging.chosen()
    deployments = frame["deployment_id"].unique().to_list()
    assert len({r["deployment_id"] for r in chosen}) == min(limit, len(deployments))
    # The disagreement is the judge's scores against the stored ones (the scores of record).
    with store.session():
        stored = store.query_polars(
            f"SELECT request_id, {', '.join(SCORES)} FROM {store.database}.{REQUEST_SAMPLES_TABLE}"
        )
    by_id = {row["request_id"]: row for row in stored.iter_rows(named=True)}
    for name in SCORES:
        expected = sum(abs(VERDICT[name] - by_id[r["request_id"]][name]) for r in chosen) / limit
        assert summary.mean_abs_difference[name] == pytest.approx(expected, abs=1e-3)
    disagreeing = sum(any(abs(VERDICT[n] - by_id[r["request_id"]][n]) > 0.3 for n in SCORES) for r in chosen)
    assert summary.disagreeing == disagreeing > 0
    worst = summary.most_disagreeing
    assert len(worst) == 5 and worst[0]["request_id"] in by_id and worst[0]["reason"] == "made up"
    assert worst[0]["quality_score_judge"] == VERDICT["quality_score"]
    # A later run over the same requests reads every verdict from the state store: no call.
    again = RequestJudging(configured_judge(_settings(tmp_path), state), limit)
    again.offer(chosen, len(chosen))
    calls = provider.calls
    assert again.run().cached == limit and provider.calls == calls


def test_ingestion_judging_within_the_rate_limit_and_after_a_failure(
    store, state, monkeypatch, tmp_path
) -> None:
    provider = FakeProvider(monkeypatch, json.dumps(VERDICT))
    frame, known = _requests(minutes=1)
    judging = RequestJudging(configured_judge(_settings(tmp_path, llm_judge_calls_per_minute=3), state), 8)
    ingest_requests(store, frame, known, judging=judging)
    summary = judging.run()
    # Three calls, then the rate limit; a request whose text repeats one already judged is answered from
    # the cache without a call (the sandbox's texts depend on the hour, so some hours have a repeat).
    assert provider.calls == summary.judged - summary.cached == 3
    assert summary.unjudged == {"rate limit: 3 calls a minute spent": 8 - summary.judged}
    provider.answer = "litellm.RateLimitError"  # litellm raises its real exception for this
    failing = RequestJudging(configured_judge(_settings(tmp_path), None), 4)
    failing.offer(judging.chosen()[3:7], 4)  # not judged before, so not cached
    failed = failing.run()
    assert failed.judged == 0 and sum(failed.unjudged.values()) == 4
    assert all("RateLimitError" in reason for reason in failed.unjudged)


def test_the_quality_materialization_shows_the_judge() -> None:
    assert _judge_metadata(None) == {"llm_judge": "off: no LLM model configured (OPTIINFRA_LLM_MODEL)"}
    summary = JudgeSummary(
        model=MODEL,
        offered=40,
        judged=2,
        cached=1,
        disagreeing=1,
        unjudged={"rate limit: 30 calls a minute spent": 3},
        mean_abs_difference=dict.fromkeys(SCORES, 0.25),
        most_disagreeing=[{"request_id": "q-1", "deployment_id": "acme-chat", "disagrees": True}],
    )
    shown = _judge_metadata(summary)
    assert shown["llm_judge_judged"] == 2 and shown["llm_judge_disagreeing"] == 1
    assert shown["llm_judge_mean_abs_diff_quality_score"] == 0.25
    assert shown["llm_judge_most_disagreeing"].value.records[0].data["request_id"] == "q-1"
