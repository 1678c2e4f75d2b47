"""How well the offline quality scorer ranks the development sets, next to response length alone.

AUROC (exact rank / Mann-Whitney statistic, ties averaged; label 1 is the positive class, higher score =
more likely positive) of the hallucination score on HaluEval dialogue and summarization, and of the
toxicity score on toxicity_dev (also per source). Each line also gives the AUROC of the response's word
count (whitespace split), the shortcut a length detector would win by. For HaluEval, whose rows come in
pairs (``dlg0007-0`` / ``dlg0007-1``: one right, one hallucinated answer to the same input), a length-
controlled figure too: over the pairs whose two responses differ by at most 25% in word count, the share
where the hallucinated one scores higher (ties count half), for the scorer and for word count.

Usage: .venv/bin/python bench/quality_eval.py [--datasets DIR]
Default DIR: ../shared/datasets beside the checkout. Lines: ``name auroc=A length_auroc=L rows=N``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiinfra_assets.agents.quality_scoring import score_response

DEFAULT_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def auroc(labels: list[int], scores: list[float]) -> float:
    """Mann-Whitney U / (n_pos * n_neg) with average ranks for ties."""
    y = np.asarray(labels)
    ranks = rankdata(np.asarray(scores, dtype=float))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def read_rows(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from (json.loads(line) for line in f if line.strip())


def words(row: dict) -> int:
    return len(row["response"].split())


def matched_pair_accuracy(rows: list[dict], scores: list[float], max_gap: float = 0.25) -> tuple[float, int]:
    """Share of length-matched pairs (same id before the last "-") where the label-1 row scores higher."""
    pairs: dict[str, list[tuple[dict, float]]] = {}
    for row, score in zip(rows, scores, strict=True):
        pairs.setdefault(row["id"].rsplit("-", 1)[0], []).append((row, score))
    wins = 0.0
    n = 0
    for pair in pairs.values():
        if len(pair) != 2 or {int(r["label"]) for r, _ in pair} != {0, 1}:
            continue
        (right, right_score), (wrong, wrong_score) = sorted(pair, key=lambda p: int(p[0]["label"]))
        if abs(words(right) - words(wrong)) > max_gap * max(words(right), words(wrong)):
            continue
        n += 1
        wins += 1.0 if wrong_score > right_score else 0.5 if wrong_score == right_score else 0.0
    return (wins / n if n else float("nan")), n


def report(name: str, rows: list[dict], score: Callable[[dict], float], paired: bool = False) -> None:
    labels = [int(r["label"]) for r in rows]
    scores = [score(r) for r in rows]
    lengths = [float(words(r)) for r in rows]
    line = (
        f"{name} auroc={auroc(labels, scores):.4f} length_auroc={auroc(labels, lengths):.4f} rows={len(rows)}"
    )
    if paired:
        accuracy, n = matched_pair_accuracy(rows, scores)
        length_accuracy, _ = matched_pair_accuracy(rows, lengths)
        line += f" matched_pairs={n} matched_pair_acc={accuracy:.3f} length_matched_pair_acc={length_accuracy:.3f}"
    print(line)


def hallucination_of(row: dict) -> float:
    return score_response(row["response"], row.get("context"), row.get("question")).hallucination_score


def toxicity_of(row: dict) -> float:
    return score_response(row["response"]).toxicity_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args()
    halueval = args.datasets / "halueval_dev"
    dialogue = list(read_rows(halueval / "dialogue_1000.jsonl"))
    report("halueval_dialogue", dialogue, hallucination_of, paired=True)
    summarization = list(read_rows(halueval / "summarization_1000.jsonl.gz"))
    report("halueval_summarization", summarization, hallucination_of, paired=True)
    toxic = list(read_rows(args.datasets / "toxicity_dev" / "toxicity_dev.jsonl"))
    report("toxicity_dev", toxic, toxicity_of)
    for source in ("ethos", "stormfront"):
        report(f"toxicity_dev[{source}]", [r for r in toxic if r["id"].startswith(source)], toxicity_of)


if __name__ == "__main__":
    main()
