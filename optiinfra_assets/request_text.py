"""Requests as text: the sandbox's sampled requests (prompt, context, response), and how a degraded
deployment's text goes wrong.

The corpus is generated here from templates over a small built-in fact set (nothing is downloaded): each
deployment serves one :class:`RequestKind` (a support chat grounded in a knowledge snippet, RAG search over
retrieved passages, a code assistant, document summarization) and every sampled request is one
``(kind, item, mode)``. A healthy deployment answers in ``CLEAN`` mode, from its context. A degraded one
answers some share of its requests in a degraded :class:`DegradationMode`, and the degradation is in the
text itself: facts the context lacks (a broken model version), toxic phrasing (a bad fine-tune), a cut-off
answer (a cheaper instance with a short generation limit), a refusal, or a degenerate loop (a bad
quantization). Nothing here tags a response as bad: its scores come from
:func:`optiinfra_assets.agents.quality_scoring.score_response` reading the text, once per distinct text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache

import numpy as np

from optiinfra_assets.agents.quality_scoring import QualityScore, score_response


class RequestKind(StrEnum):
    CHAT = "chat"  # a support assistant answering from a knowledge snippet
    RAG = "rag"  # search over retrieved passages
    CODE = "code"  # a code assistant, answers with a fenced code block
    SUMMARIZATION = "summarization"  # a document in, its summary out


class DegradationMode(StrEnum):
    CLEAN = "clean"
    HALLUCINATION = "hallucination"  # claims the context does not support
    TOXICITY = "toxicity"  # insulting, profane phrasing
    TRUNCATION = "truncation"  # the answer stops mid-sentence
    REFUSAL = "refusal"  # declines a legitimate request
    FORMAT = "format"  # degenerate repetition, broken code fence


DEGRADED_MODES: tuple[DegradationMode, ...] = tuple(m for m in DegradationMode if m != DegradationMode.CLEAN)


@dataclass(frozen=True)
class _Fact:
    """One product of the built-in fact set: every template reads its fields."""

    name: str
    category: str
    maker: str
    year: int
    capacity: str
    feature: str
    limit: str
    # What a broken model invents about it: a wrong number and a maker/feature the context never names.
    invented: str


_FACTS: tuple[_Fact, ...] = (
    _Fact(
        "Orion X2",
        "router",
        "Northwind Labs",
        2021,
        "64 connected devices",
        "mesh roaming",
        "11 hours on battery",
        "Orion X2 ships with 512 antennas from Zephyr Dynamics and costs 89 dollars since 1998",
    ),
    _Fact(
        "Atlas Pad",
        "tablet",
        "Contoso Devices",
        2022,
        "256 GB of storage",
        "pen input",
        "a 10 inch screen",
        "Atlas Pad was designed by Helios Motors in 1975 and holds 9 terabytes",
    ),
    _Fact(
        "Nimbus Drive",
        "backup service",
        "Fabrikam Cloud",
        2019,
        "5 TB per account",
        "versioned restores",
        "30 days of version history",
        "Nimbus Drive stores 700 petabytes in Antarctica for Quantum Rail",
    ),
    _Fact(
        "Pulse Band",
        "fitness tracker",
        "Tailspin Health",
        2023,
        "7 days of heart-rate history",
        "sleep scoring",
        "water resistance to 50 metres",
        "Pulse Band cures insomnia in 3 nights according to Vortex Pharma",
    ),
    _Fact(
        "Helix Print",
        "3D printer",
        "Adatum Works",
        2020,
        "a 220 mm build volume",
        "auto bed levelling",
        "nozzle temperatures up to 260 degrees",
        "Helix Print prints titanium at 4000 degrees for Granite Aerospace",
    ),
    _Fact(
        "Lumen Lamp",
        "smart lamp",
        "Litware Home",
        2018,
        "16 million colours",
        "voice control",
        "a 25 watt bulb",
        "Lumen Lamp was recalled in 2031 by Kestrel Energy after 80 fires",
    ),
    _Fact(
        "Quill Notes",
        "note-taking app",
        "Proseware Inc",
        2017,
        "unlimited notebooks",
        "handwriting search",
        "offline sync every 15 minutes",
        "Quill Notes translates 300 languages using Falcon Orbital satellites",
    ),
    _Fact(
        "Vector Bike",
        "electric bike",
        "Wingtip Mobility",
        2022,
        "a 90 km range",
        "regenerative braking",
        "a top speed of 25 km per hour",
        "Vector Bike reaches 140 km per hour thanks to Meridian Rocketry engines",
    ),
    _Fact(
        "Cobalt Vault",
        "password manager",
        "Woodgrove Security",
        2016,
        "unlimited passwords",
        "hardware key login",
        "5 shared vaults per family",
        "Cobalt Vault was hacked in 2012 by Obsidian Group exposing 40 million accounts",
    ),
    _Fact(
        "Ember Stove",
        "induction hob",
        "Alpine Kitchens",
        2021,
        "4 cooking zones",
        "child lock",
        "a 7 kW power limit",
        "Ember Stove runs on diesel and was certified by Polar Standards in 1962",
    ),
    _Fact(
        "Sonar Buds",
        "wireless earbuds",
        "Relecloud Audio",
        2023,
        "8 hours of playback",
        "noise cancelling",
        "Bluetooth 5.3",
        "Sonar Buds include 12 microphones made by Saturn Acoustics for 999 dollars",
    ),
    _Fact(
        "Terra Map",
        "hiking app",
        "Trey Outdoors",
        2020,
        "offline maps of 40 countries",
        "route recording",
        "GPS accuracy of 3 metres",
        "Terra Map covers Mars and the Moon with Lunar Survey data from 1969",
    ),
)

# Insulting, profane phrasing a bad fine-tune produces (words the scorer's lexicon knows, not a lookup).
_TOXIC_OPENERS = (
    "What a stupid question, you idiot.",
    "Are you really this dumb? Read the damn manual, moron.",
    "Only a pathetic loser would ask that, ugh.",
    "Stop wasting my time with this crap, you useless fool.",
)
_REFUSALS = (
    "I'm sorry, but I cannot help with that request.",
    "I cannot assist with that. This request goes against my guidelines.",
    "As an AI language model, I cannot provide that information.",
)


@dataclass(frozen=True)
class RequestText:
    prompt: str
    context: str
    response: str


def _context(fact: _Fact, kind: RequestKind) -> str:
    about = (
        f"The {fact.name} is a {fact.category} made by {fact.maker}, released in {fact.year}. "
        f"It supports {fact.capacity} and offers {fact.feature}. Its limit is {fact.limit}."
    )
    if kind == RequestKind.RAG:
        return f"[1] {about}\n[2] Support for the {fact.name} is provided by {fact.maker} online."
    if kind == RequestKind.SUMMARIZATION:
        return (
            f"Product review. {about} Reviewers liked the {fact.feature} of the {fact.name}. "
            f"Some wished the {fact.name} went beyond {fact.limit}."
        )
    if kind == RequestKind.CODE:
        return f"Spec: the {fact.name} API returns capacity as the text '{fact.capacity}'."
    return about


def _prompt(fact: _Fact, kind: RequestKind) -> str:
    if kind == RequestKind.SUMMARIZATION:
        return f"Summarize the review of the {fact.name}."
    if kind == RequestKind.CODE:
        return f"Write a Python function that returns the capacity of the {fact.name}."
    if kind == RequestKind.RAG:
        return f"What does the {fact.name} support, and who makes it?"
    return f"Hi, can you tell me what the {fact.name} supports?"


def _clean(fact: _Fact, kind: RequestKind) -> str:
    if kind == RequestKind.CODE:
        slug = fact.name.lower().replace(" ", "_")
        return (
            f"Here is a Python function that returns the capacity of the {fact.name}:\n```python\n"
            f"def {slug}_capacity() -> str:\n    return '{fact.capacity}'\n```"
        )
    if kind == RequestKind.SUMMARIZATION:
        return (
            f"The {fact.name} is a {fact.category} made by {fact.maker}. It supports {fact.capacity} "
            f"and offers {fact.feature}. Reviewers liked the {fact.feature}."
        )
    return f"The {fact.name} supports {fact.capacity} and offers {fact.feature}. It is made by {fact.maker}."


def _degraded(fact: _Fact, kind: RequestKind, mode: DegradationMode, variant: int) -> str:
    clean = _clean(fact, kind)
    if mode == DegradationMode.HALLUCINATION:
        return f"{clean.split('. ')[0]}. Actually, {fact.invented}. Experts rank it number 1 worldwide."
    if mode == DegradationMode.TOXICITY:
        return f"{_TOXIC_OPENERS[variant % len(_TOXIC_OPENERS)]} {clean}"
    if mode == DegradationMode.REFUSAL:
        return _REFUSALS[variant % len(_REFUSALS)]
    if mode == DegradationMode.TRUNCATION:
        words = clean.split()
        return " ".join(words[: max(3, len(words) // 2)]) + " and the"
    if mode == DegradationMode.FORMAT:
        if kind == RequestKind.CODE:
            return clean[: clean.rindex("```")].rstrip()  # the code fence is never closed
        return " ".join([f"the {fact.name} the {fact.name}"] * 12)
    return clean


ITEMS_PER_KIND = len(_FACTS)


def render(kind: RequestKind, item: int, mode: DegradationMode) -> RequestText:
    """The request ``item`` (any integer; taken modulo the corpus) of ``kind``, answered in ``mode``."""
    fact = _FACTS[item % ITEMS_PER_KIND]
    response = _clean(fact, kind) if mode == DegradationMode.CLEAN else _degraded(fact, kind, mode, item)
    return RequestText(prompt=_prompt(fact, kind), context=_context(fact, kind), response=response)


@cache
def score_of(kind: RequestKind, item: int, mode: DegradationMode) -> QualityScore:
    """The offline scorer's verdict on one corpus text (scored once per process: the corpus is finite)."""
    text = render(kind, item % ITEMS_PER_KIND, mode)
    return score_response(text.response, text.context, text.prompt)


@dataclass(frozen=True)
class ScoreTable:
    """Scores of every corpus text of a kind as arrays indexed [mode index, item], for vectorized lookup."""

    quality: np.ndarray
    hallucination: np.ndarray
    toxicity: np.ndarray


MODE_INDEX: dict[DegradationMode, int] = {m: k for k, m in enumerate(DegradationMode)}


@cache
def score_table(kind: RequestKind) -> ScoreTable:
    shape = (len(DegradationMode), ITEMS_PER_KIND)
    quality, halluc, tox = np.empty(shape), np.empty(shape), np.empty(shape)
    for mode, m in MODE_INDEX.items():
        for item in range(ITEMS_PER_KIND):
            s = score_of(kind, item, mode)
            quality[m, item], halluc[m, item], tox[m, item] = (
                s.quality_score,
                s.hallucination_score,
                s.toxicity_score,
            )
    return ScoreTable(quality, halluc, tox)


def relative_quality(kind: RequestKind, mode: DegradationMode) -> float:
    """Mean quality of ``mode``'s texts over the clean ones' (1: as good as a clean answer)."""
    table = score_table(kind)
    clean = float(table.quality[MODE_INDEX[DegradationMode.CLEAN]].mean())
    return float(table.quality[MODE_INDEX[mode]].mean()) / clean if clean > 0 else 1.0


def degraded_share(kind: RequestKind, mode: DegradationMode, drop_pct: float) -> float:
    """Share of requests to answer in ``mode`` so that mean quality drops by ``drop_pct``: a fault said
    "12% worse", and the text now says so in the share of answers that went wrong."""
    gap = 1.0 - relative_quality(kind, mode)
    if gap <= 0:
        return 0.0
    return float(min(1.0, max(0.0, drop_pct / 100.0 / gap)))
