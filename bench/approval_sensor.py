"""One tick of approval_sensor with 10,000 pending and 100 newly approved recommendations.

Usage: .venv/bin/python bench/approval_sensor.py [--database-url URL-OF-AN-EMPTY-DATABASE]
Default: SQLite in a temporary folder. Last line: tick_s=T (target <= 1 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from optiinfra_assets.catalog import default_config
from optiinfra_assets.models import Customer, Estimate, Recommendation, Risk, UnregisteredEvidence
from resources.dagster_resources import StateStoreResource
from resources.state_store import StateStore, deployments, recommendations, sqlite_url
from sensors.approvals import approval_sensor

PENDING = 10_000
CONFIG = default_config("g6e.xlarge", 4)
APPROVED = 100


def populate(state: StateStore, now: datetime) -> list[str]:
    """10,100 deployments with one pending recommendation each (bulk inserts: setup is not measured)."""
    state.upsert_customer(
        Customer(id="bench", name="Bench", slo_p95_latency_ms=2000, min_monthly_savings_usd=0)
    )
    n = PENDING + APPROVED
    dep_rows = [
        {
            "id": f"dep-{i}",
            "customer_id": "bench",
            "model": "Llama-3.1-8B",
            "instance_type": "g6e.xlarge",
            "replicas": 4,
            "engine": "vllm",
            "kv_cache_dtype": "fp16",
            "base_requests_per_s": 5.0,
            "config": CONFIG.model_dump(mode="json"),
        }
        for i in range(n)
    ]
    recs = [
        Recommendation(
            id=f"rec-{i:05d}",
            kind="spot_migration",
            customer_id="bench",
            deployment_id=f"dep-{i}",
            created_at=now,
            expires_at=now + timedelta(hours=24),
            current=CONFIG,
            desired=CONFIG.model_copy(update={"on_demand_replicas": 0, "spot_replicas": 4}),
            estimate=Estimate(monthly_savings_usd=1000.0),
            risk=Risk.LOW,
            risk_score=0.1,
            summary="bench",
            evidence=UnregisteredEvidence(kind="bench"),
        )
        for i in range(n)
    ]
    with state.engine.begin() as conn:
        conn.execute(deployments.insert(), dep_rows)
        conn.execute(recommendations.insert(), [StateStore._rec_columns(r) for r in recs])
    return [r.id for r in recs[:APPROVED]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or sqlite_url(Path(tmp) / "state.db")
        state = StateStore(url)
        state.migrate()
        now = datetime.now(UTC)
        for rec_id in populate(state, now):
            state.decide(rec_id, "approve", "bench", "", via="cli", now=now)
        counts = state.count_recommendations()
        print(f"engine={state.engine.dialect.name} recommendations={counts}")
        resource = StateStoreResource(home=tmp, database_url=url)
        with dg.instance_for_test() as instance:
            context = dg.build_sensor_context(instance=instance, resources={"state_store": resource})
            started = time.perf_counter()
            result = approval_sensor(context)
            tick_s = time.perf_counter() - started
        assert isinstance(result, dg.SensorResult) and len(result.run_requests or []) == APPROVED
        print(
            f"run_requests={len(result.run_requests or [])} cursor_keys={len(json.loads(result.cursor or '{}'))}"
        )
        print(f"tick_s={tick_s:.3f}")


if __name__ == "__main__":
    main()
