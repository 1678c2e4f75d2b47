"""The LLM's answer is untrusted input (issue 12, "The LLM"): it may explain and raise risk within a bound,
never lower it; level and score agree; answers are size-limited and parsed safely; the timeout is the
timeout. Every call goes through litellm's real code path: ``mock_response`` (and ``mock_delay``), or a
real OpenAI-compatible HTTP server on localhost that answers slowly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_risk import ROLLED_BACK, SUCCEEDED, rec

from optiinfra_assets.agents.risk import (
    NOTE_MAX_CHARS,
    LlmRiskAnswer,
    assess_risk,
    deterministic_assessment,
)
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Risk
from resources.llm import MAX_ANSWER_CHARS, LlmClient, LlmError

MODEL = "openai/gpt-4o-mini"  # never reached except at the local server below


@pytest.fixture(autouse=True)
def _litellm_imported() -> None:
    """Import litellm before any clock starts: its first import takes seconds and is not the call."""
    import litellm  # noqa: F401


def answer(level: str, score: float, note: str = "Similar moves rolled back.", **extra: object) -> str:
    return json.dumps({"level": level, "score": score, "note": note, "factors": ["history"], **extra})


def test_llm_cannot_lower_the_deterministic_risk() -> None:
    # 0.3 + two near-identical rollbacks is high (0.7625); the LLM says low 0.0: it stays high.
    floor = deterministic_assessment(rec(0.3), ROLLED_BACK, "deterministic")
    a = assess_risk(rec(0.3), ROLLED_BACK, LlmClient(MODEL), mock_response=answer("low", 0.0))
    assert a.method.startswith(f"llm:{MODEL}")
    assert a.score == pytest.approx(floor.score) == pytest.approx(0.7625)
    assert a.level is Risk.HIGH
    assert a.note == "Similar moves rolled back."
    assert "may not lower risk" in a.factors[0]


def test_llm_raises_risk_at_most_by_the_setting() -> None:
    settings = DecisionSettings(llm_max_risk_raise=0.2)
    floor = deterministic_assessment(rec(0.2), [], "deterministic", settings)
    assert floor.level is Risk.LOW
    a = assess_risk(rec(0.2), [], LlmClient(MODEL), settings=settings, mock_response=answer("high", 0.95))
    assert a.score == pytest.approx(0.4)
    assert a.level is Risk.MEDIUM  # the level is the bounded score's band, not the LLM's word
    assert "the most the LLM may add (0.2)" in a.factors[0]
    within = assess_risk(rec(0.2), [], LlmClient(MODEL), settings=settings, mock_response=answer("low", 0.3))
    assert within.score == pytest.approx(0.3) and within.level is Risk.LOW


def test_a_level_contradicting_its_score_falls_back() -> None:
    a = assess_risk(rec(0.3), SUCCEEDED, LlmClient(MODEL), mock_response=answer("low", 0.99))
    assert a.method.startswith("deterministic (LLM failed: answer does not match LlmRiskAnswer")
    assert "contradicts score 0.99, which is high" in a.method
    assert a.score == pytest.approx(deterministic_assessment(rec(0.3), SUCCEEDED, "d").score)


def test_bands_come_from_the_settings() -> None:
    settings = DecisionSettings(low_risk_below=0.1, high_risk_from=0.2)
    a = assess_risk(rec(0.05), [], LlmClient(MODEL), settings=settings, mock_response=answer("high", 0.25))
    assert a.method.startswith("llm:") and a.level is Risk.HIGH and a.score == pytest.approx(0.25)


def test_a_huge_answer_is_refused_before_parsing() -> None:
    huge = answer("medium", 0.5, note="x" * 2_000_000)
    a = assess_risk(rec(0.3), [], LlmClient(MODEL), mock_response=huge)
    assert a.method.startswith(f"deterministic (LLM failed: answer is {len(huge):,} characters, over the")
    assert len(a.note) < 2_000


def test_a_long_note_or_many_factors_do_not_fit() -> None:
    long_note = answer("medium", 0.5, note="y" * (NOTE_MAX_CHARS + 1))
    assert len(long_note) < MAX_ANSWER_CHARS
    a = assess_risk(rec(0.3), [], LlmClient(MODEL), mock_response=long_note)
    assert a.method.startswith("deterministic (LLM failed: answer does not match") and "note" in a.method
    many = json.dumps({"level": "medium", "score": 0.5, "note": "n", "factors": ["f"] * 500})
    b = assess_risk(rec(0.3), [], LlmClient(MODEL), mock_response=many)
    assert b.method.startswith("deterministic (LLM failed:") and "factors" in b.method


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_a_deeply_nested_answer_falls_back(depth: int) -> None:
    nested = '{"level": "low", "score": 0.1, "note": "n", "factors": ' + "[" * depth + "]" * depth + "}"
    a = assess_risk(rec(0.3), ROLLED_BACK, LlmClient(MODEL), mock_response=nested)
    assert a.method.startswith("deterministic (LLM failed: answer ")
    assert a.level is Risk.HIGH


def test_the_timeout_bounds_a_slow_answer() -> None:
    client = LlmClient(MODEL, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(LlmError, match="timed out after 1s"):
        client.complete_json(
            "s", "u", LlmRiskAnswer, mock_response=answer("low", 0.1), litellm_args={"mock_delay": 4}
        )
    assert time.monotonic() - started < 2.0
    a = assess_risk(rec(0.3), [], client, mock_response=answer("low", 0.1), litellm_args={"mock_delay": 4})
    assert a.method == "deterministic (LLM failed: openai/gpt-4o-mini timed out after 1s)"


class _SlowProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that takes longer than the client's timeout to answer."""

    requests: list[float] = []
    delay_s = 2.5

    def do_POST(self) -> None:
        self.requests.append(time.monotonic())
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay_s)
        body = json.dumps(
            {
                "id": "c",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}
                ],
            }
        ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up: expected
            pass

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def slow_provider() -> Iterator[str]:
    _SlowProvider.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowProvider)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_a_timeout_is_one_try_against_a_real_endpoint(slow_provider: str) -> None:
    client = LlmClient(MODEL, timeout_s=1)
    started = time.monotonic()
    with pytest.raises(LlmError, match="timed out after 1s"):
        client.complete_json(
            "s", "u", LlmRiskAnswer, litellm_args={"api_base": slow_provider, "api_key": "k"}
        )
    elapsed = time.monotonic() - started
    time.sleep(_SlowProvider.delay_s)  # a hidden retry would have reached the server by now
    assert elapsed < 2.0
    assert len(_SlowProvider.requests) == 1
