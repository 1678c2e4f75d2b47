"""One analysis pass at fleet scale: a synthetic fleet of N instances with a week of 1-minute history.

The fleet comes from ``sandbox.synthetic_fleet`` (about 0.43 deployments per instance, 1-8 replicas
each). Its week of metrics is generated at a 60 s step (quality sampled every 60 s too) in chunks of a
bounded number of rows, and each chunk goes through ``ingest()`` as collection sends it, into a fresh
temporary OPTIINFRA_HOME (chdb, SQLite, Qdrant local). Then one analysis pass runs in one engine
session: the baselines of every domain, then the analysis (``workflow.run_analysis_pass`` where it
exists, else ``workflow.propose_spot_migrations``).

Last line: ``instances=N ingest_s=… analysis_s=… peak_rss_mib=…``; above it, each phase's seconds and the
process's peak RSS when it ended, each capability's and detector's own seconds, and each detector's
findings (count and a digest of their JSON: two versions of the code that find the same print the same). ``analysis_s`` is the baselines plus the analysis; peak RSS is the
process's (``getrusage``), generation and ingestion included.

Targets (2-core machine): at 1,000 instances analysis_s <= 20 and peak_rss_mib <= 2,048; at 10,000 at
most 10x the 1,000-instance time.
Run: ``.venv/bin/python bench/full_pass.py --instances 1000``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiinfra_assets import workflow
from optiinfra_assets.agents.baselines import compute_baselines
from optiinfra_assets.config import Settings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.sandbox import generate, synthetic_fleet
from optiinfra_assets.snapshot import FleetSnapshot

SEED = 42
HISTORY = timedelta(days=7)
STEP_S = 60
# Rows per domain generated and ingested at once (8 hours at 1,000 instances): what bounds the memory of
# generation and ingestion, and with it the process peak.
CHUNK_ROWS = 500_000
MIN_CHUNK = timedelta(hours=1)
MAX_CHUNK = timedelta(days=1)


def peak_rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux


class Phases:
    """Seconds per named phase, summed over repeats, and the process's peak RSS when each last ended;
    printed in the order first seen."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mib: dict[str, int] = {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.peak_mib[name] = peak_rss_mib()

    def total(self, prefix: str) -> float:
        return sum(s for name, s in self.seconds.items() if name.startswith(prefix))


def chunks(start: datetime, end: datetime, n_instances: int) -> Iterator[tuple[datetime, datetime]]:
    rows_per_minute = n_instances * 60 // STEP_S
    length = min(max(timedelta(minutes=CHUNK_ROWS // rows_per_minute), MIN_CHUNK), MAX_CHUNK)
    while start < end:
        yield start, min(start + length, end)
        start += length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000)
    parser.add_argument(
        "--now",
        type=datetime.fromisoformat,
        default=None,
        help="the pass's 'now', ISO with a zone (default: this minute); the same --now gives the same "
        "metrics, so two versions of the code can be compared finding for finding",
    )
    args = parser.parse_args()
    n = args.instances
    now = (args.now or datetime.now(UTC)).replace(second=0, microsecond=0)
    if now.tzinfo is None:
        parser.error(f"--now {args.now.isoformat()}: give a zone, e.g. +00:00")
    phases = Phases()
    with tempfile.TemporaryDirectory(prefix="optiinfra-full-pass-") as home:
        os.environ["OPTIINFRA_HOME"] = home
        svc = workflow.open_services(Settings(home=Path(home)))
        customers, deployments, instances = synthetic_fleet(n, SEED, now - HISTORY)
        with phases.timed("seed fleet"):
            for customer in customers:
                svc.state.upsert_customer(customer)
            for deployment in deployments:
                svc.state.upsert_deployment(deployment)
            svc.state.add_instances(instances)
        print(f"fleet: customers={len(customers)} deployments={len(deployments)} instances={len(instances)}")
        known = FleetSnapshot(customers=customers, deployments=deployments, instances=instances).owners()
        rows = 0
        for a, b in chunks(now - HISTORY, now, n):
            with phases.timed("generate"):
                frames = generate(
                    customers,
                    deployments,
                    instances,
                    [],
                    a,
                    b,
                    seed=SEED,
                    step_s=STEP_S,
                    quality_sample_s=STEP_S,
                )
            with phases.timed("ingest"), svc.metrics.session():
                for domain, frame in frames.items():
                    report = ingest(svc.metrics, domain, frame, known)
                    rows += report.accepted
            del frames
        print(f"rows={rows:,} generate_s={phases.seconds['generate']:.1f}")

        with svc.metrics.session():
            for domain in Domain:
                with phases.timed(f"analysis: baselines {domain}"):
                    compute_baselines(svc.metrics, domain, now)
            with phases.timed("analysis: run_analysis_pass"):
                report = workflow.run_analysis_pass(svc, now)
        svc.metrics.close()  # before the folder goes
        for phase, seconds in phases.seconds.items():
            print(f"  {phase:<40} {seconds:8.2f} s   peak RSS so far {phases.peak_mib[phase]:6d} MiB")
        # Inside run_analysis_pass: each capability's and detector's own analysis (the rest of the pass is
        # reading the snapshot, validation, risk, coordination and storage).
        parts = {f"capability {k}": r.seconds for k, r in report.capabilities.items()}
        parts |= {f"detector {k}": r.seconds for k, r in report.detectors.items()}
        for name, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            print(f"    {name:<38} {seconds:8.2f} s")
        for name, det in sorted(report.detectors.items()):
            digest = hashlib.sha256(
                "\n".join(f.model_dump_json() for f in det.findings).encode()
            ).hexdigest()[:12]
            print(f"  findings {name:<30} {len(det.findings):5d}   sha256 {digest}")
        print(
            f"instances={n} ingest_s={phases.seconds['ingest']:.1f} "
            f"analysis_s={phases.total('analysis:'):.1f} peak_rss_mib={peak_rss_mib()}"
        )


if __name__ == "__main__":
    main()
