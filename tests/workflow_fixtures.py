"""The sandbox fleet with a day of history, ingested and baselined: what workflow tests start from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.agents.baselines import compute_baselines
from optiinfra_assets.agents.rollout import execute
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.workflow import Services, ensure_sandbox_fleet, rollout_context
from resources.memory_store import open_memory_store
from resources.metric_store import open_metric_store
from resources.state_store import StateStore
from resources.targets import SandboxTarget

SEED = 11
# Near real time: the raw metric tables drop rows past their TTL (30 days), judged by the real clock.
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
HISTORY = timedelta(days=1)
GOOD = "acme-chat-8b"


class Clock:
    """Test time: the sandbox target and the executor read it; a soak advances it."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _history(state: StateStore, svc: Services) -> None:
    """A day of sandbox metrics at one sample a minute, ingested and turned into baselines."""
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(include_ended=True),
        [],
        NOW - HISTORY,
        NOW,
        seed=SEED,
        step_s=60,
        quality_sample_s=60,
    )
    known = state.instance_index()
    with svc.metrics.session():
        for domain, frame in frames.items():
            report = ingest(svc.metrics, domain, frame, known)
            assert report.quarantined == 0, report.reasons
        for domain in Domain:
            compute_baselines(svc.metrics, domain, NOW)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(state: StateStore, tmp_path: Path, clock: Clock) -> Services:
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    services = Services(
        state=state,
        metrics=metrics,
        memory=open_memory_store("", tmp_path),
        target=SandboxTarget(state, SEED, clock=clock),
        llm=None,
        soak_s=30.0,
    )
    assert ensure_sandbox_fleet(state, SEED, NOW - HISTORY)
    assert not ensure_sandbox_fleet(state, SEED, NOW)  # once only
    _history(state, services)
    return services


def run_rollout(svc: Services, clock: Clock, rec_id: str, **overrides: object):
    """Execute an approved recommendation on the test clock (soaks advance it instead of sleeping)."""
    ctx = rollout_context(svc, rec_id, clock=clock, sleep=clock.advance, observe_s=60, **overrides)
    return execute(ctx, rec_id, run_id=None)
