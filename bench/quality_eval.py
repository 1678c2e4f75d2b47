"""How well the offline quality scorer ranks the development sets, next to response length alone.

AUROC (exact rank / Mann-Whitney statistic, ties averaged; label 1 is the positive class, higher score =
more likely positive) of the hallucination score on HaluEval dialogue and summarization, and of the
toxicity score on toxicity_dev (also per source). Each line also gives the AUROC of the response's word
count (whitespace split), the shortcut a length detector would win by. For HaluEval, whose rows come in
pairs (``dlg0007-0`` / ``dlg0007-1``: one right, one hallucinated answer to the same input), a length-
controlled figure too: over the pairs whose two responses differ by at most 25% in word count, the share
where the hallucinated one scores higher (ties count half), for the scorer and for word count.

``--fit-toxicity`` adds a diagnostic: it fits the toxicity score's own form (``1 - exp(-w . features)``,
w >= 0, maximum likelihood, small L2) on one random half of toxicity_dev and scores the other half, both
ways round, and prints the mean held-out AUROC next to the shipped hand weights' AUROC on the same halves.
Nothing it fits is used by the scorer.

Usage: .venv/bin/python bench/quality_eval.py [--datasets DIR] [--fit-toxicity]
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
from scipy.optimize import minimize
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiinfra_assets.agents.quality_scoring import TOXICITY_WEIGHTS, score_response, toxicity_features

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


def _fit_toxicity_weights(features: np.ndarray, labels: np.ndarray, l2: float) -> np.ndarray:
    def loss(w: np.ndarray) -> float:
        p = np.clip(1.0 - np.exp(-features @ w), 1e-6, 1 - 1e-6)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)) + l2 * np.sum(w**2))

    start = np.full(features.shape[1], 0.5)
    return minimize(loss, start, bounds=[(0.0, None)] * features.shape[1], method="L-BFGS-B").x


def fit_toxicity_report(rows: list[dict], seed: int = 0) -> None:
    """Two-fold cross-validated fit of the toxicity weights (diagnostic only; see the module docstring)."""
    names = list(TOXICITY_WEIGHTS)
    features = np.array([[toxicity_features(r["response"])[n] for n in names] for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    hand = np.array([TOXICITY_WEIGHTS[n] for n in names])
    order = np.random.default_rng(seed).permutation(len(rows))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])

    def half_auroc(weights: np.ndarray, rows_at: np.ndarray) -> float:
        return auroc(list(labels[rows_at]), list(1.0 - np.exp(-features[rows_at] @ weights)))

    hand_auroc = np.mean([half_auroc(hand, h) for h in halves])
    for l2 in (0.001, 0.01):
        held_out = np.mean(
            [
                half_auroc(_fit_toxicity_weights(features[fit_on], labels[fit_on], l2), score_on)
                for fit_on, score_on in (halves, halves[::-1])
            ]
        )
        print(f"toxicity_fit l2={l2} held_out_auroc={held_out:.4f} hand_weights_same_halves={hand_auroc:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--fit-toxicity", action="store_true", help="add the cross-validated fit diagnostic")
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
    if args.fit_toxicity:
        fit_toxicity_report(toxic)


if __name__ == "__main__":
    main()
