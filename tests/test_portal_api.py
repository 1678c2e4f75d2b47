"""The portal's REST API on real stores (SQLite and PostgreSQL, chdb): login and sessions, roles scoped to
customers, risk limits, CSRF, rate limits, bad input naming its field, decisions racing, executions with
rollbacks, the live feed, and the users CLI."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from optiinfra_assets.agents.capability import Finding
from optiinfra_assets.cli import main
from optiinfra_assets.models import (
    CheckResult,
    Estimate,
    Execution,
    ExecutionStatus,
    Recommendation,
    Risk,
    StageRecord,
    UnregisteredEvidence,
)
from optiinfra_assets.notifications import record_findings
from optiinfra_assets.workflow import ensure_sandbox_fleet
from portal.accounts import Accounts
from portal.app import SESSION_COOKIE, create_app
from portal.settings import PortalSettings
from resources.metric_store import MetricStore, open_metric_store
from resources.state_store import StateStore

PASSWORD = "correct horse battery"
NOW = datetime.now(UTC)


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _rec(state: StateStore, rec_id: str, deployment: str, risk: Risk = Risk.LOW) -> Recommendation:
    dep = state.get_deployment(deployment)
    rec = Recommendation(
        id=rec_id,
        kind="spot_migration",
        customer_id=dep.customer_id,
        deployment_id=deployment,
        created_at=NOW - timedelta(minutes=5),
        expires_at=NOW + timedelta(hours=24),
        current=dep.config,
        desired=dep.config.model_copy(update={"on_demand_replicas": 0, "spot_replicas": dep.replicas}),
        estimate=Estimate(monthly_savings_usd=1234.0),
        risk=risk,
        risk_score={Risk.LOW: 0.2, Risk.MEDIUM: 0.5, Risk.HIGH: 0.8}[risk],
        summary=f"move {deployment} to spot",
        evidence=UnregisteredEvidence(kind="portal_test"),
    )
    assert state.add_recommendation(rec)
    return rec


@pytest.fixture(scope="module")
def portal_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricStore]:
    """One chdb store for the module (the API tests read no metrics; the dashboards test has its own)."""
    metrics = open_metric_store("", tmp_path_factory.mktemp("metrics"))
    metrics.migrate()
    yield metrics
    metrics.close()


@pytest.fixture(autouse=True)
def _cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests hash dozens of passwords: a lower scrypt cost, the same code path."""
    monkeypatch.setattr("portal.accounts._SCRYPT_N", 2**10)


@pytest.fixture
def world(state: StateStore, portal_metrics: MetricStore) -> Iterator[tuple[StateStore, TestClient, Clock]]:
    """The sandbox fleet, recommendations for two customers, users of each role, and the app."""
    ensure_sandbox_fleet(state, seed=1, now=NOW)
    _rec(state, "rec-acme-low", "acme-chat-8b")
    _rec(state, "rec-acme-high", "acme-chat-70b", Risk.HIGH)
    _rec(state, "rec-globex", "globex-rag-qwen")
    accounts = Accounts(state)
    for name, role, customers, risk in [
        ("ann", "approver", ["acme"], "low"),
        ("bob", "approver", ["acme"], "medium"),
        ("vic", "viewer", ["acme"], "high"),
        ("gus", "approver", ["globex"], "high"),
        ("ada", "admin", ["*"], "high"),
    ]:
        accounts.add_user(name, role, customers, risk, PASSWORD, by="test")
    clock = Clock()
    settings = PortalSettings(login_attempts_per_min=5, decisions_per_min=50, max_body_bytes=4096)
    with TestClient(create_app(state, portal_metrics, settings, clock=clock)) as client:
        yield state, client, clock


def login(client: TestClient, name: str) -> dict[str, str]:
    response = client.post("/api/login", json={"username": name, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def loc(response) -> list[str]:
    return response.json()["detail"][0]["loc"]


def test_login_refuses_wrong_passwords_and_limits_attempts(world) -> None:
    _, client, _ = world
    wrong = client.post("/api/login", json={"username": "ann", "password": "nope"})
    assert wrong.status_code == 401 and loc(wrong) == ["body", "password"]
    unknown = client.post("/api/login", json={"username": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401
    for _ in range(4):  # five attempts a minute (the fixture's limit), whether right or wrong
        client.post("/api/login", json={"username": "ann", "password": "nope"})
    limited = client.post("/api/login", json={"username": "ann", "password": PASSWORD})
    assert limited.status_code == 429 and loc(limited) == ["body", "username"]
    assert client.get("/api/me").status_code == 401


def test_every_call_needs_a_live_session(world) -> None:
    _, client, clock = world
    assert client.get("/api/recommendations").status_code == 401
    bad = client.get("/api/recommendations", headers={"Authorization": "Bearer forged"})
    assert bad.status_code == 401 and loc(bad) == ["header", "authorization"]
    headers = login(client, "ann")
    assert client.get("/api/me", headers=headers).json()["visible_customers"] == ["acme"]
    clock.now += timedelta(minutes=PortalSettings().session_ttl_min + 1)
    expired = client.get("/api/me", headers=headers)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"][0]["msg"]


def test_a_customer_never_sees_another_customers_fleet(world) -> None:
    _, client, _ = world
    gus = login(client, "gus")
    ids = {r["id"] for r in client.get("/api/recommendations", headers=gus).json()}
    assert ids == {"rec-globex"}
    assert {d["customer_id"] for d in client.get("/api/deployments", headers=gus).json()} == {"globex"}
    assert [c["id"] for c in client.get("/api/customers", headers=gus).json()] == ["globex"]
    for response in (
        client.get("/api/recommendations/rec-acme-low", headers=gus),
        client.post("/api/recommendations/rec-acme-low/decision", headers=gus, json={"decision": "approve"}),
    ):
        assert response.status_code == 404 and loc(response) == ["path", "rec_id"]
    other = client.get("/api/recommendations?customer=acme", headers=gus)
    assert other.status_code == 404 and loc(other) == ["query", "customer"]
    dash = client.get("/api/dashboards/cost?deployment=acme-chat-8b", headers=gus)
    assert dash.status_code == 404 and loc(dash) == ["query", "deployment"]
    ada = login(client, "ada")
    assert {r["id"] for r in client.get("/api/recommendations", headers=ada).json()} >= {
        "rec-acme-low",
        "rec-globex",
    }


def test_roles_and_risk_limits_decide_who_may_approve(world) -> None:
    state, client, _ = world
    vic = client.post(
        "/api/recommendations/rec-acme-low/decision",
        headers=login(client, "vic"),
        json={"decision": "approve"},
    )
    assert vic.status_code == 403 and "viewer" in vic.json()["detail"][0]["msg"]
    ann = login(client, "ann")
    too_risky = client.post(
        "/api/recommendations/rec-acme-high/decision", headers=ann, json={"decision": "approve"}
    )
    assert too_risky.status_code == 403 and "up to low risk" in too_risky.json()["detail"][0]["msg"]
    view = client.get("/api/recommendations/rec-acme-high", headers=ann).json()
    assert view["may_decide"] == {"allowed": False, "reason": view["may_decide"]["reason"]}
    ok = client.post(
        "/api/recommendations/rec-acme-low/decision",
        headers=ann,
        json={"decision": "approve", "comment": "go"},
    )
    assert ok.status_code == 200 and ok.json()["by"] == "ann" and ok.json()["via"] == "ui"
    assert state.get_recommendation("rec-acme-low").decided_by == "ann"
    again = client.post(
        "/api/recommendations/rec-acme-low/decision", headers=ann, json={"decision": "reject"}
    )
    assert again.status_code == 409 and "already approved" in again.json()["detail"][0]["msg"]
    assert client.get("/api/recommendations/rec-acme-low", headers=ann).json()["approval"]["comment"] == "go"


def test_cookie_sessions_need_the_csrf_token_to_post(world) -> None:
    _, client, _ = world
    body = client.post("/api/login", json={"username": "bob", "password": PASSWORD}).json()
    assert client.cookies.get(SESSION_COOKIE)
    no_token = client.post("/api/recommendations/rec-acme-low/decision", json={"decision": "reject"})
    assert no_token.status_code == 403 and loc(no_token) == ["header", "x-csrf-token"]
    ok = client.post(
        "/api/recommendations/rec-acme-low/decision",
        json={"decision": "reject", "comment": "not now"},
        headers={"X-CSRF-Token": body["csrf_token"]},
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "payload", "expected_loc"),
    [
        ("get", "/api/recommendations/x'%20OR%201=1--", None, ["path", "rec_id"]),
        ("get", "/api/recommendations/%3Cscript%3E", None, ["path", "rec_id"]),
        ("get", "/api/recommendations/rec-unknown", None, ["path", "rec_id"]),
        ("get", "/api/recommendations?limit=abc", None, ["query", "limit"]),
        ("get", "/api/recommendations?limit=0", None, ["query", "limit"]),
        ("get", "/api/recommendations?status=bogus", None, ["query", "status"]),
        ("get", "/api/recommendations?customer=acme';DROP%20TABLE%20x", None, ["query", "customer"]),
        ("get", "/api/executions?status=done", None, ["query", "status"]),
        ("get", "/api/dashboards/secrets", None, ["path", "name"]),
        ("get", "/api/dashboards/cost?range=1y", None, ["query", "range"]),
        ("post", "/api/recommendations/rec-acme-low/decision", {"decision": "maybe"}, ["body", "decision"]),
        ("post", "/api/recommendations/rec-acme-low/decision", {"decision": 1}, ["body", "decision"]),
        ("post", "/api/recommendations/rec-acme-low/decision", {"comment": "x"}, ["body", "decision"]),
        (
            "post",
            "/api/recommendations/rec-acme-low/decision",
            {"decision": "approve", "comment": "x" * 2001},
            ["body", "comment"],
        ),
        (
            "post",
            "/api/recommendations/rec-acme-low/decision",
            {"decision": "approve", "by": "someone else"},
            ["body", "by"],
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(world, method, path, payload, expected_loc) -> None:
    state, client, _ = world
    headers = login(client, "ada")
    response = getattr(client, method)(path, headers=headers, **({"json": payload} if payload else {}))
    assert 400 <= response.status_code < 500, response.text
    assert loc(response)[: len(expected_loc)] == expected_loc, response.json()
    assert state.get_recommendation("rec-acme-low").status.value == "pending"


def test_oversized_bodies_are_refused(world) -> None:
    _, client, _ = world
    headers = login(client, "ada")
    big = client.post(
        "/api/recommendations/rec-acme-low/decision",
        headers=headers,
        content=json.dumps({"decision": "approve", "comment": "x" * 10_000}),
    )
    assert big.status_code == 413 and loc(big) == ["body"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"decision": "approve", "comment": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    streamed = client.post("/api/recommendations/rec-acme-low/decision", headers=headers, content=chunks())
    assert streamed.status_code == 413


def test_decisions_racing_from_two_browsers_make_one_execution(world) -> None:
    state, client, _ = world
    sessions = [login(client, "bob"), login(client, "ada")]
    results: list[int] = []
    barrier = threading.Barrier(2)

    def decide(headers: dict[str, str]) -> None:
        barrier.wait()
        response = client.post(
            "/api/recommendations/rec-acme-low/decision", headers=headers, json={"decision": "approve"}
        )
        results.append(response.status_code)

    threads = [threading.Thread(target=decide, args=(h,)) for h in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409]
    approvals = [a for a in state.approvals_since(0) if a.recommendation_id == "rec-acme-low"]
    assert len(approvals) == 1  # approval_sensor launches one executor run per approval


def test_execution_history_shows_checks_and_rollbacks(world) -> None:
    state, client, _ = world
    rec = state.get_recommendation("rec-acme-low")
    state.start_execution(rec.id, "run-1", rec.current, NOW)
    failed_check = CheckResult(
        name="quality_gate",
        passed=False,
        detail="quality 8.1% below baseline",
        value=0.71,
        baseline=0.77,
        threshold=5.0,
    )
    state.save_execution(
        Execution(
            recommendation_id=rec.id,
            status=ExecutionStatus.ROLLED_BACK,
            stage=10,
            started_at=NOW,
            finished_at=NOW,
            reason="quality_gate failed at 10%",
            run_id="run-1",
            before=rec.current,
            stages=[
                StageRecord(
                    stage_pct=10, target_count=1, applied_at=NOW, checks=[failed_check], check_passed=False
                )
            ],
        )
    )
    rows = client.get("/api/executions", headers=login(client, "vic")).json()
    assert len(rows) == 1 and rows[0]["rolled_back"] and rows[0]["status"] == "rolled_back"
    check = rows[0]["stages"][0]["checks"][0]
    assert (check["value"], check["baseline"], check["threshold"]) == (0.71, 0.77, 5.0)
    assert client.get("/api/executions?status=rolled_back", headers=login(client, "gus")).json() == []
    view = client.get(f"/api/recommendations/{rec.id}", headers=login(client, "vic")).json()
    assert view["execution"]["reason"] == "quality_gate failed at 10%"


def test_the_live_feed_streams_only_the_users_customers(world) -> None:
    state, client, _ = world
    cursor = state.list_audit(newest_first=True, limit=1)[0].id
    state.audit("executor", "stage_applied", "recommendation", "rec-acme-low", {"stage_pct": 10})
    state.audit("executor", "rolled_back", "recommendation", "rec-globex", {"reason": "latency"})
    alerts = [
        Finding(
            detector="latency_anomalies",
            customer_id=customer,
            deployment_id=deployment,
            severity=Risk.HIGH,
            metric="ttft_p95_ms",
            summary=f"TTFT p95 of {deployment} is 3x its usual level",
            since=NOW.isoformat(),
        )
        for customer, deployment in [("acme", "acme-chat-8b"), ("globex", "globex-rag-qwen")]
    ]
    assert len(record_findings(state, alerts, NOW)) == 2
    headers = {**login(client, "vic"), "Last-Event-ID": str(cursor)}
    with client.stream("GET", "/api/events?max_s=1.5", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert [(e["action"], e["entity_id"]) for e in events if e["type"] == "audit"] == [
        ("stage_applied", "rec-acme-low")
    ]
    # a detector's finding arrives as an alert, for the finding's customer only
    assert [(e["entity_id"], e["detail"]["severity"]) for e in events if e["type"] == "alert"] == [
        ("acme-chat-8b", "high")
    ]
    bad = client.get("/api/events", headers={**login(client, "vic"), "Last-Event-ID": "abc"})
    assert bad.status_code == 422 and loc(bad) == ["header", "last-event-id"]


def test_users_cli_hashes_the_password_from_stdin(
    state_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPTIINFRA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTIINFRA_DATABASE_URL", state_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    args = [
        "users",
        "add",
        "carol",
        "--role",
        "approver",
        "--customers",
        "acme,globex",
        "--max-risk",
        "medium",
    ]
    assert main(args) == 0
    assert "approver of acme, globex, decides up to medium risk" in capsys.readouterr().out
    state = StateStore(state_url)
    user = Accounts(state).authenticate("carol", PASSWORD)
    assert user is not None and user.customers == ["acme", "globex"]
    assert Accounts(state).authenticate("carol", "wrong password") is None
    assert PASSWORD not in json.dumps([str(v) for v in state.list_audit()])
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(args) == 2  # exists
    assert "username: 'carol' already exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "dan", "--role", "viewer", "--customers", "acme"]) == 2
    assert "password: at least" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "add", "eve", "--role", "viewer", "--customers", "acme;drop"]) == 2
    assert "customers" in capsys.readouterr().err
    state.dispose()


def test_oidc_login_redirects_to_the_configured_issuer(state: StateStore, portal_metrics) -> None:
    """Production login as configuration: discovery from a (local) issuer's well-known document, then
    the authorization redirect with our client id, a state and a nonce."""
    issuer = _discovery_server()
    settings = PortalSettings(oidc_issuer=issuer, oidc_client_id="portal", oidc_client_secret="s3cret")
    with TestClient(create_app(state, portal_metrics, settings)) as client:
        response = client.get("/auth/oidc/login", follow_redirects=False)
    assert response.status_code == 302
    target = urlsplit(response.headers["location"])
    query = parse_qs(target.query)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{issuer}/authorize"
    assert query["client_id"] == ["portal"] and query["response_type"] == ["code"]
    assert query["redirect_uri"] == ["http://testserver/auth/oidc/callback"]
    assert query["state"] and query["nonce"] and "openid" in query["scope"][0]
    with TestClient(create_app(state, portal_metrics, PortalSettings())) as plain:
        assert plain.get("/auth/oidc/login").status_code == 404


def _discovery_server() -> str:
    class Discovery(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_port}"
            body = json.dumps(
                {
                    "issuer": base,
                    "authorization_endpoint": f"{base}/authorize",
                    "token_endpoint": f"{base}/token",
                    "jwks_uri": f"{base}/jwks",
                }
            ).encode()
            self.send_response(200 if self.path == "/.well-known/openid-configuration" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}"


def test_decisions_are_rate_limited_per_user(world) -> None:
    state, client, _ = world
    ann, bob = login(client, "ann"), login(client, "bob")
    body = {"decision": "reject", "comment": "no"}
    first = client.post("/api/recommendations/rec-acme-low/decision", json=body, headers=ann)
    assert first.status_code == 200
    for _ in range(49):  # the world allows 50 a minute; the rest are refused as already decided
        again = client.post("/api/recommendations/rec-acme-low/decision", json=body, headers=ann)
        assert again.status_code == 409
    limited = client.post("/api/recommendations/rec-acme-high/decision", json=body, headers=ann)
    assert limited.status_code == 429 and loc(limited) == ["body", "decision"]
    assert state.get_approval("rec-acme-high") is None  # refused before it reached the store
    other = client.post("/api/recommendations/rec-acme-high/decision", json=body, headers=bob)
    assert other.status_code == 403  # another user's budget is their own (bob's risk limit says no)
