"""`optiinfra quality score`: score model responses offline (hallucination, toxicity, checks, quality).

Input: JSON lines ``{"id", "question" (optional), "context" (optional), "response"}``; blank lines are
ignored. Output (``--json``): a JSON array in input order, one object per scored line with ``id``,
``hallucination_score``, ``toxicity_score``, ``quality_score`` (all in [0, 1]; 1 = most hallucinated / most
toxic / best quality), the checks (``refusal``, ``truncated``, ``repetitive``, ``format_ok``, ``grounded``),
``method`` (``offline:v1``, or ``offline:v1:no-context`` where the hallucination score is the neutral value)
and ``unsupported`` (a few response terms the context lacks). A bad line (not JSON, not an object, a
missing or mistyped field) is reported on stderr with its line number and field, and the command exits 2
without output, unless ``--skip-bad`` leaves such lines out (still listed on stderr).

With an LLM model configured (``OPTIINFRA_LLM_MODEL``) and no ``--no-judge``, each object also carries
``judge``: the LLM judge's three scores, ``reason``, ``model``, ``cached``, ``disagrees`` and ``difference``
(judge minus offline), or ``unjudged`` with why (rate limit, provider failure). The three scores of the
output contract stay the offline scorer's. Verdicts are cached by content hash in the state store, so a
second run over the same text costs no call.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import ConfigDict, StrictInt, StrictStr, ValidationError

from optiinfra_assets.agents.application.llm_judge import LlmJudge, configured_judge, verdict_json
from optiinfra_assets.agents.quality_scoring import QualityScore, ScoringInput, score_response
from optiinfra_assets.commands import open_state
from optiinfra_assets.config import Settings, SettingsError
from resources.errors import StoreUnavailableError


class ResponseLine(ScoringInput):
    """One input line: types are checked strictly (a number is not a response), unknown keys ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: StrictStr | StrictInt


def add_parser(subparsers: Any) -> None:
    quality = subparsers.add_parser("quality", help="score model responses offline")
    actions = quality.add_subparsers(dest="action", required=True)
    score = actions.add_parser(
        "score", help="score responses from a JSON-lines file: hallucination, toxicity, checks, quality"
    )
    score.add_argument(
        "--input",
        required=True,
        help='JSON lines {"id", "question"?, "context"?, "response"}; "-" reads standard input',
    )
    score.add_argument("--json", action="store_true", help="print a JSON array (default: a table)")
    score.add_argument(
        "--skip-bad", action="store_true", help="leave bad lines out (listed on stderr) instead of failing"
    )
    score.add_argument(
        "--no-judge",
        action="store_true",
        help="do not ask the LLM judge (OPTIINFRA_LLM_MODEL) for a second opinion: offline scores only",
    )
    score.set_defaults(func=cmd_quality_score)


def parse_line(raw: bytes) -> ResponseLine:
    """One line's request; ValueError names what is wrong (the field, where there is one)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        return ResponseLine.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc'][:1])}': {e['msg'].lower()}" for e in exc.errors()
        )
        raise ValueError(problems) from None


def read_lines(stream: IO[bytes]) -> Iterator[tuple[int, ResponseLine | ValueError]]:
    """(line number from 1, the parsed line or the error) for every non-blank line."""
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            yield number, parse_line(raw)
        except ValueError as exc:
            yield number, exc


def result_json(line_id: str | int, score: QualityScore) -> dict[str, Any]:
    return {
        "id": line_id,
        "hallucination_score": score.hallucination_score,
        "toxicity_score": score.toxicity_score,
        "quality_score": score.quality_score,
        **score.flags.model_dump(),
        "method": score.method,
        "unsupported": score.unsupported,
    }


def _score_stream(
    stream: IO[bytes], skip_bad: bool, judge: LlmJudge | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for number, parsed in read_lines(stream):
        if isinstance(parsed, ValueError):
            errors.append(f"line {number}: {parsed}")
        elif skip_bad or not errors:  # once a line is bad and fatal, scoring the rest is wasted work
            score = score_response(parsed.response, parsed.context, parsed.question)
            row = result_json(parsed.id, score)
            if judge is not None:
                outcome = judge.judge(parsed.response, parsed.context, parsed.question, score)
                row["judge"] = verdict_json(outcome, judge.client.model)
            rows.append(row)
    return rows, errors


def _judge(settings: Settings) -> LlmJudge | None:
    """The configured LLM judge, its cache in the state store; without a usable store the cache lives only
    as long as the command (said on stderr): the offline scores never depend on the judge."""
    if not settings.llm_model.strip():
        return None

    try:
        state = open_state(settings)
    except (SettingsError, StoreUnavailableError) as exc:
        print(f"optiinfra: judge verdicts not cached across runs: {exc}", file=sys.stderr)
        state = None
    return configured_judge(settings, state)


def _judge_cell(judge: dict[str, Any] | None) -> str:
    if judge is None:
        return ""
    if "unjudged" in judge:
        return f"unjudged: {judge['unjudged']}"
    return f"q={judge['quality_score']:.2f}{' DISAGREES' if judge['disagrees'] else ''}"


def cmd_quality_score(args: argparse.Namespace, settings: Settings) -> int:
    """Score every line of ``--input``; exit 2 on a bad line unless ``--skip-bad``."""
    judge = None if args.no_judge else _judge(settings)
    try:
        if args.input == "-":
            rows, errors = _score_stream(sys.stdin.buffer, args.skip_bad, judge)
        else:
            with Path(args.input).open("rb") as stream:
                rows, errors = _score_stream(stream, args.skip_bad, judge)
    except OSError as exc:
        print(f"optiinfra: error: --input {args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if errors and not args.skip_bad:
        for error in errors:
            print(f"optiinfra: error: {args.input}: {error}", file=sys.stderr)
        return 2
    for error in errors:
        print(f"optiinfra: skipped {args.input}: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from optiinfra_assets.cli import _print_table  # the one table printer; cli imports this module

        columns = ["id", "hallucination_score", "toxicity_score", "quality_score", "refusal", "truncated"]
        if judge is not None:
            rows = [{**row, "judge": _judge_cell(row.get("judge"))} for row in rows]
            columns.append("judge")
        _print_table(rows, [*columns, "method"])
    return 0
