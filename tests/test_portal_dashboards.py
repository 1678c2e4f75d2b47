"""The dashboards' API on real metrics (sandbox history ingested into chdb): series per deployment or GPU
for the user's customers only, cost per hour as the raw rows add up, the SLO line, anomalies marked where
a spike was put, and the budget forecast's intervals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from fastapi.testclient import TestClient

from optiinfra_assets import sandbox
from optiinfra_assets.ingest import ingest
from optiinfra_assets.metrics import Domain
from optiinfra_assets.workflow import ensure_sandbox_fleet
from portal.accounts import Accounts
from portal.app import create_app
from portal.settings import PortalSettings
from resources.metric_store import open_metric_store
from resources.state_store import StateStore

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
HISTORY = timedelta(days=3)
STEP_S = 300
SPIKE_AT = (NOW - timedelta(hours=3)).replace(minute=0)
PASSWORD = "dashboards password"


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[tuple[TestClient, dict[Domain, pl.DataFrame]]]:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    state.migrate()
    ensure_sandbox_fleet(state, seed=3, now=NOW - HISTORY)
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(include_ended=True),
        [],
        NOW - HISTORY,
        NOW,
        seed=3,
        step_s=STEP_S,
        quality_sample_s=STEP_S,
    )
    spike = (pl.col("deployment_id") == "acme-chat-8b") & (pl.col("ts") == SPIKE_AT)
    frames[Domain.PERFORMANCE] = frames[Domain.PERFORMANCE].with_columns(
        pl.when(spike).then(pl.col("ttft_ms") * 40).otherwise(pl.col("ttft_ms")).alias("ttft_ms")
    )
    assert frames[Domain.PERFORMANCE].filter(spike).height > 0
    metrics = open_metric_store("", tmp_path)
    metrics.migrate()
    known = state.instance_index()
    with metrics.session():
        for domain, frame in frames.items():
            assert ingest(metrics, domain, frame, known).quarantined == 0
    accounts = Accounts(state)
    accounts.add_user("vic", "viewer", ["acme"], "low", PASSWORD, by="test")
    accounts.add_user("gus", "viewer", ["globex"], "low", PASSWORD, by="test")
    with TestClient(create_app(state, metrics, PortalSettings(), clock=lambda: NOW)) as client:
        yield client, frames
    metrics.close()
    state.dispose()


def _get(client: TestClient, user: str, path: str) -> dict:
    token = client.post("/api/login", json={"username": user, "password": PASSWORD}).json()["token"]
    response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def _panel(board: dict, measure: str) -> dict:
    return next(p for p in board["panels"] if p["measure"] == measure)


def test_dashboards_plot_the_users_customers_from_the_metric_store(portal) -> None:
    client, frames = portal
    cost = _get(client, "vic", "/api/dashboards/cost?range=24h")
    series = _panel(cost, "cost_usd")["series"]
    acme_deployments = set(frames[Domain.COST].filter(pl.col("customer_id") == "acme")["deployment_id"])
    assert {s["name"] for s in series} == acme_deployments >= {"acme-chat-8b", "acme-chat-70b"}
    # Cost per hour of one 5-minute bucket is what the raw rows of that bucket add up to, per hour.
    s = next(s for s in series if s["name"] == "acme-chat-8b")
    bucket = datetime.fromisoformat(s["x"][10])
    raw = frames[Domain.COST].filter(
        (pl.col("deployment_id") == "acme-chat-8b")
        & (pl.col("ts") >= bucket)
        & (pl.col("ts") < bucket + timedelta(seconds=cost["step_s"]))
    )
    assert s["y"][10] == pytest.approx(raw["cost_usd"].sum() * 3600 / cost["step_s"], rel=1e-3)

    forecast = cost["forecast"]
    assert len(forecast["point"]) == 24 and forecast["next_24h_usd"] > 0
    for lo95, lo80, mid, hi80, hi95 in zip(
        forecast["lower_95"],
        forecast["lower_80"],
        forecast["point"],
        forecast["upper_80"],
        forecast["upper_95"],
        strict=True,
    ):
        assert lo95 <= lo80 <= mid <= hi80 <= hi95
    assert set(cost["savings"]) == {"estimated", "realized"}

    perf = _get(client, "vic", "/api/dashboards/performance?range=24h&deployment=acme-chat-8b")
    assert _panel(perf, "latency_p95_ms")["slo"] == {"acme": 45_000}
    ttft = _panel(perf, "ttft_ms")["series"][0]
    assert SPIKE_AT.isoformat() in [datetime.fromisoformat(x).isoformat() for x in ttft["anomalies"]["x"]]
    resource = _get(client, "vic", "/api/dashboards/resource?range=6h")
    gpus = {s["name"] for s in _panel(resource, "gpu_util_pct")["series"]}
    acme_instances = set(frames[Domain.RESOURCE].filter(pl.col("customer_id") == "acme")["instance_id"])
    assert gpus and gpus <= acme_instances
    quality = _get(client, "vic", "/api/dashboards/application?range=24h")
    assert all(0 <= y <= 1 for s in _panel(quality, "toxicity_score")["series"] for y in s["y"])


def test_another_customers_series_never_appear(portal) -> None:
    client, _ = portal
    for name in ("cost", "performance", "resource", "application"):
        board = _get(client, "gus", f"/api/dashboards/{name}?range=24h")
        customers = {s["customer"] for p in board["panels"] for s in p["series"]}
        assert customers == {"globex"}, name
