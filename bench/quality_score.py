"""Offline quality scoring speed: 10,000 responses from the development sets, one process.

The responses are the dev sets' rows in file order (HaluEval dialogue with knowledge and history,
HaluEval summarization with its news article, toxicity_dev without context), repeated until there are
10,000; scoring is timed twice: through ``score_many`` (the library the agents call) and through the
``optiinfra quality score --json`` handler on a JSON-lines file (parsing, validation and JSON output
included).

Usage: .venv/bin/python bench/quality_score.py [--datasets DIR] [--n 10000]
Last line: ``responses_per_s=N`` (the CLI path). Target: >= 200 on the 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality_eval import DEFAULT_DATASETS, read_rows

from optiinfra_assets.agents.quality_scoring import ScoringInput, score_many
from optiinfra_assets.commands.quality import cmd_quality_score


def dev_rows(datasets: Path, n: int) -> list[dict]:
    """``n`` rows cycling through the three dev sets, without their labels."""
    files = [
        datasets / "halueval_dev" / "dialogue_1000.jsonl",
        datasets / "halueval_dev" / "summarization_1000.jsonl.gz",
        datasets / "toxicity_dev" / "toxicity_dev.jsonl",
    ]
    rows = [
        {k: r[k] for k in ("id", "question", "context", "response") if k in r}
        for path in files
        for r in read_rows(path)
    ]
    return list(itertools.islice(itertools.cycle(rows), n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    rows = dev_rows(args.datasets, args.n)
    words = sum(len(r["response"].split()) for r in rows)
    context_chars = sum(len(r.get("context") or "") for r in rows)
    print(f"responses={len(rows)} response_words={words} context_chars={context_chars}")

    items = [
        ScoringInput(response=r["response"], context=r.get("context"), question=r.get("question"))
        for r in rows
    ]
    start = time.perf_counter()
    score_many(items)
    library_s = time.perf_counter() - start
    print(f"library: seconds={library_s:.2f} responses_per_s={len(rows) / library_s:,.0f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        cli_args = argparse.Namespace(input=str(path), json=True, skip_bad=False)
        out = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = cmd_quality_score(cli_args, None)
        cli_s = time.perf_counter() - start
    scored = len(json.loads(out.getvalue()))
    print(f"cli: exit={code} scored={scored} seconds={cli_s:.2f}")
    print(f"responses_per_s={scored / cli_s:.0f}")


if __name__ == "__main__":
    main()
