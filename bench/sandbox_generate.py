"""How long the sandbox takes to write its first-start history: a week at a 10 s step over the seeded
fleet (the default OPTIINFRA_BACKFILL_* settings). Last line: rows=N seconds=S rows_per_s=R."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from optiinfra_assets.sandbox import generate, initial_fleet

SEED = 42


def main() -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    customers, deployments, instances = initial_fleet(SEED, now - timedelta(days=30))
    started = time.perf_counter()
    frames = generate(
        customers, deployments, instances, [], now - timedelta(days=7), now, seed=SEED, step_s=10
    )
    seconds = time.perf_counter() - started
    rows = sum(f.height for f in frames.values())
    for domain, frame in frames.items():
        print(f"{domain}: rows={frame.height}")
    print(f"rows={rows} seconds={seconds:.2f} rows_per_s={rows / seconds:,.0f}")


if __name__ == "__main__":
    main()
