"""The A/B test between rollout stages on known distributions: false alarms and power over three looks.

Per simulated rollout, canary and control draw per-request quality; the test looks after each of three
stages at the samples so far (60 more per arm each time) and stops at the first "degraded". Printed:
the share of rollouts rolled back (false alarms when the arms are equal, power when the canary is worse),
with O'Brien-Fleming alpha spending and, for comparison, testing every look at the full alpha.

    .venv/bin/python bench/ab_test.py [--sims 500]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from optiinfra_assets.agents.application.ab_test import Verdict, compare_quality

LOOKS, PER_LOOK, ALPHA, GATE = 3, 60, 0.05, 5.0


def _beta(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.beta(mean * 60.0, (1 - mean) * 60.0, n)


def _mixture(rng: np.random.Generator, n: int, ruined_share: float) -> np.ndarray:
    """A broken build: a share of answers ruined (quality ~0.05), the rest as good as before."""
    out = _beta(rng, 0.88, n)
    ruined = rng.random(n) < ruined_share
    out[ruined] = rng.uniform(0.0, 0.1, int(ruined.sum()))
    return out


def _rolled_back(canary: np.ndarray, control: np.ndarray, gate: float, spending: bool, test: str) -> int:
    """The look (1..LOOKS) that said degraded, or 0."""
    for look in range(1, LOOKS + 1):
        n = look * PER_LOOK
        kwargs = {"look": look, "looks": LOOKS} if spending else {}
        result = compare_quality(canary[:n], control[:n], max_drop_pct=gate, alpha=ALPHA, test=test, **kwargs)  # type: ignore[arg-type]
        if result.verdict == Verdict.DEGRADED:
            return look
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sims", type=int, default=500)
    args = parser.parse_args()
    rng = np.random.default_rng(42)
    n = LOOKS * PER_LOOK
    scenarios = {
        "equal arms (significance only, gate 0%)": (lambda: _beta(rng, 0.88, n), 0.0),
        "equal arms (gate 5%)": (lambda: _beta(rng, 0.88, n), GATE),
        "canary 10% worse, whole distribution": (lambda: _beta(rng, 0.88 * 0.9, n), GATE),
        "canary 12% worse, 13% of answers ruined": (lambda: _mixture(rng, n, 0.13), GATE),
    }
    start = time.perf_counter()
    for name, (canary_of, gate) in scenarios.items():
        for test in ("welch", "mann-whitney"):
            for spending in (True, False):
                looks = [
                    _rolled_back(canary_of(), _beta(rng, 0.88, n), gate, spending, test)
                    for _ in range(args.sims)
                ]
                share = np.mean(np.array(looks) > 0)
                by_look = " ".join(
                    f"look{k}={np.mean(np.array(looks) == k):.3f}" for k in range(1, LOOKS + 1)
                )
                label = "obrien-fleming" if spending else "full-alpha-each-look"
                print(f"{name} | {test} | {label}: rolled_back={share:.3f} ({by_look})")
    print(
        f"sims={args.sims} looks={LOOKS} per_look_per_arm={PER_LOOK} alpha={ALPHA} seconds={time.perf_counter() - start:.1f}"
    )


if __name__ == "__main__":
    main()
