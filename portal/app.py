"""The portal's web app: the REST API (``/api``, OpenAPI at ``/docs``) and the pages that use it.

A thin layer: reading and deciding go through the project's functions (``workflow.decide``, the state
store's listings, ``MetricStore.series``), the JSON shapes are the CLI's (``recommendation_json``,
``execution_json``), and every call is authorized against the user's role and customers. A customer that
is not the user's is indistinguishable from one that does not exist (404), through the API and the pages.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Form, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.sessions import SessionMiddleware

from optiinfra_assets.cli import recommendation_json
from optiinfra_assets.commands.executions import execution_json
from optiinfra_assets.models import ExecutionStatus, Recommendation, RecommendationStatus
from optiinfra_assets.notifications import FINDING_ACTION, ChannelSpec, Notifier, latest_audit_id
from optiinfra_assets.workflow import decide
from portal.accounts import CUSTOMER_PATTERN, USERNAME_PATTERN, Accounts, PortalUser, Role, Session
from portal.dashboards import DASHBOARDS, RANGES, dashboard
from portal.security import BodyLimit, RateLimiter, refuse
from portal.settings import PortalSettings
from resources.metric_store import MetricStore
from resources.state_store import RecommendationError, StateStore, UnknownRecommendationError

SESSION_COOKIE = "optiinfra_session"
LOGIN_CSRF_COOKIE = "optiinfra_login_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
HERE = FsPath(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

RecId = Annotated[str, Path(pattern=ID_PATTERN, description="a recommendation id")]
CustomerId = Annotated[str, Path(pattern=CUSTOMER_PATTERN, description="a customer id")]
CustomerFilter = Annotated[str | None, Query(pattern=CUSTOMER_PATTERN)]
DeploymentFilter = Annotated[str | None, Query(pattern=ID_PATTERN)]


class Principal(BaseModel):
    """Who is calling: the user, their session, and whether the session came from the cookie (then
    unsafe methods need the CSRF token) or an Authorization header."""

    user: PortalUser
    session: Session
    token: str
    via_cookie: bool


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=1, max_length=1024)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "reject"]
    comment: str = Field("", max_length=2000)


class Portal:
    """The stores and guards one app serves from."""

    def __init__(
        self,
        state: StateStore,
        metrics: MetricStore,
        settings: PortalSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.state, self.metrics, self.settings, self.clock = state, metrics, settings, clock
        self.accounts = Accounts(state)
        self.login_limit = RateLimiter(settings.login_attempts_per_min)
        self.decision_limit = RateLimiter(settings.decisions_per_min)
        self.metric_lock = threading.Lock()  # one metric query at a time: the embedded engine is one session

    # ---- reading, scoped to a user ------------------------------------------------------------

    def customer_ids(self, user: PortalUser) -> list[str]:
        return user.visible([c.id for c in self.state.list_customers()])

    def scope(self, user: PortalUser, customer: str | None) -> list[str]:
        """The customers a request covers: the user's, or the one asked for if it is theirs."""
        mine = self.customer_ids(user)
        if customer is None:
            return mine
        if customer not in mine:
            raise refuse(404, ["query", "customer"], f"unknown customer {customer!r}")
        return [customer]

    def recommendation(self, user: PortalUser, rec_id: str) -> Recommendation:
        try:
            rec = self.state.get_recommendation(rec_id)
        except UnknownRecommendationError:
            rec = None
        if rec is None or not user.sees(rec.customer_id):
            raise refuse(404, ["path", "rec_id"], f"unknown recommendation {rec_id!r}")
        return rec

    def recommendation_view(self, user: PortalUser, rec: Recommendation) -> dict[str, Any]:
        allowed, why = user.may_decide(rec)
        if allowed and rec.status not in (RecommendationStatus.PENDING, RecommendationStatus.ESCALATED):
            allowed, why = False, f"it is {rec.status.value}"
        approval = self.state.get_approval(rec.id)
        execution = self.state.get_execution(rec.id)
        outcome = self.state.get_outcome(rec.id)
        return {
            **recommendation_json(rec),
            "approval": approval.model_dump(mode="json") if approval else None,
            "execution": execution_view(execution, rec) if execution else None,
            "outcome": outcome.model_dump(mode="json", exclude={"features"}) if outcome else None,
            "audit": [e.model_dump(mode="json") for e in self.state.list_audit(entity_id=rec.id, limit=500)],
            "may_decide": {"allowed": allowed, "reason": why},
        }

    def live_events(
        self, user: PortalUser, after_id: int, seen: set[str]
    ) -> tuple[list[dict[str, Any]], int]:
        """What happened since ``after_id`` that this user may see: audit entries about their
        recommendations, deployments and instances, and recommendations not seen yet."""
        events: list[dict[str, Any]] = []
        recs = {r.id: r for r in self.state.list_recommendations(limit=200)}
        deployments = {d.id: d.customer_id for d in self.state.list_deployments()}
        for rec in sorted(recs.values(), key=lambda r: r.created_at):
            if rec.id not in seen and user.sees(rec.customer_id):
                seen.add(rec.id)
                events.append({"type": "recommendation", **_rec_row(rec)})
        entries = self.state.list_audit(after_id=after_id, limit=500)
        for entry in entries:
            customer = _entry_customer(
                self.state, entry.entity_type, entry.entity_id, entry.detail, recs, deployments
            )
            if customer is None or not user.sees(customer):
                continue
            events.append(
                {
                    # a detector's finding (an anomaly, a budget alert) is an alert; the rest is the audit
                    "type": "alert" if entry.action == FINDING_ACTION else "audit",
                    "id": entry.id,
                    "at": entry.at.isoformat(),
                    "actor": entry.actor,
                    "action": entry.action,
                    "entity_type": entry.entity_type,
                    "entity_id": entry.entity_id,
                    "customer": customer,
                    "detail": json.loads(json.dumps(entry.detail, default=str)),
                }
            )
        return events, (entries[-1].id if entries else after_id)


def _entry_customer(
    state: StateStore,
    entity_type: str,
    entity_id: str,
    detail: dict[str, Any],
    recs: dict[str, Recommendation],
    deployments: dict[str, str],
) -> str | None:
    if entity_type == "recommendation":
        rec = recs.get(entity_id)
        if rec is None:
            try:
                rec = recs[entity_id] = state.get_recommendation(entity_id)
            except UnknownRecommendationError:
                return None
        return rec.customer_id
    if entity_type == "deployment":
        return deployments.get(entity_id)
    if entity_type == "customer":
        return entity_id
    if entity_type == "instance":
        return deployments.get(str(detail.get("deployment_id", "")))
    return None


def _rec_row(rec: Recommendation) -> dict[str, Any]:
    return {
        "id": rec.id,
        "kind": rec.kind,
        "status": rec.status.value,
        "status_reason": rec.status_reason,
        "customer": rec.customer_id,
        "deployment": rec.deployment_id,
        "risk": rec.risk.value,
        "estimated_monthly_savings_usd": round(rec.estimated_monthly_savings_usd, 2),
        "summary": rec.summary,
        "created_at": rec.created_at.isoformat(),
        "expires_at": rec.expires_at.isoformat(),
    }


def execution_view(execution: Any, rec: Recommendation) -> dict[str, Any]:
    """The CLI's execution JSON plus what it was about; a rollback says so in its own field."""
    return {
        **execution_json(execution),
        "kind": rec.kind,
        "customer": rec.customer_id,
        "deployment": rec.deployment_id,
        "rolled_back": execution.status is ExecutionStatus.ROLLED_BACK,
    }


# ---- dependencies ----------------------------------------------------------------------------


def get_portal(request: Request) -> Portal:
    return request.app.state.portal


def principal(
    request: Request,
    p: Annotated[Portal, Depends(get_portal)],
    authorization: Annotated[str | None, Header()] = None,
    x_csrf_token: Annotated[str | None, Header()] = None,
) -> Principal:
    """The caller, from ``Authorization: Bearer <token>`` or the session cookie; 401 if neither is a
    live session, 403 if a cookie session posts without its CSRF token."""
    token, via_cookie, loc = None, False, ["header", "authorization"]
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise refuse(401, loc, "expected 'Bearer <token>'")
        token = value.strip()
    elif request.cookies.get(SESSION_COOKIE):
        token, via_cookie, loc = request.cookies[SESSION_COOKIE], True, ["cookie", SESSION_COOKIE]
    if not token:
        raise refuse(401, loc, "not logged in")
    session = p.accounts.session(token, p.clock())
    user = p.accounts.get_user(session.username) if session else None
    if session is None or user is None:
        raise refuse(401, loc, "session expired or unknown: log in again")
    if (
        via_cookie
        and request.method not in SAFE_METHODS
        and not (x_csrf_token and secrets.compare_digest(x_csrf_token, session.csrf_token))
    ):
        raise refuse(403, ["header", "x-csrf-token"], "missing or wrong CSRF token")
    return Principal(user=user, session=session, token=token, via_cookie=via_cookie)


Caller = Annotated[Principal, Depends(principal)]
PortalDep = Annotated[Portal, Depends(get_portal)]


# ---- the app ---------------------------------------------------------------------------------


def create_app(
    state: StateStore,
    metrics: MetricStore,
    settings: PortalSettings | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    notifier: Notifier | None = None,
) -> FastAPI:
    settings = settings or PortalSettings()
    portal = Portal(state, metrics, settings, **({"clock": clock} if clock else {}))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if notifier is not None:
            thread = threading.Thread(
                target=_notify_loop, args=(notifier, settings.notify_poll_s, stop), daemon=True
            )
            thread.start()
        yield
        stop.set()
        if thread is not None:
            thread.join(timeout=5)

    app = FastAPI(
        title="OptiInfra portal API",
        description="Recommendations, decisions, executions, dashboards and notifications, per customer.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served below from the swagger-ui-bundle package: FastAPI's own loads a CDN
        redoc_url=None,
    )
    app.state.portal = portal
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        SessionMiddleware,  # only Authlib's OIDC state lives here; logins use the session table
        secret_key=secrets.token_urlsafe(32),
        https_only=settings.secure_cookies,
        same_site="lax",
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; frame-ancestors 'none'",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    _api(app, settings)
    _pages(app, settings)
    if settings.oidc_enabled:
        _oidc(app, settings)
    return app


def _notify_loop(notifier: Notifier, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            notifier.poll()
        except Exception as exc:  # a broken store must not kill the loop; the next poll retries
            print(f"portal: notifications: {type(exc).__name__}: {exc}", flush=True)


def _set_session_cookie(response: Response, token: str, session: Session, settings: PortalSettings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_min * 60,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies,
        path="/",
    )


def _login(p: Portal, request: Request, username: str, password: str) -> tuple[str, Session, PortalUser]:
    client = request.client.host if request.client else "?"
    wait = p.login_limit.hit(f"{client}:{username}")
    if wait:
        raise refuse(429, ["body", "username"], f"too many login attempts; retry in {wait:.0f} s")
    user = p.accounts.authenticate(username, password)
    if user is None:
        p.state.audit(username, "login_failed", "portal_user", username, {"client": client})
        raise refuse(401, ["body", "password"], "unknown user or wrong password")
    token, session = p.accounts.start_session(
        user.username, timedelta(minutes=p.settings.session_ttl_min), p.clock()
    )
    p.state.audit(user.username, "login", "portal_user", user.username, {"client": client})
    return token, session, user


def _api(app: FastAPI, settings: PortalSettings) -> None:
    @app.post("/api/login", tags=["session"])
    def login(body: LoginIn, request: Request, p: PortalDep) -> JSONResponse:
        """Start a session: the token (for ``Authorization: Bearer``), its CSRF token (for cookie use)
        and its expiry; the session cookie is set too."""
        token, session, user = _login(p, request, body.username, body.password)
        response = JSONResponse(
            {
                "token": token,
                "csrf_token": session.csrf_token,
                "expires_at": session.expires_at.isoformat(),
                "user": user.model_dump(mode="json"),
            }
        )
        _set_session_cookie(response, token, session, settings)
        return response

    @app.post("/api/logout", tags=["session"])
    def logout(who: Caller, p: PortalDep) -> JSONResponse:
        p.accounts.end_session(who.token)
        response = JSONResponse({"ok": True})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/api/me", tags=["session"])
    def me(who: Caller, p: PortalDep) -> dict[str, Any]:
        return {
            **who.user.model_dump(mode="json"),
            "visible_customers": p.customer_ids(who.user),
            "session_expires_at": who.session.expires_at.isoformat(),
        }

    @app.get("/api/customers", tags=["fleet"])
    def customers(who: Caller, p: PortalDep) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in p.state.list_customers() if who.user.sees(c.id)]

    @app.get("/api/deployments", tags=["fleet"])
    def deployments(who: Caller, p: PortalDep, customer: CustomerFilter = None) -> list[dict[str, Any]]:
        scope = p.scope(who.user, customer)
        return [d.model_dump(mode="json") for d in p.state.list_deployments() if d.customer_id in scope]

    @app.get("/api/recommendations", tags=["recommendations"])
    def recommendations(
        who: Caller,
        p: PortalDep,
        status: RecommendationStatus | None = None,
        kind: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        customer: CustomerFilter = None,
        deployment: DeploymentFilter = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[dict[str, Any]]:
        """The inbox: newest first, every kind, with lifecycle state and the reason for it."""
        scope = set(p.scope(who.user, customer))
        recs = p.state.list_recommendations(status=status.value if status else None, kind=kind)
        rows = [r for r in recs if r.customer_id in scope and deployment in (None, r.deployment_id)]
        return [_rec_row(r) for r in rows[:limit]]

    @app.get("/api/recommendations/{rec_id}", tags=["recommendations"])
    def recommendation(rec_id: RecId, who: Caller, p: PortalDep) -> dict[str, Any]:
        """Evidence, each agent's validation and its reason, risk with similar past outcomes, the
        decision, the execution with its stages and checks, and the audit trail."""
        return p.recommendation_view(who.user, p.recommendation(who.user, rec_id))

    @app.post("/api/recommendations/{rec_id}/decision", tags=["recommendations"])
    def decision(rec_id: RecId, body: DecisionIn, who: Caller, p: PortalDep) -> dict[str, Any]:
        """Approve or reject, as the logged-in user. 403 if their role or risk limit does not allow it,
        409 if it is no longer decidable (already decided, expired, blocked)."""
        wait = p.decision_limit.hit(who.user.username)
        if wait:
            raise refuse(429, ["body", "decision"], f"too many decisions; retry in {wait:.0f} s")
        rec = p.recommendation(who.user, rec_id)
        allowed, why = who.user.may_decide(rec)
        if not allowed:
            raise refuse(403, ["path", "rec_id"], why)
        try:
            approval = decide(p.state, rec.id, body.decision, who.user.username, body.comment, via="ui")
        except RecommendationError as exc:
            raise refuse(409, ["path", "rec_id"], str(exc)) from None
        except ValueError as exc:
            raise refuse(422, ["body"], str(exc)) from None
        return approval.model_dump(mode="json")

    @app.get("/api/executions", tags=["executions"])
    def executions(
        who: Caller,
        p: PortalDep,
        status: ExecutionStatus | None = None,
        customer: CustomerFilter = None,
        deployment: DeploymentFilter = None,
    ) -> list[dict[str, Any]]:
        """Execution history, newest first: stages, checks (value, baseline, threshold), rollbacks."""
        scope = set(p.scope(who.user, customer))
        recs = {r.id: r for r in p.state.list_recommendations()}
        out = []
        for execution in p.state.list_executions(status=status.value if status else None):
            rec = recs.get(execution.recommendation_id)
            if rec and rec.customer_id in scope and deployment in (None, rec.deployment_id):
                out.append(execution_view(execution, rec))
        return out

    @app.get("/api/dashboards/{name}", tags=["dashboards"])
    def dashboards(
        name: Literal["cost", "performance", "resource", "application"],
        who: Caller,
        p: PortalDep,
        customer: CustomerFilter = None,
        deployment: DeploymentFilter = None,
        range: Literal["1h", "6h", "24h", "7d"] = "24h",
    ) -> dict[str, Any]:
        """Series per deployment (per GPU for resources) from the metric store, anomalies marked; the
        cost dashboard adds the budget forecast (80%/95% intervals) and estimated vs realized savings."""
        scope = p.scope(who.user, customer)
        if deployment is not None:
            owner = next((d.customer_id for d in p.state.list_deployments() if d.id == deployment), None)
            if owner is None or owner not in scope:
                raise refuse(404, ["query", "deployment"], f"unknown deployment {deployment!r}")
        with p.metric_lock:
            return dashboard(p.metrics, p.state, name, scope, deployment, range, p.clock())

    @app.get("/api/customers/{customer_id}/channels", tags=["notifications"])
    def channels(customer_id: CustomerId, who: Caller, p: PortalDep) -> list[dict[str, Any]]:
        _admin_of(who.user, p, customer_id)
        return [
            c.model_dump(mode="json", exclude={"routing_key"})
            for c in Notifier(p.state).channels([customer_id])
        ]

    @app.post("/api/customers/{customer_id}/channels", tags=["notifications"], status_code=201)
    def add_channel(customer_id: CustomerId, body: ChannelSpec, who: Caller, p: PortalDep) -> dict[str, Any]:
        """Send this customer's events of the chosen kinds to Slack, PagerDuty or a webhook (admins)."""
        _admin_of(who.user, p, customer_id)
        channel = Notifier(p.state).add_channel(customer_id, body, by=who.user.username)
        return channel.model_dump(mode="json", exclude={"routing_key"})

    @app.get("/api/customers/{customer_id}/deliveries", tags=["notifications"])
    def deliveries(customer_id: CustomerId, who: Caller, p: PortalDep) -> list[dict[str, Any]]:
        """Every delivery attempt, delivered or failed with the last error (admins)."""
        _admin_of(who.user, p, customer_id)
        return [d.model_dump(mode="json") for d in Notifier(p.state).deliveries([customer_id])]

    @app.get("/api/events", tags=["live"])
    async def events(
        request: Request,
        who: Caller,
        p: PortalDep,
        last_event_id: Annotated[int | None, Header(ge=0)] = None,
        max_s: Annotated[float | None, Query(gt=0, le=86_400)] = None,
    ) -> StreamingResponse:
        """Server-sent events: ``recommendation`` (a new one), ``audit`` (a decision, a stage applied
        or checked, a rollback, an escalation, a spot loss) and ``alert`` (a detector's high or medium
        finding: an anomaly, a budget alert) for the user's customers. Resumes after
        ``Last-Event-ID``; ``max_s`` ends the stream (for scripts)."""

        async def stream() -> AsyncIterator[str]:
            after = last_event_id if last_event_id is not None else latest_audit_id(p.state)
            seen = {r.id for r in await run_in_threadpool(p.state.list_recommendations, limit=200)}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + max_s if max_s else None
            yield "retry: 2000\n\n"
            while deadline is None or loop.time() < deadline:
                if await request.is_disconnected():
                    return
                if p.accounts.session(who.token, p.clock()) is None:
                    yield "event: session_expired\ndata: {}\n\n"
                    return
                found, after = await run_in_threadpool(p.live_events, who.user, after, seen)
                for event in found:
                    yield f"id: {after}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
                yield ": alive\n\n"
                await asyncio.sleep(settings.live_poll_s)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _admin_of(user: PortalUser, p: Portal, customer_id: str) -> None:
    if customer_id not in p.customer_ids(user):
        raise refuse(404, ["path", "customer_id"], f"unknown customer {customer_id!r}")
    if user.role is not Role.ADMIN:
        raise refuse(
            403, ["path", "customer_id"], f"user {user.username!r} is not an admin of {customer_id!r}"
        )


# ---- pages -----------------------------------------------------------------------------------


@cache
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _page_user(request: Request, p: Portal) -> tuple[PortalUser, Session] | None:
    token = request.cookies.get(SESSION_COOKIE)
    session = p.accounts.session(token, p.clock()) if token else None
    user = p.accounts.get_user(session.username) if session else None
    return (user, session) if user and session else None


def _pages(app: FastAPI, settings: PortalSettings) -> None:
    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_js() -> Response:
        return Response(
            _plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"}
        )

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "docs.html", {})

    @app.get("/docs/openapi.json", include_in_schema=False)
    def docs_schema() -> dict[str, Any]:
        """The schema for the docs page: Swagger UI 4 (the newest bundled on PyPI) refuses a document
        that says 3.1, so this copy says 3.0.3; clients read /openapi.json, unchanged."""
        return {**app.openapi(), "openapi": "3.0.3"}

    @app.get("/static/swagger/{name}", include_in_schema=False)
    def swagger(name: Annotated[str, Path(pattern=r"^swagger-ui(-bundle\.js|\.css)$")]) -> Response:
        from swagger_ui_bundle import swagger_ui_path

        media = "application/javascript" if name.endswith(".js") else "text/css"
        content = (FsPath(swagger_ui_path) / name).read_text()
        return Response(content, media_type=media, headers={"Cache-Control": "max-age=86400"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: Annotated[str, Path(pattern=r"^(portal|docs)\.(js|css)$")]) -> Response:
        media = "application/javascript" if name.endswith(".js") else "text/css"
        return Response((HERE / "static" / name).read_text(), media_type=media)

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request, error: str = "") -> HTMLResponse:
        csrf = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request, "login.html", {"csrf": csrf, "error": error[:200], "oidc": settings.oidc_enabled}
        )
        response.set_cookie(
            LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=settings.secure_cookies
        )
        return response

    @app.post("/login", include_in_schema=False)
    def login_form(
        request: Request,
        p: PortalDep,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
        csrf_token: Annotated[str, Form(max_length=100)],
    ) -> Response:
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, csrf_token):
            return RedirectResponse("/login?error=form+expired%2C+try+again", status_code=303)
        try:
            token, session, _ = _login(p, request, username, password)
        except HTTPException as exc:
            message = exc.detail[0]["msg"] if isinstance(exc.detail, list) else "login failed"
            return RedirectResponse(f"/login?error={_quote(message)}", status_code=303)
        response = RedirectResponse("/", status_code=303)
        _set_session_cookie(response, token, session, settings)
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    def page(template: str, **extra: Any) -> Callable[..., Response]:
        def render(request: Request, p: PortalDep) -> Response:
            found = _page_user(request, p)
            if found is None:
                return RedirectResponse("/login", status_code=303)
            user, session = found
            context = {
                "user": user,
                "csrf": session.csrf_token,
                "customers": p.customer_ids(user),
                "dashboards": list(DASHBOARDS),
                "ranges": list(RANGES),
                "params": dict(request.path_params),
                **extra,
            }
            return templates.TemplateResponse(request, template, context)

        return render

    app.get("/", include_in_schema=False)(page("inbox.html", title="Inbox"))
    app.get("/executions", include_in_schema=False)(page("executions.html", title="Executions"))
    rec_page = page("recommendation.html", title="Recommendation")

    @app.get("/recommendations/{rec_id}", include_in_schema=False)
    def recommendation_page(rec_id: RecId, request: Request, p: PortalDep) -> Response:
        return rec_page(request, p)

    dash_page = page("dashboard.html", title="Dashboard")

    @app.get("/dashboards/{name}", include_in_schema=False)
    def dashboard_page(
        name: Literal["cost", "performance", "resource", "application"], request: Request, p: PortalDep
    ) -> Response:
        return dash_page(request, p)

    @app.post("/logout", include_in_schema=False)
    def logout_form(
        request: Request, p: PortalDep, csrf_token: Annotated[str, Form(max_length=100)]
    ) -> Response:
        found = _page_user(request, p)
        if found and secrets.compare_digest(found[1].csrf_token, csrf_token):
            p.accounts.end_session(request.cookies[SESSION_COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text[:200])


# ---- OpenID Connect (production) ---------------------------------------------------------------


def oidc_client(settings: PortalSettings) -> Any:
    """Authlib's client for the configured issuer (discovery from its well-known document)."""
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    oauth.register(
        "oidc",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile"},
    )
    return oauth.oidc


def _oidc(app: FastAPI, settings: PortalSettings) -> None:
    client = oidc_client(settings)
    app.state.oidc = client

    @app.get("/auth/oidc/login", include_in_schema=False)
    async def oidc_login(request: Request) -> Response:
        return await client.authorize_redirect(request, str(request.url_for("oidc_callback")))

    @app.get("/auth/oidc/callback", include_in_schema=False, name="oidc_callback")
    async def oidc_callback(request: Request, p: PortalDep) -> Response:
        """The identity provider says who it is; the local user of that name says what they may do."""
        token = await client.authorize_access_token(request)
        claims = token.get("userinfo") or {}
        username = str(claims.get(settings.oidc_username_claim, ""))
        user = p.accounts.get_user(username) if username else None
        if user is None:
            return RedirectResponse(f"/login?error={_quote(f'no portal user {username!r}')}", status_code=303)
            session_token, session = p.accounts.start_session(
                user.username, timedelta(minutes=settings.session_ttl_min), p.clock()
            )
        p.state.audit(user.username, "login", "portal_user", user.username, {"via": "oidc"})
        response = RedirectResponse("/", status_code=303)
        _set_session_cookie(response, session_token, session, settings)
        return response
