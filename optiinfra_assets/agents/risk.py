"""Risk assessment of a recommendation, informed by similar past outcomes from decision memory.

The deterministic method always scores the risk. With an LLM configured, the LLM writes the note and may
raise the score by at most ``DecisionSettings.llm_max_risk_raise``, never lower it: risk drives
auto-approval, so a model's answer can add caution, never remove it. An answer whose level disagrees
with its own score, or that does not parse, falls back to the deterministic note, labelled with why.
The similar outcomes are attached either way, so a person can check them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationInfo, model_validator

from optiinfra_assets.agents.capability import risk_level
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.models import Recommendation, Risk, RiskAssessment, SimilarOutcome
from resources.llm import LlmClient, LlmError

# How far one fully similar (similarity 1.0) past outcome moves the score. A rollback counts for more than
# a success: one failure in a near-identical scenario says more about risk than one success does.
ROLLBACK_WEIGHT = 0.25
SUCCESS_WEIGHT = -0.10
QUALITY_LOSS_WEIGHT = 0.10  # kept, but quality fell more than the quality rule allows
_REASON_CHARS = 160
NOTE_MAX_CHARS = 1_000  # two or three sentences, with room; a longer note is not a note
FACTOR_MAX_CHARS = 200
MAX_FACTORS = 12


def system_prompt(settings: DecisionSettings) -> str:
    return (
        "You assess the risk of a change to an LLM inference deployment. Priorities: customer preferences > "
        f"output quality (no drop over {settings.max_quality_drop_pct:g}%) > latency SLOs > cost. Answer "
        'with one JSON object only: {"level": "low"|"medium"|"high", "score": number 0..1, "note": "two or '
        'three sentences a reviewer can act on", "factors": ["short factor", ...]}. '
        f"Score below {settings.low_risk_below} is low, below {settings.high_risk_from} medium, otherwise "
        "high. Weigh similar past outcomes by their similarity: rolled-back ones are evidence of risk."
    )


class LlmRiskAnswer(BaseModel):
    """What the LLM must answer; anything else is a schema mismatch and falls back.

    The level must be the band its score falls in, by the risk bands of the ``DecisionSettings`` given as
    validation context (``{"settings": ...}``; the defaults without one). Sizes are bounded: a note is a
    few sentences, not a document."""

    level: Risk
    score: float = Field(ge=0, le=1)
    note: str = Field(min_length=1, max_length=NOTE_MAX_CHARS)
    factors: list[Annotated[str, Field(max_length=FACTOR_MAX_CHARS)]] = Field(
        default_factory=list, max_length=MAX_FACTORS
    )

    @model_validator(mode="after")
    def _level_matches_score(self, info: ValidationInfo) -> LlmRiskAnswer:
        settings = (info.context or {}).get("settings") or DecisionSettings()
        expected = risk_level(self.score, settings)
        if self.level is not expected:
            raise ValueError(
                f"level '{self.level.value}' contradicts score {self.score:g}, which is {expected.value}"
            )
        return self


def _outcome_shift(outcome: SimilarOutcome, settings: DecisionSettings) -> tuple[float, str]:
    """Signed score shift of one past outcome, weighted by its similarity, and its verdict in words."""
    weight = min(1.0, max(0.0, outcome.similarity))
    if outcome.rolled_back:
        return ROLLBACK_WEIGHT * weight, "rolled back"
    if outcome.quality_delta_pct < -settings.max_quality_drop_pct:
        return QUALITY_LOSS_WEIGHT * weight, "kept but quality fell"
    return SUCCESS_WEIGHT * weight, "succeeded, quality kept"


def _describe_outcome(outcome: SimilarOutcome, verdict: str, shift: float) -> str:
    return (
        f"{outcome.recommendation_id} (similarity {outcome.similarity:.2f}, {verdict}, "
        f"realized ${outcome.realized_monthly_savings_usd:,.0f}/month, quality "
        f"{outcome.quality_delta_pct:+.1f}%): {shift:+.3f}"
    )


def deterministic_assessment(
    rec: Recommendation,
    similar: list[SimilarOutcome],
    method: str,
    settings: DecisionSettings | None = None,
) -> RiskAssessment:
    """Start from the agent's risk score; each similar outcome moves it by its weight x similarity.

    Rolled back: +0.25; kept with quality dropped over 5%: +0.10; succeeded with quality kept: -0.10.
    The result is clamped to 0..1 and mapped to a level: < 0.33 low, < 0.66 medium, otherwise high.
    """
    settings = settings or DecisionSettings()
    factors = [f"agent risk score {rec.risk_score:.2f} ({rec.risk.value})"]
    score = rec.risk_score
    for outcome in similar:
        shift, verdict = _outcome_shift(outcome, settings)
        score += shift
        factors.append(_describe_outcome(outcome, verdict, shift))
    if not similar:
        factors.append("no similar past outcomes in decision memory")
    score = min(1.0, max(0.0, score))
    level = risk_level(score, settings)
    rolled_back = sum(o.rolled_back for o in similar)
    note = (
        f"Risk {level.value} ({score:.2f}) from the agent's {rec.risk_score:.2f} and {len(similar)} similar "
        f"past outcome(s), {rolled_back} rolled back. Factors: " + "; ".join(factors) + "."
    )
    return RiskAssessment(
        level=level,
        score=round(score, 4),
        method=method,
        note=note,
        factors=factors,
        similar_outcomes=similar,
    )


def _llm_prompt(rec: Recommendation, similar: list[SimilarOutcome]) -> str:
    payload = {
        "recommendation": {
            "kind": rec.kind,
            "summary": rec.summary,
            "estimate": rec.estimate.model_dump(mode="json"),
            "agent_risk": rec.risk.value,
            "agent_risk_score": rec.risk_score,
            "changes": rec.current.changes(rec.desired),
            "evidence": rec.evidence.model_dump(mode="json"),
        },
        "validations": [v.model_dump(mode="json") for v in rec.validations],
        "similar_outcomes": [o.model_dump(mode="json") for o in similar],
    }
    return json.dumps(payload, default=str, indent=1)


def _short(reason: object) -> str:
    text = " ".join(str(reason).split())
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def assess_risk(
    rec: Recommendation,
    similar: list[SimilarOutcome],
    llm: LlmClient | None,
    *,
    settings: DecisionSettings | None = None,
    mock_response: str | None = None,
    litellm_args: dict[str, Any] | None = None,
) -> RiskAssessment:
    """Assess ``rec``'s risk deterministically; with an LLM configured, let it explain and raise the score
    within ``settings.llm_max_risk_raise`` (see :func:`bounded_by_deterministic`). On the LLM's failure the
    deterministic assessment is returned, its method saying why.

    ``mock_response`` and ``litellm_args`` are passed to litellm (its real mock path) for tests and demos.
    """
    settings = settings or DecisionSettings()
    if llm is None:
        return deterministic_assessment(rec, similar, "deterministic (no LLM configured)", settings)
    try:
        answer = llm.complete_json(
            system_prompt(settings),
            _llm_prompt(rec, similar),
            LlmRiskAnswer,
            mock_response=mock_response,
            litellm_args=litellm_args,
            context={"settings": settings},
        )
    except LlmError as exc:
        return deterministic_assessment(rec, similar, f"deterministic (LLM failed: {_short(exc)})", settings)
    floor = deterministic_assessment(rec, similar, "deterministic", settings)
    return bounded_by_deterministic(answer, floor, f"llm:{llm.model}", settings)


def bounded_by_deterministic(
    answer: LlmRiskAnswer, floor: RiskAssessment, method: str, settings: DecisionSettings
) -> RiskAssessment:
    """The LLM's note with a score no lower than the deterministic one and at most
    ``llm_max_risk_raise`` above it; the level is the score's band. The factors say what each gave."""
    ceiling = min(1.0, floor.score + settings.llm_max_risk_raise)
    score = round(min(max(answer.score, floor.score), ceiling), 4)
    if answer.score < floor.score:
        bound = f"kept at the deterministic {floor.score:.2f}: the LLM may not lower risk"
    elif answer.score > ceiling:
        bound = f"raised to {score:.2f}, the most the LLM may add ({settings.llm_max_risk_raise:g})"
    else:
        bound = f"raised to {score:.2f}" if score > floor.score else f"{score:.2f}, as both agree"
    factors = [
        f"deterministic {floor.score:.2f} ({floor.level.value}); LLM {answer.score:.2f} "
        f"({answer.level.value}); {bound}",
        *answer.factors,
        *floor.factors,
    ]
    return RiskAssessment(
        level=risk_level(score, settings),
        score=score,
        method=f"{method} (bounded by the deterministic assessment)",
        note=answer.note,
        factors=factors,
        similar_outcomes=floor.similar_outcomes,
    )
