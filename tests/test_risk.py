"""Risk assessment: deterministic method, similar outcomes, and the LLM path through litellm's mock_response."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from optiinfra_assets.agents.risk import LlmRiskAnswer, assess_risk
from optiinfra_assets.catalog import default_config
from optiinfra_assets.models import (
    Estimate,
    Recommendation,
    Risk,
    SimilarOutcome,
    UnregisteredEvidence,
    Validation,
)
from resources.llm import LlmClient, LlmError, configured_llm
from resources.llm import parse_json_answer as parse

NOW = datetime(2026, 6, 1, tzinfo=UTC)
MODEL = "openai/gpt-4o-mini"  # never reached: every call below passes litellm a mock_response


def rec(score: float = 0.3) -> Recommendation:
    return Recommendation(
        id="rec-new",
        kind="spot_migration",
        customer_id="cust-a",
        deployment_id="dep-1",
        created_at=NOW,
        expires_at=NOW + timedelta(hours=24),
        current=default_config("p4de.24xlarge", 4),
        desired=default_config("p4de.24xlarge", 4).model_copy(
            update={"on_demand_replicas": 0, "spot_replicas": 4}
        ),
        estimate=Estimate(monthly_savings_usd=52_954.0),
        risk=Risk.LOW,
        risk_score=score,
        summary="Move 4 on-demand p4de.24xlarge replicas to spot to save $52,954/month.",
        evidence=UnregisteredEvidence(kind="spot_migration", interruption_band="<5%", replicas=4),
        validations=[Validation(agent="performance", passed=True, detail="p95 within SLO")],
    )


def outcome(rid: str, similarity: float, rolled_back: bool, quality: float = 0.0) -> SimilarOutcome:
    return SimilarOutcome(
        recommendation_id=rid,
        similarity=similarity,
        rolled_back=rolled_back,
        realized_monthly_savings_usd=0.0 if rolled_back else 40_000.0,
        quality_delta_pct=quality,
        summary=f"past {rid}",
    )


ROLLED_BACK = [outcome("rec-old1", 0.95, True), outcome("rec-old2", 0.9, True)]
SUCCEEDED = [outcome("rec-ok1", 0.9, False, -0.5), outcome("rec-ok2", 0.8, False, 0.2)]
GOOD_ANSWER = {
    "level": "medium",
    "score": 0.45,
    "note": "Two similar moves rolled back.",
    "factors": ["history"],
}


def test_deterministic_without_llm_uses_agent_score() -> None:
    a = assess_risk(rec(0.3), [], None)
    assert a.method == "deterministic (no LLM configured)"
    assert a.score == pytest.approx(0.3)
    assert a.level == Risk.LOW
    assert "no similar past outcomes" in a.note


def test_similar_rolled_back_outcomes_raise_risk() -> None:
    a = assess_risk(rec(0.3), ROLLED_BACK, None)
    assert a.score == pytest.approx(0.3 + 0.25 * 0.95 + 0.25 * 0.9)
    assert a.level == Risk.HIGH
    assert a.similar_outcomes == ROLLED_BACK
    assert "rec-old1 (similarity 0.95, rolled back" in a.note
    assert "2 rolled back" in a.note


def test_similar_successes_with_quality_kept_lower_risk() -> None:
    a = assess_risk(rec(0.4), SUCCEEDED, None)
    assert a.score < 0.4
    assert a.level == Risk.LOW
    assert "succeeded, quality kept" in a.note and "$40,000/month" in a.note


def test_kept_change_that_lost_quality_raises_risk() -> None:
    a = assess_risk(rec(0.4), [outcome("rec-q", 1.0, False, -7.0)], None)
    assert a.score > 0.4
    assert "quality fell" in a.note


def test_llm_valid_json() -> None:
    llm = LlmClient(MODEL, timeout_s=5)
    a = assess_risk(rec(), SUCCEEDED, llm, mock_response=json.dumps(GOOD_ANSWER))
    assert a.method.startswith(f"llm:{MODEL}")
    # The deterministic 0.13 raised by the LLM's 0.45, at most llm_max_risk_raise (0.25) higher.
    assert (a.level, a.score, a.note) == (Risk.MEDIUM, 0.38, GOOD_ANSWER["note"])
    assert "history" in a.factors
    assert a.similar_outcomes == SUCCEEDED


def test_llm_fenced_json() -> None:
    fenced = "```json\n" + json.dumps(GOOD_ANSWER) + "\n```"
    a = assess_risk(rec(), SUCCEEDED, LlmClient(MODEL), mock_response=fenced)
    assert a.method.startswith(f"llm:{MODEL}") and a.level == Risk.MEDIUM
    assert a.similar_outcomes == SUCCEEDED


def test_llm_malformed_answer_falls_back_labelled() -> None:
    a = assess_risk(rec(0.3), ROLLED_BACK, LlmClient(MODEL), mock_response="I think it is fine.")
    assert a.method.startswith("deterministic (LLM failed: answer is not JSON")
    assert a.score == pytest.approx(0.3 + 0.25 * 0.95 + 0.25 * 0.9)
    assert a.similar_outcomes == ROLLED_BACK


def test_llm_schema_mismatch_falls_back_labelled() -> None:
    wrong = json.dumps({"level": "catastrophic", "score": 5, "note": "x"})
    a = assess_risk(rec(0.3), [], LlmClient(MODEL), mock_response=wrong)
    assert a.method.startswith("deterministic (LLM failed: answer does not match LlmRiskAnswer")
    assert "level" in a.method and "score" in a.method
    assert a.level == Risk.LOW


def test_llm_api_error_falls_back_labelled() -> None:
    # litellm raises its real RateLimitError for this mock_response value.
    a = assess_risk(rec(0.3), [], LlmClient(MODEL), mock_response="litellm.RateLimitError")
    assert a.method.startswith("deterministic (LLM failed:")
    assert "RateLimitError" in a.method


def test_client_parses_and_reports_errors() -> None:
    client = LlmClient(MODEL)
    answer = client.complete_json("sys", "user", LlmRiskAnswer, mock_response=json.dumps(GOOD_ANSWER))
    assert answer.score == 0.45
    with pytest.raises(LlmError, match="not JSON"):
        parse("{nope", LlmRiskAnswer)
    with pytest.raises(LlmError, match="does not match"):
        parse("[]", LlmRiskAnswer)


def test_configured_llm() -> None:
    assert configured_llm("", 20.0) is None
    client = configured_llm(MODEL, 7.5)
    assert client is not None and client.model == MODEL and client.timeout_s == 7.5
