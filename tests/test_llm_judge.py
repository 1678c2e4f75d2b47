"""The LLM judge through litellm's real code path with ``mock_response``: structured verdicts, a content-hash
cache (in the state store too), a rate limit, and its disagreement with the offline scorer."""

from __future__ import annotations

import json

import pytest

from optiinfra_assets.agents.application.llm_judge import (
    Judged,
    LlmJudge,
    SourceStateCache,
    Unjudged,
    configured_judge,
)
from optiinfra_assets.agents.quality_scoring import score_response
from optiinfra_assets.config import Settings
from resources.llm import LlmClient

MODEL = "openai/gpt-4o-mini"  # never reached: every judge below answers through litellm's mock_response
CONTEXT = "The Orion X2 is a router made by Northwind Labs. It supports 64 connected devices."
GROUNDED = "The Orion X2 supports 64 connected devices."
INVENTED = "The Orion X2 supports 900 devices and was designed by Zephyr Dynamics in 1970."


def _answer(hallucination: float, toxicity: float = 0.0, quality: float = 0.9) -> str:
    return json.dumps(
        {
            "hallucination_score": hallucination,
            "toxicity_score": toxicity,
            "quality_score": quality,
            "reason": "r",
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_agreement_and_disagreement_with_the_offline_scorer_are_recorded() -> None:
    offline = score_response(INVENTED, CONTEXT)
    agrees = LlmJudge(LlmClient(MODEL), mock_response=_answer(0.95, quality=0.1)).judge(
        INVENTED, CONTEXT, None, offline
    )
    assert isinstance(agrees, Judged) and not agrees.disagrees and agrees.method == f"llm:{MODEL}"
    assert agrees.offline["hallucination_score"] == offline.hallucination_score
    grounded = score_response(GROUNDED, CONTEXT)
    differs = LlmJudge(LlmClient(MODEL), mock_response=_answer(0.8, quality=0.2)).judge(
        GROUNDED, CONTEXT, None, grounded
    )
    assert isinstance(differs, Judged) and differs.disagrees
    assert differs.difference["hallucination_score"] == pytest.approx(
        0.8 - grounded.hallucination_score, abs=1e-4
    )


def test_a_fenced_answer_parses_and_a_bad_one_leaves_the_request_unjudged() -> None:
    offline = score_response(GROUNDED, CONTEXT)
    fenced = "```json\n" + _answer(0.1) + "\n```"
    assert isinstance(
        LlmJudge(LlmClient(MODEL), mock_response=fenced).judge(GROUNDED, CONTEXT, None, offline), Judged
    )
    out_of_range = LlmJudge(LlmClient(MODEL), mock_response=_answer(1.7)).judge(
        GROUNDED, CONTEXT, None, offline
    )
    assert isinstance(out_of_range, Unjudged) and "hallucination_score" in out_of_range.reason
    prose = LlmJudge(LlmClient(MODEL), mock_response="Looks fine to me.").judge(
        GROUNDED, CONTEXT, None, offline
    )
    assert isinstance(prose, Unjudged) and "not JSON" in prose.reason


def test_cached_by_content_and_rate_limited_per_minute() -> None:
    clock = Clock()
    judge = LlmJudge(LlmClient(MODEL), mock_response=_answer(0.1), max_calls_per_minute=2, clock=clock)
    offline = score_response(GROUNDED, CONTEXT)
    first = judge.judge(GROUNDED, CONTEXT, None, offline)
    assert isinstance(first, Judged) and not first.cached
    again = judge.judge(GROUNDED, CONTEXT, None, offline)
    assert isinstance(again, Judged) and again.cached and again.key == first.key  # no call spent
    assert isinstance(judge.judge(GROUNDED + " Yes.", CONTEXT, None, offline), Judged)
    limited = judge.judge(GROUNDED + " Indeed.", CONTEXT, None, offline)
    assert isinstance(limited, Unjudged) and "rate limit" in limited.reason
    clock.now += 60.0
    assert isinstance(judge.judge(GROUNDED + " Indeed.", CONTEXT, None, offline), Judged)
    with pytest.raises(ValueError, match="max_calls_per_minute"):
        LlmJudge(LlmClient(MODEL), max_calls_per_minute=0)


def test_the_cache_in_the_state_store_outlives_the_judge(state) -> None:
    offline = score_response(INVENTED, CONTEXT)
    first = LlmJudge(LlmClient(MODEL), cache=SourceStateCache(state), mock_response=_answer(0.9, quality=0.1))
    assert isinstance(first.judge(INVENTED, CONTEXT, None, offline), Judged)
    # A new process whose model would answer differently still reads the stored verdict.
    later = LlmJudge(LlmClient(MODEL), cache=SourceStateCache(state), mock_response=_answer(0.0))
    verdict = later.judge(INVENTED, CONTEXT, None, offline)
    assert isinstance(verdict, Judged) and verdict.cached and verdict.verdict.hallucination_score == 0.9


def test_configured_only_when_a_model_is_set(monkeypatch) -> None:
    monkeypatch.delenv("OPTIINFRA_LLM_MODEL", raising=False)
    assert configured_judge(Settings.from_env()) is None
    monkeypatch.setenv("OPTIINFRA_LLM_MODEL", MODEL)
    judge = configured_judge(Settings.from_env(), max_calls_per_minute=5)
    assert judge is not None and judge.client.model == MODEL and judge.max_calls_per_minute == 5
