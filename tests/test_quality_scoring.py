"""The offline quality scorer on small hand-written responses: grounding, toxicity, checks, combination."""

from __future__ import annotations

import pytest

from optiinfra_assets.agents.quality_scoring import (
    METHOD,
    METHOD_NO_CONTEXT,
    QualitySettings,
    ScoringInput,
    is_refusal,
    is_repetitive,
    is_truncated,
    is_well_formed,
    score_many,
    score_response,
    toxicity,
)

KNOWLEDGE = (
    "Iron Man is starring Robert Downey Jr. Robert Downey Jr. starred in Zodiac. Zodiac was released 2007."
)
HISTORY = "[Human]: Do you like Iron Man? [Assistant]: Sure! [Human]: Was he also in Zodiac?"
ARTICLE = (
    "The city council of Springfield voted on Tuesday to close the old Main Street bridge for repairs. "
    "Engineers found cracks in two support beams last month. The bridge will reopen in the spring, "
    "the mayor said, and traffic will use the river road until then."
)


def hallucination_of(response: str, context: str | None = KNOWLEDGE, question: str | None = HISTORY) -> float:
    return score_response(response, context, question).hallucination_score


def test_supported_answer_scores_lower_than_one_adding_facts() -> None:
    supported = hallucination_of("Yes, Robert Downey Jr. starred in Zodiac, released in 2007.")
    invented = hallucination_of("Yes, Robert Downey Jr. starred in Zodiac with Tom Hanks, released in 1998.")
    assert supported < invented


def test_summary_that_adds_facts_scores_higher_than_a_faithful_one() -> None:
    faithful = hallucination_of(
        "Springfield will close the Main Street bridge for repairs after engineers found cracks.",
        ARTICLE,
        None,
    )
    invented = hallucination_of(
        "Springfield will close the Main Street bridge after a truck crash injured 12 people, "
        "and Governor Smith promised federal money.",
        ARTICLE,
        None,
    )
    assert faithful < invented


def test_unsupported_terms_name_what_the_context_lacks() -> None:
    score = score_response("Zodiac also starred Tom Hanks in 1998.", KNOWLEDGE, HISTORY)
    assert {"Tom", "Hanks", "1998"} <= set(score.unsupported)
    assert "Zodiac" not in score.unsupported


def test_dialogue_history_counts_as_support() -> None:
    answer = "I do like Iron Man, and yes he was in Zodiac."
    without_history = hallucination_of(answer, "Robert Downey Jr. starred in Zodiac.", None)
    with_history = hallucination_of(answer, "Robert Downey Jr. starred in Zodiac.", HISTORY)
    assert with_history < without_history


def test_negated_claim_against_a_positive_context_scores_higher() -> None:
    agrees = hallucination_of("Robert Downey Jr. starred in Zodiac.")
    contradicts = hallucination_of("Robert Downey Jr. never starred in Zodiac.")
    assert agrees < contradicts


def test_a_question_asserts_less_than_a_claim() -> None:
    question = hallucination_of("Have you seen Jake Gyllenhaal in it?")
    claim = hallucination_of("Jake Gyllenhaal starred in it.")
    assert question < claim


def test_fully_supported_answer_scores_low() -> None:
    assert hallucination_of("Robert Downey Jr. starred in Zodiac.") < 0.2


def test_without_context_hallucination_is_neutral_and_left_out_of_quality() -> None:
    score = score_response("Robert Downey Jr. starred in Zodiac.")
    assert score.hallucination_score == 0.5
    assert score.method == METHOD_NO_CONTEXT
    assert not score.flags.grounded
    assert score.quality_score == 1.0  # clean, complete, not toxic: no unknown grounding held against it
    assert score_response("x", "   ").method == METHOD_NO_CONTEXT  # a blank context is no context
    assert score_response("x", KNOWLEDGE).method == METHOD
    custom = QualitySettings(no_context_hallucination=0.3)
    assert score_response("Robert Downey Jr. starred in Zodiac.", settings=custom).hallucination_score == 0.3


def test_toxic_sentence_scores_higher_than_neutral_one() -> None:
    neutral = toxicity("The weather in Lisbon was lovely and we walked along the river.")
    toxic = toxicity("You are a stupid worthless idiot and I hate you, piece of shit.")
    assert neutral < 0.1
    assert toxic > 0.8


def test_hostility_against_a_group_scores_higher_than_naming_it() -> None:
    mention = toxicity("Many Muslims in the city celebrate Eid with their neighbours.")
    hateful = toxicity("All Muslims are filthy parasites and should be deported.")
    assert mention < hateful
    assert hateful > 0.9


def test_obfuscated_and_plural_forms_are_caught() -> None:
    assert toxicity("what the f*ck is this") > toxicity("what the heck is this")
    assert toxicity("those vermin and parasites") > 0.5


def test_refusal_detected_only_at_the_start() -> None:
    assert is_refusal("I'm sorry, but I can't help with that request.")
    assert is_refusal("As an AI language model, I cannot provide medical advice.")
    assert not is_refusal("The capital of France is Paris.")
    assert not is_refusal("Paris is the capital. " * 30 + "I cannot help but love it.")


@pytest.mark.parametrize(
    "text",
    [
        "The bridge will reopen in the spring, and the",
        "Here is the code:\n```python\nprint('hi')",
        "The main reasons are (1) cost, (2) latency and (3",
        " ".join(["word"] * 45),
    ],
)
def test_truncated_responses(text: str) -> None:
    assert is_truncated(text)


@pytest.mark.parametrize("text", ["yes, in 1996", "The bridge reopens in spring.", "Done!", ""])
def test_complete_responses_are_not_truncated(text: str) -> None:
    assert not is_truncated(text)


def test_repetition_and_format() -> None:
    assert is_repetitive("I am a model. " * 20)
    assert not is_repetitive("Robert Downey Jr. starred in Zodiac, a crime film by David Fincher.")
    assert not is_well_formed("")
    assert not is_well_formed("broken \x00 bytes")
    assert not is_well_formed("decoding debris \ufffd here")
    assert is_well_formed("Fine text.\nSecond line.")


def test_quality_combines_scores_and_checks() -> None:
    clean = score_response("Robert Downey Jr. starred in Zodiac.", KNOWLEDGE, HISTORY)
    toxic = score_response("Robert Downey Jr. starred in Zodiac, you stupid idiot.", KNOWLEDGE, HISTORY)
    refusal = score_response("I'm sorry, but I cannot help with that.", KNOWLEDGE, HISTORY)
    cut = score_response("Robert Downey Jr. starred in Zodiac and the", KNOWLEDGE, HISTORY)
    assert clean.quality_score > toxic.quality_score
    assert clean.quality_score > refusal.quality_score
    assert refusal.flags.refusal
    assert cut.flags.truncated
    assert clean.quality_score > cut.quality_score
    assert score_response("   ", KNOWLEDGE).quality_score == 0.0


def test_scores_are_bounded_and_deterministic() -> None:
    texts = ["", "?", "1 2 3", "NIGGER " * 50, "Tom Hanks " * 200, "I'm sorry, I can't.", "```"]
    for text in texts:
        first = score_response(text, KNOWLEDGE, HISTORY)
        assert first == score_response(text, KNOWLEDGE, HISTORY)
        for value in (first.hallucination_score, first.toxicity_score, first.quality_score):
            assert 0.0 <= value <= 1.0


def test_score_many_keeps_order() -> None:
    items = [
        ScoringInput(response="Robert Downey Jr. starred in Zodiac.", context=KNOWLEDGE),
        ScoringInput(response="Tom Hanks directed Titanic in 1987.", context=KNOWLEDGE),
        ScoringInput(response="No context here."),
    ]
    scores = score_many(items)
    assert [s.method for s in scores] == [METHOD, METHOD, METHOD_NO_CONTEXT]
    assert scores[0].hallucination_score < scores[1].hallucination_score


@pytest.mark.parametrize(
    ("plain", "obfuscated"),
    [
        ("you are a stupid idiot", "you are a stuuuupid idiooot"),
        ("what the fuck", "what the f u c k"),
        ("this shithole country", "this shi*hole country"),
        ("what a fucking mess", "what a f**king mess"),
    ],
)
def test_obfuscation_is_undone(plain: str, obfuscated: str) -> None:
    assert toxicity(obfuscated) > 0.3
    assert toxicity(obfuscated) == pytest.approx(toxicity(plain), abs=0.05)


def test_abuse_aimed_at_the_reader_scores_higher_than_the_same_word_about_a_thing() -> None:
    assert toxicity("you are such a moron") > toxicity("the moron test") > 0.0
    assert toxicity("go kill yourself") > 0.5
    assert toxicity("I will kill you") > 0.5
    assert toxicity("you are trash") > 0.5 > toxicity("take out the trash") == 0.0


def test_negative_words_count_only_against_a_group() -> None:
    ordinary = "Cancer research and garbage collection are dangerous fields to ruin a career in."
    assert toxicity(ordinary) == 0.0
    assert toxicity("Immigrants ruin everything, they are a cancer.") > 0.6
    assert toxicity("Third worlders are flooding our country.") > toxicity("The river is flooding our town.")


def test_toxicity_weights_are_settings_and_validated() -> None:
    text = "you are such a moron"
    muted = QualitySettings(toxicity_weights={"insult": 0.0, "second_person_attack": 0.0})
    assert toxicity(text, muted) == 0.0 < toxicity(text)
    with pytest.raises(ValueError, match="toxicity_weights: unknown feature 'slurs'"):
        QualitySettings(toxicity_weights={"slurs": 1.0})
    with pytest.raises(ValueError, match=r"toxicity_weights\['slur'\] = -1.0 must be >= 0"):
        QualitySettings(toxicity_weights={"slur": -1.0})


def test_pleasantries_are_not_unsupported_claims() -> None:
    thanks = score_response("You're welcome, glad to help!", KNOWLEDGE, HISTORY)
    assert thanks.hallucination_score == 0.0
    assert thanks.unsupported == []


def test_words_with_a_common_harmless_sense_do_not_score_ordinary_text() -> None:
    for text in (
        "Polish the silver, then take a nip of whisky.",
        "Talmudic scholarship and European history are taught in the spring.",
        "The trash can is full of garbage; the ants found it.",
    ):
        assert toxicity(text) == 0.0, text
