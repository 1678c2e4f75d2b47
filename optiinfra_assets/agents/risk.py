"""Risk assessment of a recommendation, informed by similar past outcomes from decision memory.

With an LLM configured it writes the note; without one (or when it fails) a deterministic method does,
and says which method was used. The similar outcomes are attached either way, so a person can check them.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

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
    """What the LLM must answer; anything else is a schema mismatch and falls back."""

    level: Risk
    score: float = Field(ge=0, le=1)
    note: str = Field(min_length=1)
    factors: list[str] = Field(default_factory=list)


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
) -> RiskAssessment:
    """Assess ``rec``'s risk: by the LLM when one is configured, else (or on its failure) deterministically.

    ``mock_response`` is passed to litellm (its real mock path) for tests and offline demos.
    """
    settings = settings or DecisionSettings()
    if llm is None:
        return deterministic_assessment(rec, similar, "deterministic (no LLM configured)", settings)
    try:
        answer = llm.complete_json(
            system_prompt(settings), _llm_prompt(rec, similar), LlmRiskAnswer, mock_response=mock_response
        )
    except LlmError as exc:
        return deterministic_assessment(rec, similar, f"deterministic (LLM failed: {_short(exc)})", settings)
    return RiskAssessment(
        level=answer.level,
        score=answer.score,
        method=f"llm:{llm.model}",
        note=answer.note,
        factors=answer.factors,
        similar_outcomes=similar,
    )
