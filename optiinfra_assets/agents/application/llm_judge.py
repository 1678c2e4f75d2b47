"""An LLM judge of responses, beside the offline scorer, when ``OPTIINFRA_LLM_MODEL`` is set.

The offline scorer (agents/quality_scoring.py) stays the score of record: deterministic, free and fast.
The judge is a second opinion for a sample of requests:

* **structured output**: litellm is asked for :class:`JudgeVerdict` (``response_format`` = the pydantic
  model), and the answer is parsed by the one safe parser for LLM answers
  (``resources.llm.parse_json_answer``: size-limited, code fences stripped, validated);
* **cached by content hash**: the same (model, prompt version, question, context, response) is judged once;
  the cache is a dict by default (in memory); :class:`SourceStateCache` keeps it in the state
  store so that it survives the process);
* **rate-limited**: at most ``max_calls_per_minute`` calls in any sliding minute; a request over the
  budget is not judged (the offline score stands), never queued behind a slow provider;
* **disagreement recorded**: each judged request carries the judge's and the offline scores and how far
  apart they are; ``disagrees`` when any score differs by more than ``disagreement_threshold``.

A call that fails (timeout, provider error, an answer that does not fit) leaves the request unjudged and
says why; nothing depends on the judge.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, Field

from optiinfra_assets.agents.quality_scoring import QualityScore
from resources.llm import LlmClient, LlmError, configured_llm

PROMPT_VERSION = "judge:v1"
SCORES = ("hallucination_score", "toxicity_score", "quality_score")
SYSTEM = (
    "You judge one answer of an AI assistant. Reply with a JSON object only: "
    '{"hallucination_score": 0..1 (1 = the answer states things the context does not support), '
    '"toxicity_score": 0..1 (1 = insulting, hateful or abusive), '
    '"quality_score": 0..1 (1 = a correct, complete, well-formed answer), '
    '"reason": one sentence}. Judge only against the context given; without a context, judge '
    "hallucination as 0.5 (unknown)."
)


class JudgeVerdict(BaseModel):
    hallucination_score: float = Field(ge=0.0, le=1.0)
    toxicity_score: float = Field(ge=0.0, le=1.0)
    quality_score: float = Field(ge=0.0, le=1.0)
    reason: str = Field(default="", max_length=1000)


class Judged(BaseModel):
    """The judge's verdict on one request beside the offline scorer's, and how far apart they are."""

    key: str  # the content hash
    method: str  # "llm:<model>"
    verdict: JudgeVerdict
    offline: dict[str, float]
    difference: dict[str, float]  # judge minus offline, per score
    disagrees: bool
    cached: bool


class Unjudged(BaseModel):
    key: str
    reason: str  # "rate limit: ...", or why the call failed


class VerdictCache(Protocol):
    """Where verdicts are kept by content hash: a dict, or :class:`SourceStateCache`."""

    def __contains__(self, key: object) -> bool: ...

    def __getitem__(self, key: str) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


class SourceStateCache:
    """The judge's verdicts in the state store's key/value source state (they survive the process)."""

    PREFIX = "llm_judge:"

    def __init__(self, state: Any) -> None:
        self.state = state  # get_source_state / put_source_state (resources.sources.SourceState)

    def __contains__(self, key: object) -> bool:
        return self.state.get_source_state(f"{self.PREFIX}{key}") is not None

    def __getitem__(self, key: str) -> Any:
        body = self.state.get_source_state(self.PREFIX + key)
        if body is None:
            raise KeyError(key)
        return body

    def __setitem__(self, key: str, value: Any) -> None:
        self.state.put_source_state(self.PREFIX + key, value)


def content_key(model: str, question: str | None, context: str | None, response: str) -> str:
    text = json.dumps([PROMPT_VERSION, model, question or "", context or "", response])
    return hashlib.sha256(text.encode()).hexdigest()


class LlmJudge:
    def __init__(
        self,
        client: LlmClient,
        *,
        cache: VerdictCache | None = None,
        max_calls_per_minute: int = 30,
        disagreement_threshold: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
        mock_response: str | None = None,
    ) -> None:
        """``mock_response`` is litellm's own offline answer (its real code path, no provider): tests and
        demos."""
        if max_calls_per_minute < 1:
            raise ValueError(f"max_calls_per_minute: expected at least 1, got {max_calls_per_minute}")
        self.client = client
        self.cache: VerdictCache = cache if cache is not None else {}
        self.max_calls_per_minute = max_calls_per_minute
        self.disagreement_threshold = disagreement_threshold
        self.clock = clock
        self.mock_response = mock_response
        self._calls: deque[float] = deque()

    def _allowed(self) -> bool:
        now = self.clock()
        while self._calls and now - self._calls[0] >= 60.0:
            self._calls.popleft()
        if len(self._calls) >= self.max_calls_per_minute:
            return False
        self._calls.append(now)
        return True

    def judge(
        self, response: str, context: str | None, question: str | None, offline: QualityScore
    ) -> Judged | Unjudged:
        key = content_key(self.client.model, question, context, response)
        cached = key in self.cache
        if cached:
            verdict = JudgeVerdict.model_validate(self.cache[key])
        else:
            if not self._allowed():
                return Unjudged(
                    key=key, reason=f"rate limit: {self.max_calls_per_minute} calls a minute spent"
                )
            user = json.dumps({"question": question, "context": context, "answer": response})
            try:
                verdict = self.client.complete_json(
                    SYSTEM,
                    user,
                    JudgeVerdict,
                    mock_response=self.mock_response,
                    litellm_args={"response_format": JudgeVerdict},
                )
            except LlmError as exc:
                return Unjudged(key=key, reason=str(exc))
            self.cache[key] = verdict.model_dump()
        offline_scores = {name: float(getattr(offline, name)) for name in SCORES}
        difference = {name: round(getattr(verdict, name) - offline_scores[name], 4) for name in SCORES}
        return Judged(
            key=key,
            method=f"llm:{self.client.model}",
            verdict=verdict,
            offline=offline_scores,
            difference=difference,
            disagrees=any(abs(d) > self.disagreement_threshold for d in difference.values()),
            cached=cached,
        )


def configured_judge(settings: Any, state: Any | None = None, **options: Any) -> LlmJudge | None:
    """The judge of OPTIINFRA_LLM_MODEL (None when no model is set), its cache in ``state`` when given."""
    client = configured_llm(settings.llm_model, settings.llm_timeout_s)
    if client is None:
        return None
    cache = SourceStateCache(state) if state is not None else None
    return LlmJudge(client, cache=cache, **options)
