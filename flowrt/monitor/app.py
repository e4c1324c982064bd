"""The monitor's routes: HTML pages, the JSON API, ``/metrics``, ``/healthz`` and ``/readyz``.

Read-only: nothing here changes the tenant. Everything but ``/healthz`` (and the login page
with its stylesheet) needs the bearer token once one exists, as an ``Authorization: Bearer``
header or, for a browser, the cookie the login page sets. Pages are Jinja2 with autoescape,
and a Content-Security-Policy without inline scripts, so a mail's subject or body can only
ever be text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flowrt import __version__
from flowrt.errors import FlowrtError, MplError
from flowrt.monitor.auth import TokenCheck
from flowrt.monitor.metrics import MetricsSource
from flowrt.monitor.views import NOTIFY_STATUSES, MessageQuery, QueryError, TenantViews
from flowrt.mpl.model import LogLevel, MplStatus
from flowrt.mpl.render import format_ms
from flowrt.tenant import Tenant

__all__ = ["COOKIE", "MonitorConfig", "create_app"]

COOKIE = "flowrt_monitor"
_PUBLIC = ("/healthz", "/login", "/static/")
_STATUSES = [s.value for s in MplStatus]
_REFRESH_SECONDS = 10
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclasses.dataclass
class MonitorConfig:
    """``live_states``/``runtime_up`` come from the runtime when the monitor runs inside it;
    ``token_always``: refuse everything while no token exists (a non-loopback address)."""

    tenant: Tenant
    live_states: Callable[[], dict[str, str]] | None = None
    runtime_up: Callable[[], bool] | None = None
    token_always: bool = False


Handler = Callable[[Request], Awaitable[Response]]


def create_app(config: MonitorConfig) -> Starlette:
    views = TenantViews(config.tenant, live_states=config.live_states)
    tokens = TokenCheck(config.tenant, always=config.token_always)
    in_runtime = config.live_states is not None

    def runtime_up() -> bool:
        if config.runtime_up is not None:
            return config.runtime_up()
        return views.status().alive

    metrics = MetricsSource(config.tenant, in_runtime=in_runtime, runtime_up=runtime_up)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("flowrt.monitor", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ms"] = format_ms

    def page(request: Request, name: str, status_code: int = 200, **values: Any) -> Response:
        html = env.get_template(name).render(
            request=request,
            version=__version__,
            tenant=str(config.tenant.root),
            nav=request.url.path,
            **values,
        )
        return HTMLResponse(html, status_code=status_code)

    def error_page(request: Request, status_code: int, message: str, hint: str | None) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": message, "hint": hint}, status_code=status_code)
        return page(request, "error.html", status_code, message=message, hint=hint)

    # ------------------------------------------------------------------ health

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        reasons = await run_in_threadpool(views.readiness)
        body = {"ready": not reasons, "reasons": reasons}
        return JSONResponse(body, status_code=503 if reasons else 200)

    async def metrics_endpoint(request: Request) -> Response:
        text = await run_in_threadpool(metrics.render)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ login

    async def login(request: Request) -> Response:
        target = _safe_next(request.query_params.get("next"))
        if request.method == "GET":
            return page(request, "login.html", next=target, failed=False)
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or [target])[0])
        if not tokens.accepts(token) or not tokens.required:
            return page(request, "login.html", 401, next=target, failed=True)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # ------------------------------------------------------------------ messages

    async def messages_page(request: Request) -> Response:
        query = MessageQuery.from_params(_params(request))
        rows, cursor = await run_in_threadpool(views.messages, query)
        flows = await run_in_threadpool(views.flow_names)
        params = _params(request)
        return page(
            request,
            "messages.html",
            rows=rows,
            query=query,
            statuses=_STATUSES,
            flows=flows,
            properties=[f"{n}={v}" for n, v in query.properties],
            next_url=None if cursor is None else _with(request, after=cursor),
            first_url=_with(request, after=None) if query.after else None,
            refresh=_REFRESH_SECONDS if not query.after and params.get("refresh") != ["0"] else 0,
        )

    async def message_page(request: Request) -> Response:
        entry = await run_in_threadpool(views.message, request.path_params["message_id"])
        return page(
            request,
            "message.html",
            entry=entry,
            show_content=entry.log_level is LogLevel.TRACE,
        )

    async def api_messages(request: Request) -> Response:
        query = MessageQuery.from_params(_params(request))
        rows, cursor = await run_in_threadpool(views.messages, query)
        return JSONResponse(
            {
                "messages": [row.to_dict() for row in rows],
                "next": cursor,
                "next_url": None if cursor is None else _with(request, after=cursor),
            }
        )

    async def api_message(request: Request) -> Response:
        entry = await run_in_threadpool(views.message, request.path_params["message_id"])
        data = entry.to_dict()
        if entry.log_level is not LogLevel.TRACE:  # content only at the flow's trace level
            for run in data["runs"]:
                for step in run["steps"]:
                    step["content"] = None
        return JSONResponse(data)

    # ------------------------------------------------------------------ flows, keystore

    async def flows_page(request: Request) -> Response:
        report, flows = await run_in_threadpool(views.flows)
        return page(request, "flows.html", report=report, flows=flows, refresh=_REFRESH_SECONDS)

    async def api_flows(request: Request) -> Response:
        report = await run_in_threadpool(views.status)
        return JSONResponse(report.to_dict())

    async def keystore_page(request: Request) -> Response:
        try:
            rows = await run_in_threadpool(views.keystore)
            problem = None
        except FlowrtError as exc:
            rows, problem = [], exc
        return page(request, "keystore.html", rows=rows, problem=problem)

    async def api_keystore(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(views.keystore))

    def notification_filters(request: Request) -> dict[str, Any]:
        params = request.query_params
        return {
            "recipient": params.get("to") or None,
            "status": params.get("status") or None,
            "limit": MessageQuery.from_params({"limit": params.getlist("limit")}).limit,
        }

    async def notifications_page(request: Request) -> Response:
        filters = notification_filters(request)
        rows = await run_in_threadpool(lambda: views.notifications(**filters))
        return page(
            request,
            "notifications.html",
            rows=rows,
            filters=filters,
            statuses=NOTIFY_STATUSES,
            refresh=_REFRESH_SECONDS,
        )

    async def api_notifications(request: Request) -> Response:
        filters = notification_filters(request)
        rows = await run_in_threadpool(lambda: views.notifications(**filters))
        return JSONResponse([row.to_dict() for row in rows])

    async def index(request: Request) -> Response:
        return RedirectResponse("/messages", status_code=307)

    # ------------------------------------------------------------------ wiring

    def guarded(handler: Handler) -> Handler:
        """The token check and the mapping of expected errors to statuses, for a route."""

        async def wrapped(request: Request) -> Response:
            if not request.url.path.startswith(_PUBLIC) and not tokens.accepts(_presented(request)):
                if _wants_json(request) or request.url.path in ("/metrics", "/readyz"):
                    return JSONResponse(
                        {"error": "a valid bearer token is required"},
                        status_code=401,
                        headers={"WWW-Authenticate": 'Bearer realm="flowrt"'},
                    )
                target = urllib.parse.quote(str(request.url.path) + _query(request))
                return RedirectResponse(f"/login?next={target}", status_code=303)
            try:
                response = await handler(request)
            except QueryError as exc:
                response = error_page(request, 400, str(exc), "fix the filter in the URL")
            except MplError as exc:
                # an unknown ID is not found; an ambiguous prefix or a bad cursor is the URL's fault
                code = 404 if exc.message.startswith("no MPL entry") else 400
                if exc.message.startswith("MPL database"):
                    code = 503
                response = error_page(request, code, exc.message, exc.hint)
            except FlowrtError as exc:
                response = error_page(request, 503, exc.message, exc.hint)
            response.headers.update(_SECURITY_HEADERS)
            return response

        return wrapped

    routes = [
        Route("/healthz", guarded(healthz)),
        Route("/readyz", guarded(readyz)),
        Route("/metrics", guarded(metrics_endpoint)),
        Route("/login", guarded(login), methods=["GET", "POST"]),
        Route("/", guarded(index)),
        Route("/messages", guarded(messages_page)),
        Route("/messages/{message_id}", guarded(message_page)),
        Route("/flows", guarded(flows_page)),
        Route("/keystore", guarded(keystore_page)),
        Route("/notifications", guarded(notifications_page)),
        Route("/api/messages", guarded(api_messages)),
        Route("/api/messages/{message_id}", guarded(api_message)),
        Route("/api/flows", guarded(api_flows)),
        Route("/api/keystore", guarded(api_keystore)),
        Route("/api/notifications", guarded(api_notifications)),
        Mount("/static", StaticFiles(packages=[("flowrt.monitor", "static")]), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            views.close()

    return Starlette(routes=routes, lifespan=lifespan)


def _presented(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _with(request: Request, **changes: str | None) -> str:
    """This request's path and query with some parameters replaced (None: removed)."""
    items = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    items += [(k, v) for k, v in changes.items() if v is not None]
    query = urllib.parse.urlencode(items)
    return request.url.path + (f"?{query}" if query else "")


def _safe_next(target: str | None) -> str:
    """Only a local path: the login must not redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/messages"
    return target
