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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, Field

from optiinfra_assets.agents.quality_scoring import QualityScore
from optiinfra_assets.config import DecisionSettings
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
        self,
        response: str,
        context: str | None,
        question: str | None,
        offline: QualityScore | Mapping[str, float],
    ) -> Judged | Unjudged:
        """The judge's verdict beside ``offline`` (the offline scorer's verdict, or the three scores of
        record of a stored request, which may include more than the text: the sandbox's engine factor)."""
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
        offline_scores = {
            name: float(offline[name] if isinstance(offline, Mapping) else getattr(offline, name))
            for name in SCORES
        }
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
    return judge_of(
        configured_llm(settings.llm_model, settings.llm_timeout_s), settings.decisions, state, **options
    )


def judge_of(
    client: LlmClient | None, decisions: DecisionSettings, state: Any | None = None, **options: Any
) -> LlmJudge | None:
    """A judge asking ``client`` (None: no judge), rate-limited and thresholded by ``decisions`` unless
    ``options`` say otherwise, its cache in ``state``'s source state when given."""
    if client is None:
        return None
    options = {
        "max_calls_per_minute": decisions.llm_judge_calls_per_minute,
        "disagreement_threshold": decisions.llm_judge_disagreement,
        **options,
    }
    cache = SourceStateCache(state) if state is not None else None
    return LlmJudge(client, cache=cache, **options)


def verdict_json(outcome: Judged | Unjudged, model: str) -> dict[str, Any]:
    """What a person reads of one request's judgement: the judge's scores, whether it came from the cache,
    whether and by how much it disagrees with the offline scorer; or why the request was not judged."""
    if isinstance(outcome, Unjudged):
        return {"model": model, "unjudged": outcome.reason}
    return {
        **outcome.verdict.model_dump(),
        "model": model,
        "cached": outcome.cached,
        "disagrees": outcome.disagrees,
        "difference": outcome.difference,  # judge minus offline, per score
    }


# ---- a bounded sample of ingested requests ---------------------------------------------------------


class JudgedRequest(BaseModel):
    request_id: str
    deployment_id: str
    outcome: Judged | Unjudged


class JudgeSummary(BaseModel):
    """One ingestion's judging: what an operator reads on the quality asset's materialization."""

    model: str
    offered: int  # requests ingested with text that could have been judged
    judged: int  # with a verdict (fresh or from the cache)
    cached: int
    disagreeing: int
    unjudged: dict[str, int]  # reason -> requests (rate limit, provider failure, a bad answer)
    mean_abs_difference: dict[str, float]  # per score, over the judged requests
    most_disagreeing: list[dict[str, Any]]  # the requests furthest apart, worst first


class RequestJudging:
    """Judges at most ``limit`` of the requests one ingestion run stores, after the run has stored them.

    Rows are offered as they are accepted (each window of a collection); the ones judged are each
    deployment's newest first, taken in turn across deployments, so a run's budget covers the fleet rather
    than the first deployment's backlog. Judging waits for :meth:`run`: a slow provider never holds the
    metric store's session open.
    """

    def __init__(self, judge: LlmJudge, limit: int, *, shown: int = 5) -> None:
        if limit < 0:
            raise ValueError(f"limit: expected at least 0, got {limit}")
        self.judge = judge
        self.limit = limit
        self.shown = shown
        self.offered = 0
        self._newest: dict[str, list[dict[str, Any]]] = {}  # deployment -> its newest rows, newest first

    def offer(self, rows: Iterable[Mapping[str, Any]], offered: int) -> None:
        """Candidates among ``offered`` accepted requests: at most ``limit`` per deployment are kept, each
        with ``request_id``, ``deployment_id``, ``ts``, ``prompt``, ``context``, ``response`` and the
        three scores of record."""
        self.offered += offered
        for row in rows:
            kept = self._newest.setdefault(str(row["deployment_id"]), [])
            kept.append(dict(row))
            kept.sort(key=lambda r: r["ts"], reverse=True)
            del kept[self.limit :]

    def chosen(self) -> list[dict[str, Any]]:
        """The rows to judge: each deployment's newest, in turn, up to ``limit``."""
        queues = [self._newest[d] for d in sorted(self._newest)]
        picked: list[dict[str, Any]] = []
        for rank in range(self.limit):
            for queue in queues:
                if rank < len(queue) and len(picked) < self.limit:
                    picked.append(queue[rank])
        return picked

    def run(self) -> JudgeSummary:
        results = [
            JudgedRequest(
                request_id=str(row["request_id"]),
                deployment_id=str(row["deployment_id"]),
                outcome=self.judge.judge(
                    row["response"], row.get("context") or None, row.get("prompt") or None, row
                ),
            )
            for row in self.chosen()
        ]
        return summarize(results, self.judge.client.model, self.offered, self.shown)


def summarize(results: list[JudgedRequest], model: str, offered: int, shown: int = 5) -> JudgeSummary:
    judged = [(r, r.outcome) for r in results if isinstance(r.outcome, Judged)]
    unjudged: dict[str, int] = {}
    for r in results:
        if isinstance(r.outcome, Unjudged):
            unjudged[r.outcome.reason] = unjudged.get(r.outcome.reason, 0) + 1
    mean_abs = {
        name: round(sum(abs(j.difference[name]) for _, j in judged) / len(judged), 4) if judged else 0.0
        for name in SCORES
    }
    furthest = sorted(judged, key=lambda rj: max(abs(d) for d in rj[1].difference.values()), reverse=True)
    most = [
        {
            "request_id": r.request_id,
            "deployment_id": r.deployment_id,
            **{f"{name}_offline": j.offline[name] for name in SCORES},
            **{f"{name}_judge": getattr(j.verdict, name) for name in SCORES},
            "disagrees": j.disagrees,
            "reason": j.verdict.reason,
        }
        for r, j in furthest[:shown]
    ]
    return JudgeSummary(
        model=model,
        offered=offered,
        judged=len(judged),
        cached=sum(j.cached for _, j in judged),
        disagreeing=sum(j.disagrees for _, j in judged),
        unjudged=unjudged,
        mean_abs_difference=mean_abs,
        most_disagreeing=most,
    )
