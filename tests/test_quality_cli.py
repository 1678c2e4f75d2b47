"""`optiinfra quality score`: output shape and order, the no-context method, and every bad-input case."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from optiinfra_assets.commands import quality
from optiinfra_assets.config import Settings

KNOWLEDGE = "Robert Downey Jr. starred in Zodiac. Zodiac was released 2007."
GOOD = [
    {
        "id": "a",
        "context": KNOWLEDGE,
        "question": "Was he in Zodiac?",
        "response": "Yes, he starred in Zodiac.",
    },
    {"id": 2, "context": KNOWLEDGE, "response": "Tom Hanks starred in Zodiac in 1998."},
    {"id": "c", "response": "You are a stupid worthless idiot."},
]
SCORE_KEYS = ("hallucination_score", "toxicity_score", "quality_score")


def run(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Parse ``argv`` with the command's own parser and run its handler."""
    parser = argparse.ArgumentParser(prog="optiinfra")
    quality.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args, Settings(home=tmp_path))
    out, err = capsys.readouterr()
    return code, out, err


def write_lines(tmp_path: Path, lines: list[Any]) -> Path:
    """Objects are written as JSON, strings and bytes as they are."""
    path = tmp_path / "in.jsonl"
    with path.open("wb") as f:
        for line in lines:
            raw = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line))
            f.write(raw.encode() if isinstance(raw, str) else raw)
            f.write(b"\n")
    return path


def score_json(lines: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    code, out, err = run(
        ["quality", "score", "--input", str(write_lines(tmp_path, lines)), "--json"], tmp_path, capsys
    )
    assert code == 0, err
    return json.loads(out)


def test_scores_every_line_in_order_with_the_contracted_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = score_json(GOOD, tmp_path, capsys)
    assert [r["id"] for r in rows] == ["a", 2, "c"]
    for row in rows:
        for key in SCORE_KEYS:
            assert 0.0 <= row[key] <= 1.0
        assert {"refusal", "truncated", "format_ok", "method"} <= row.keys()
    assert rows[0]["hallucination_score"] < rows[1]["hallucination_score"]
    assert rows[2]["toxicity_score"] > rows[0]["toxicity_score"]
    assert [r["method"] for r in rows] == ["offline:v1", "offline:v1", "offline:v1:no-context"]
    assert rows[2]["hallucination_score"] == 0.5
    assert "Hanks" in rows[1]["unsupported"]


def test_blank_lines_are_ignored_and_an_empty_file_gives_an_empty_array(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(score_json(["", GOOD[0], "   ", GOOD[1], ""], tmp_path, capsys)) == 2
    assert score_json([], tmp_path, capsys) == []


def test_null_context_and_question_are_allowed_and_extra_keys_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = score_json(
        [{"id": "x", "context": None, "question": None, "response": "ok.", "model": "m"}], tmp_path, capsys
    )
    assert rows[0]["method"] == "offline:v1:no-context"


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["expected a JSON object", "list"]),
        ('"just a string"', ["expected a JSON object", "str"]),
        ({"id": "x"}, ["'response'", "field required"]),
        ({"response": "hi"}, ["'id'"]),
        ({"id": "x", "response": 42}, ["'response'", "string"]),
        ({"id": "x", "response": None}, ["'response'"]),
        ({"id": "x", "response": "hi", "context": ["a"]}, ["'context'"]),
        ({"id": "x", "response": "hi", "question": 3}, ["'question'"]),
        ({"id": True, "response": "hi"}, ["'id'"]),
        ({"id": 1.5, "response": "hi"}, ["'id'"]),
        (b"\xff\xfe{}", ["not UTF-8"]),
    ],
)
def test_bad_line_names_line_and_field_and_exits_2(
    line: Any, names: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path, [GOOD[0], line, GOOD[1]])
    code, out, err = run(["quality", "score", "--input", str(path), "--json"], tmp_path, capsys)
    assert code == 2
    assert out == ""
    assert "line 2:" in err
    for name in names:
        assert name in err


def test_every_bad_line_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_lines(tmp_path, ["oops", GOOD[0], {"id": "y"}])
    code, _, err = run(["quality", "score", "--input", str(path), "--json"], tmp_path, capsys)
    assert code == 2
    assert "line 1:" in err
    assert "line 3:" in err


def test_skip_bad_lists_bad_lines_and_leaves_them_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path, [GOOD[0], "oops", GOOD[1], {"id": "z", "response": 1}, GOOD[2]])
    code, out, err = run(["quality", "score", "--input", str(path), "--json", "--skip-bad"], tmp_path, capsys)
    assert code == 0
    assert [r["id"] for r in json.loads(out)] == ["a", 2, "c"]
    assert "line 2:" in err
    assert "line 4:" in err
    assert "'response'" in err


def test_missing_input_file_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    code, out, err = run(["quality", "score", "--input", str(missing), "--json"], tmp_path, capsys)
    assert code == 2
    assert out == ""
    assert str(missing) in err


def test_input_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["quality", "score", "--json"], tmp_path, capsys)
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        run(["quality"], tmp_path, capsys)  # the action is required too


def test_reads_standard_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, out, _ = run(["quality", "score", "--input", "-", "--json"], tmp_path, capsys)
    assert code == 0
    assert len(json.loads(out)) == 3


def test_table_without_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["quality", "score", "--input", str(write_lines(tmp_path, GOOD))], tmp_path, capsys)
    assert code == 0
    assert out.splitlines()[0].split()[:4] == ["ID", "HALLUCINATION_SCORE", "TOXICITY_SCORE", "QUALITY_SCORE"]
    assert len(out.splitlines()) == 4


def test_optiinfra_main_discovers_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from optiinfra_assets.cli import main

    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    path = write_lines(tmp_path, GOOD)
    assert main(["quality", "score", "--input", str(path), "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["a", 2, "c"]
    assert main(["quality", "score", "--input", str(write_lines(tmp_path, ["{"]))]) == 2
