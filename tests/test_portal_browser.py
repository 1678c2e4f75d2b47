"""The portal in a real browser: Playwright driving Debian's chromium against the portal started as
`make run` starts it (``python -m portal --host 127.0.0.1 --port N`` on an OPTIINFRA_HOME holding the
sandbox fleet, a few hours of its metrics and a spot recommendation), users created with the CLI.

An approver logs in, sees each dashboard with data, opens the recommendation, approves it, and watches
the real staged executor (run here, on the sandbox, with a quality fault on spot) apply 10% and 50% and
roll back, explained, without a reload. A viewer cannot approve; a user of another customer sees neither
the recommendation nor its fleet, in the pages or through the API. Screenshots of every page are kept
under test-artifacts/portal/ (or $OPTIINFRA_TEST_ARTIFACTS).

Skipped, saying why, only when chromium or Playwright cannot be found (`make test` installs chromium).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from optiinfra_assets import sandbox
from optiinfra_assets.agents import CAPABILITIES
from optiinfra_assets.agents.baselines import compute_baselines
from optiinfra_assets.agents.capability import Finding, Proposal, risk_level
from optiinfra_assets.agents.coordination import validation_status
from optiinfra_assets.agents.cost.spot_migration import SpotMigration
from optiinfra_assets.agents.rollout import RolloutContext, execute
from optiinfra_assets.config import DecisionSettings
from optiinfra_assets.ingest import ingest
from optiinfra_assets.models import Fault, FaultKind, Recommendation, Risk
from optiinfra_assets.notifications import record_findings
from optiinfra_assets.snapshot import BaselineStat, FleetSnapshot
from optiinfra_assets.workflow import ensure_sandbox_fleet, load_snapshot, validate_change
from resources.memory_store import QdrantMemoryStore
from resources.metric_store import open_metric_store
from resources.state_store import StateStore, state_store_url
from resources.targets import SandboxTarget

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip: playwright)"
)
expect = playwright_api.expect
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium found (`make test` installs Debian's chromium; browsers are not downloaded)",
    ),
]

SEED = 7
DEP = "acme-chat-8b"
PASSWORD = "browser test password"
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
ARTIFACTS = Path(os.environ.get("OPTIINFRA_TEST_ARTIFACTS", REPO / "test-artifacts")) / "portal"


@dataclass
class Site:
    url: str
    home: Path
    state: StateStore
    rec_id: str
    globex_rec_id: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spot_recommendation(
    state: StateStore, snapshot: FleetSnapshot, rec_id: str, deployment: str
) -> Recommendation:
    """The spot capability's own proposal for the deployment, validated by the other agents on the
    ingested metrics' baselines, stored as the analysis would."""
    cap = SpotMigration()
    (proposal,) = [
        p
        for p in cap.analyze(snapshot, DecisionSettings())
        if isinstance(p, Proposal) and p.deployment_id == deployment
    ]
    validations = validate_change(cap, proposal, snapshot, DecisionSettings())
    rec = Recommendation(
        id=rec_id,
        status=validation_status(validations),
        validations=validations,
        kind=cap.kind,
        customer_id=proposal.customer_id,
        deployment_id=deployment,
        created_at=NOW,
        expires_at=NOW + timedelta(hours=24),
        current=proposal.current,
        desired=proposal.desired,
        stages=list(cap.stages or DecisionSettings().rollout_stages),
        estimate=proposal.estimate,
        risk=risk_level(proposal.risk_score, DecisionSettings()),
        risk_score=proposal.risk_score,
        summary=proposal.summary,
        evidence=proposal.evidence,
        features=cap.features(proposal),
    )
    assert state.add_recommendation(rec)
    return rec


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "OPTIINFRA_HOME": str(home),
        "OPTIINFRA_DATABASE_URL": "",
        "OPTIINFRA_CLICKHOUSE_URL": "",
        "OPTIINFRA_PORTAL_LIVE_POLL_S": "0.5",
    }
    state = StateStore(state_store_url("", home))
    state.migrate()
    ensure_sandbox_fleet(state, SEED, NOW - timedelta(hours=8))
    frames = sandbox.generate(
        state.list_customers(),
        state.list_deployments(),
        state.list_instances(include_ended=True),
        [],
        NOW - timedelta(hours=8),
        NOW,
        seed=SEED,
        step_s=60,
        quality_sample_s=60,
    )
    metrics = open_metric_store("", home)
    metrics.migrate()
    with metrics.session():
        for domain, frame in frames.items():
            ingest(metrics, domain, frame, state.instance_index())
            compute_baselines(metrics, domain, NOW)
    snapshot = load_snapshot(state, metrics, NOW)
    metrics.close()
    rec = _spot_recommendation(state, snapshot, "rec-browser-acme", DEP)
    assert rec.status.value == "pending", rec.validations
    other = _spot_recommendation(state, snapshot, "rec-browser-globex", "globex-rag-qwen")
    cli = [sys.executable, "-m", "optiinfra_assets.cli", "users", "add"]
    for name, role, customers in [
        ("ann", "approver", "acme"),
        ("vic", "viewer", "acme"),
        ("gus", "approver", "globex"),
    ]:
        subprocess.run(
            [*cli, name, "--role", role, "--customers", customers, "--max-risk", "high"],
            input=PASSWORD + "\n",
            text=True,
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "portal", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert server.stdout is not None
    banner = server.stdout.readline()
    assert f"OptiInfra portal on http://127.0.0.1:{port}" in banner, banner
    _wait_until_up(port)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield Site(f"http://127.0.0.1:{port}", home, state, rec.id, other.id)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the portal did not listen on port {port}")


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: chromium's sandbox cannot start as root (CI runs as root).
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def _no_outside_requests(context, site: Site) -> list[str]:
    """Abort, and list, every request that leaves the portal: nothing may come from a CDN."""
    outside: list[str] = []

    def guard(route) -> None:
        if route.request.url.startswith(site.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    return outside


def _login(browser, site: Site, user: str) -> tuple[object, list[str]]:
    """A fresh browser context logged in through the form; the page and its JavaScript errors (and any
    request that left the portal, which is one too)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    errors = _no_outside_requests(context, site)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{site.url}/")
    assert page.url.endswith("/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{site.url}/")
    return page, errors


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _rollout_with_quality_fault(site: Site) -> None:
    """The real staged executor on the sandbox fleet; the spot replicas lose 12% quality, so a stage's A/B
    test (at 10% or 50%: the sampled requests decide when the evidence is clear) fails and the change rolls
    back. Each soak also waits a real second, so that the
    browser sees each stage arrive."""
    clock_now = [NOW]
    clock = lambda: clock_now[0]  # noqa: E731 - the executor's clock

    def soak(seconds: float) -> None:
        clock_now[0] += timedelta(seconds=seconds)
        time.sleep(1.5)

    state = StateStore(state_store_url("", site.home))
    state.add_fault(
        Fault(
            deployment_id=DEP,
            kind=FaultKind.QUALITY_DEGRADATION,
            params={"drop_pct": 12, "scope": "spot"},
            created_at=NOW,
        )
    )
    target = SandboxTarget(state, SEED, clock=clock)
    p95 = target.observe(DEP, 60)["latency_p95_ms"]
    ctx = RolloutContext(
        state=state,
        target=target,
        memory=QdrantMemoryStore(path=site.home / "qdrant-executor"),
        baselines={
            "quality_score": BaselineStat(median=0.88, mad=0.02, p05=0.83, p95=0.93, n=5000),
            "latency_p95_ms": BaselineStat(median=p95, mad=0.1 * p95, p05=0.8 * p95, p95=1.2 * p95, n=5000),
        },
        capabilities=CAPABILITIES,
        soak_s=30.0,
        observe_s=60,
        clock=clock,
        sleep=soak,
    )
    execute(ctx, site.rec_id, run_id="browser-test")


def test_an_approver_sees_dashboards_approves_and_watches_the_rollout_roll_back(site: Site, browser) -> None:
    page, errors = _login(browser, site, "ann")
    page.wait_for_selector(f"#inbox tr[data-id='{site.rec_id}']")
    assert page.locator(f"#inbox tr[data-id='{site.globex_rec_id}']").count() == 0
    _shot(page, "01-inbox")

    for name in ("cost", "performance", "resource", "application"):
        page.goto(f"{site.url}/dashboards/{name}?")
        page.select_option("select[name=range]", "6h")
        first = page.locator(".panel").first
        first.wait_for()
        expect(page.locator(".panel .main-svg").first).to_be_visible()
        expect(page.locator(".panel[data-series='0']")).to_have_count(0)  # every panel has series
        assert page.locator(".panel .scatterlayer .trace").count() > 0  # lines were drawn
        _shot(page, f"02-dashboard-{name}")

    page.goto(f"{site.url}/recommendations/{site.rec_id}")
    page.wait_for_selector("#decide-form:not([hidden])")
    assert "spot_migration on acme-chat-8b" in page.inner_text("#rec-title")
    assert page.locator("#validations tbody tr").count() >= 1
    _shot(page, "03-recommendation")
    page.fill("textarea[name=comment]", "go ahead")
    page.click("#approve")
    page.wait_for_selector("#decide-result.ok")
    assert "approved by ann" in page.inner_text("#decide-result")
    page.wait_for_selector("#rec-title .badge.approved")
    _shot(page, "04-approved")

    failures: list[BaseException] = []

    def run_executor() -> None:
        try:
            _rollout_with_quality_fault(site)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    executor = threading.Thread(target=run_executor)
    executor.start()
    try:
        page.wait_for_selector("[data-stage='10']", timeout=120_000)  # arrives over SSE, no reload
        _shot(page, "05-stage-10")
        page.wait_for_selector("#execution-status .rollback", timeout=120_000)
    finally:
        executor.join(timeout=120)
        _shot(page, "06-rolled-back")
        assert not failures, (
            f"the executor failed: {failures!r}; execution: {site.state.get_execution(site.rec_id)}"
        )
    # The A/B test stops at the first stage whose evidence is clear: the 10% or the 50% stage, depending on
    # the requests sampled. The page shows the stage that failed, with the failing check's figures.
    execution = site.state.get_execution(site.rec_id)
    assert execution is not None and execution.stages
    failed_pct = execution.stages[-1].stage_pct
    assert failed_pct in (10, 50) and execution.stages[-1].check_passed is False
    explanation = page.inner_text("#execution-status")
    assert "Rolled back" in explanation and f"quality check failed at the {failed_pct}% stage" in explanation
    assert page.locator(f"[data-stage='{failed_pct}'] tr.failed").count() >= 1

    page.goto(f"{site.url}/executions")
    page.wait_for_selector(f"article.execution.rolled_back[data-id='{site.rec_id}']")
    assert "Rolled back" in page.inner_text(f"article[data-id='{site.rec_id}'] .rollback")
    _shot(page, "07-executions")
    assert errors == []


def test_a_viewer_cannot_approve(site: Site, browser) -> None:
    page, errors = _login(browser, site, "vic")
    page.goto(f"{site.url}/recommendations/{site.globex_rec_id}")
    expect(page.locator("#rec-summary")).to_contain_text("unknown recommendation")
    page.goto(f"{site.url}/recommendations/{site.rec_id}")
    expect(page.locator("#decision-body")).to_contain_text("viewer")
    assert page.locator("#decide-form").is_hidden()
    _shot(page, "08-viewer")
    assert errors == []
    csrf = page.get_attribute("meta[name=csrf-token]", "content")
    response = page.request.post(
        f"{site.url}/api/recommendations/{site.rec_id}/decision",
        data={"decision": "reject"},
        headers={"X-CSRF-Token": csrf},
    )
    assert response.status == 403 and "viewer" in response.json()["detail"][0]["msg"]
    assert site.state.get_recommendation(site.rec_id).decided_by != "vic"


def test_an_anomaly_appears_live_as_an_alert(site: Site, browser) -> None:
    """A detector's finding, recorded as the analysis pass records it, flashes on an open page; another
    customer's does not."""
    page, errors = _login(browser, site, "ann")
    page.wait_for_selector(f"#inbox tr[data-id='{site.rec_id}']")
    alerts = page.locator("#live .flash", has_text="alert:")
    # The feed follows from when it connected: record until one arrives (each hour is a new finding).
    for hour in range(20):
        since = (NOW + timedelta(hours=hour)).isoformat()
        record_findings(
            site.state,
            [
                Finding(
                    detector="latency_anomalies",
                    customer_id=customer,
                    deployment_id=deployment,
                    severity=Risk.HIGH,
                    metric="ttft_p95_ms",
                    summary=f"TTFT p95 of {deployment} is 3x its usual level",
                    since=since,
                )
                for customer, deployment in [("globex", "globex-rag-qwen"), ("acme", DEP)]
            ],
            NOW,
        )
        try:
            alerts.first.wait_for(timeout=1_000)
            break
        except playwright_api.Error:
            continue
    expect(alerts.first).to_contain_text(f"high alert: TTFT p95 of {DEP} is 3x its usual level")
    assert "globex" not in page.inner_text("#live")
    _shot(page, "08b-live-alert")
    assert errors == []


def test_a_user_of_another_customer_sees_nothing_of_it(site: Site, browser) -> None:
    page, errors = _login(browser, site, "gus")
    page.wait_for_selector(f"#inbox tr[data-id='{site.globex_rec_id}']")
    assert page.locator(f"#inbox tr[data-id='{site.rec_id}']").count() == 0
    _shot(page, "09-other-customer-inbox")
    page.goto(f"{site.url}/recommendations/{site.rec_id}")
    expect(page.locator("#rec-summary")).to_contain_text("unknown recommendation")
    _shot(page, "10-other-customer-recommendation")
    csrf = page.get_attribute("meta[name=csrf-token]", "content")
    assert page.request.get(f"{site.url}/api/recommendations/{site.rec_id}").status == 404
    decided = page.request.post(
        f"{site.url}/api/recommendations/{site.rec_id}/decision",
        data={"decision": "reject"},
        headers={"X-CSRF-Token": csrf},
    )
    assert decided.status == 404
    board = page.request.get(f"{site.url}/api/dashboards/performance?range=6h").json()
    assert {s["customer"] for p in board["panels"] for s in p["series"]} == {"globex"}
    assert page.request.get(f"{site.url}/api/executions?customer=acme").status == 404
    assert errors == []


def test_the_api_docs_render_from_the_package_not_a_cdn(site: Site, browser) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    outside = _no_outside_requests(context, site)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{site.url}/docs")
    expect(page.locator(".opblock").first).to_be_visible()
    assert (
        page.locator(".opblock-summary-path", has_text="/api/recommendations/{rec_id}/decision").count() == 1
    )
    _shot(page, "11-api-docs")
    assert outside == [] and errors == []
