"""The dashboard's web application (Starlette): pages rendered on the server, the JSON API
they refresh from, and the actions (cancel, requeue, purge). Every read goes through
`ftqueue.state`.

Handlers that read Redis are plain functions, which Starlette runs in its thread pool, so a
slow Redis never stalls the event loop. A user's mistake (a bad filter, an unknown task, a
missing token) gets a one-line error page or JSON, never a traceback.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence
from urllib.parse import parse_qsl, quote, urlencode

import redis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import dead_letter, views
from ..exceptions import FtqueueError
from ..state import TASK_ID, FilterError, StateReader
from . import data
from .auth import SESSION_COOKIE, SESSION_MAX_AGE_S, Access

log = logging.getLogger("ftqueue.dashboard")
HERE = os.path.dirname(os.path.abspath(__file__))
LIVE_INTERVAL_MS = 1000
OPEN_PATHS = ("/healthz", "/login", "/static/")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/healthz"


def _task_id(raw: str) -> str:
    if not TASK_ID.fullmatch(raw):
        raise HttpError(400, f"not a task id: {raw[:200]!r}")
    return raw


def _fmt_bytes(n: Any) -> str:
    if not n:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


# Pages may not be framed (a cancel button under someone else's page) nor load anything
# from elsewhere; the JSON of a page is data, never run.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def create_app(reader: StateReader, access: Access,
               allowed_hosts: Sequence[str] = ("*",)) -> Starlette:
    """`allowed_hosts`: the Host headers to answer (a dashboard on 127.0.0.1 answers only
    its loopback names, so a page of another site cannot reach it by DNS rebinding)."""
    templates = Jinja2Templates(directory=os.path.join(HERE, "templates"))
    templates.env.filters["iso"] = views.iso
    templates.env.filters["bytes"] = _fmt_bytes

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        logged_in = access.session_valid(cookie)
        context.setdefault("data", {})
        context.setdefault("api", "")
        context.setdefault("title", "ftqueue")
        context.update(
            live_interval_ms=LIVE_INTERVAL_MS, access=access, logged_in=logged_in,
            can_act=access.actions and logged_in,
            csrf=access.csrf_for(cookie) if access.token and logged_in else "",
            path=request.url.path)
        return templates.TemplateResponse(request, name, context, status_code=status)

    def error(request: Request, status: int, message: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status=status, title=f"Error {status}",
                    message=message)

    def guarded(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Access check and one-line errors around a handler (sync ones run in a thread)."""
        import inspect

        is_async = inspect.iscoroutinefunction(handler)

        async def endpoint(request: Request) -> Response:
            path = request.url.path
            if not path.startswith(OPEN_PATHS) and not access.may_read(request.headers,
                                                                        request.cookies):
                if _wants_json(request):
                    return error(request, 401, "this dashboard needs its token: send "
                                               "'Authorization: Bearer <token>'")
                return RedirectResponse(f"/login?next={quote(str(request.url.path))}", 303)
            try:
                if is_async:
                    result = await handler(request)
                else:
                    result = await run_in_threadpool(handler, request)
            except HttpError as e:
                return error(request, e.status, str(e))
            except FilterError as e:
                return error(request, 400, str(e))
            except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
                return error(request, 503, f"cannot read Redis: {e}")
            except FtqueueError as e:
                return error(request, 503, str(e))
            except Exception as e:  # noqa: BLE001 - a page says what broke, the log says where
                log.exception("dashboard request %s failed", path)
                return error(request, 500, f"internal error: {type(e).__name__}: {e}")
            if isinstance(result, Response):
                return result
            return JSONResponse(result)
        return endpoint

    # -- JSON ----------------------------------------------------------------------------

    def healthz(request: Request) -> Any:
        reader.store.ping()
        return {"ok": True}

    def api_summary(request: Request) -> Any:
        return data.summary(reader)

    def api_nodes(request: Request) -> Any:
        return data.nodes(reader)

    def api_queues(request: Request) -> Any:
        return data.queues(reader)

    def api_schedules(request: Request) -> Any:
        return data.schedules(reader)

    def api_tasks(request: Request) -> Any:
        return data.tasks(reader, request.query_params.multi_items(), request.query_params)

    def api_task(request: Request) -> Any:
        task_id = _task_id(request.path_params["task_id"])
        detail = data.task(reader, task_id)
        if detail is None:
            raise HttpError(404, f"task {task_id} not found")
        return detail

    def bearer_only(request: Request) -> None:
        """The API's actions take the token as a bearer header (no cookie: no CSRF)."""
        refusal = access.action_refusal(request.headers, {}, None)
        if refusal:
            raise HttpError(403, refusal)

    async def checked_form(request: Request) -> dict[str, str]:
        """A page's action form: logged in, actions allowed, and its CSRF token."""
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        refusal = access.action_refusal(request.headers, request.cookies, form.get("csrf"))
        if refusal:
            raise HttpError(403, refusal)
        return form

    async def api_cancel(request: Request) -> Any:
        task_id = _task_id(request.path_params["task_id"])
        bearer_only(request)
        force = request.query_params.get("force", "") in ("1", "true", "yes")
        return {"task_id": task_id, "outcomes": await run_in_threadpool(_cancel, task_id, force)}

    async def api_requeue(request: Request) -> Any:
        task_id = _task_id(request.path_params["task_id"])
        bearer_only(request)
        return await run_in_threadpool(_requeue, task_id)

    async def api_purge(request: Request) -> Any:
        queue = request.path_params["queue"]
        bearer_only(request)
        return await run_in_threadpool(_purge, queue)

    def _cancel(task_id: str, force: bool) -> list[dict[str, str]]:
        outcomes = reader.store.cancel(task_id, force, True)
        if outcomes and outcomes[0][1] == "missing":
            raise HttpError(404, f"task {task_id} not found")
        return [{"task_id": t, "outcome": o} for t, o in outcomes]

    def _requeue(task_id: str) -> dict[str, str]:
        answer = dead_letter.requeue(reader.store, [task_id])[task_id]
        if answer == "missing":
            raise HttpError(404, f"task {task_id} not found")
        if answer != "requeued":
            raise HttpError(409, dead_letter.refusal(task_id, answer))
        return {"task_id": task_id, "outcome": answer}

    def _purge(queue: str) -> dict[str, Any]:
        if queue not in reader.queue_depths():
            raise HttpError(404, f"no queue {queue[:200]!r}")
        return {"queue": queue, "cancelled": dead_letter.purge(reader.store, queue)}

    # -- pages ---------------------------------------------------------------------------

    def overview(request: Request) -> Response:
        return page(request, "overview.html", title="Overview", api="/api/summary",
                    data=data.summary(reader))

    def tasks_page(request: Request) -> Response:
        params = request.query_params.multi_items()
        query = [(k, v) for k, v in params if k != "cursor"]
        try:
            result = data.tasks(reader, params, request.query_params)
        except FilterError as e:
            return page(request, "tasks.html", status=400, title="Tasks", api="",
                        data={"rows": [], "next_cursor": "", "filters": []}, problem=str(e),
                        form=dict(params), states=data.STATES)
        live = "" if request.query_params.get("cursor") else \
            "/api/tasks" + (f"?{urlencode(query)}" if query else "")
        next_url = ("/tasks?" + urlencode([*query, ("cursor", result["next_cursor"])])
                    if result["next_cursor"] else "")
        return page(request, "tasks.html", title="Tasks", api=live, data=result,
                    form=dict(params), states=data.STATES, next_url=next_url, problem="")

    def task_page(request: Request) -> Response:
        task_id = _task_id(request.path_params["task_id"])
        detail = data.task(reader, task_id)
        if detail is None:
            raise HttpError(404, f"task {task_id} not found")
        return page(request, "task.html", title=f"Task {task_id}",
                    api=f"/api/tasks/{task_id}", data=detail)

    def nodes_page(request: Request) -> Response:
        return page(request, "nodes.html", title="Nodes and workers", api="/api/nodes",
                    data=data.nodes(reader))

    def queues_page(request: Request) -> Response:
        return page(request, "queues.html", title="Queues", api="/api/queues",
                    data=data.queues(reader))

    def schedules_page(request: Request) -> Response:
        return page(request, "schedules.html", title="Schedules", api="/api/schedules",
                    data=data.schedules(reader))

    async def cancel_form(request: Request) -> Response:
        task_id = _task_id(request.path_params["task_id"])
        form = await checked_form(request)
        await run_in_threadpool(_cancel, task_id, form.get("force") == "1")
        return RedirectResponse(f"/tasks/{task_id}", 303)

    async def requeue_form(request: Request) -> Response:
        task_id = _task_id(request.path_params["task_id"])
        await checked_form(request)
        await run_in_threadpool(_requeue, task_id)
        return RedirectResponse(f"/tasks/{task_id}", 303)

    async def purge_form(request: Request) -> Response:
        queue = request.path_params["queue"]
        await checked_form(request)
        await run_in_threadpool(_purge, queue)
        return RedirectResponse("/queues", 303)

    async def login(request: Request) -> Response:
        target = request.query_params.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        if not access.token:
            return page(request, "login.html", title="Log in", api="", next=target,
                        problem="this dashboard has no token (FTQUEUE_DASHBOARD_TOKEN): it "
                                "is read-only and needs no login", status=404)
        if request.method == "GET":
            return page(request, "login.html", title="Log in", api="", next=target, problem="")
        form = dict(parse_qsl((await request.body()).decode(errors="replace")))
        if not access.token_matches(form.get("token", "")):
            return page(request, "login.html", title="Log in", api="", next=target,
                        problem="wrong token", status=401)
        response = RedirectResponse(target, 303)
        response.set_cookie(SESSION_COOKIE, access.new_session(), max_age=SESSION_MAX_AGE_S,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    routes = [
        Route("/healthz", guarded(healthz)),
        Route("/api/summary", guarded(api_summary)),
        Route("/api/nodes", guarded(api_nodes)),
        Route("/api/queues", guarded(api_queues)),
        Route("/api/schedules", guarded(api_schedules)),
        Route("/api/tasks", guarded(api_tasks)),
        Route("/api/tasks/{task_id}", guarded(api_task)),
        Route("/api/tasks/{task_id}/cancel", guarded(api_cancel), methods=["POST"]),
        Route("/api/tasks/{task_id}/requeue", guarded(api_requeue), methods=["POST"]),
        Route("/api/queues/{queue}/purge", guarded(api_purge), methods=["POST"]),
        Route("/", guarded(overview)),
        Route("/tasks", guarded(tasks_page)),
        Route("/tasks/{task_id}", guarded(task_page)),
        Route("/tasks/{task_id}/cancel", guarded(cancel_form), methods=["POST"]),
        Route("/tasks/{task_id}/requeue", guarded(requeue_form), methods=["POST"]),
        Route("/queues/{queue}/purge", guarded(purge_form), methods=["POST"]),
        Route("/nodes", guarded(nodes_page)),
        Route("/queues", guarded(queues_page)),
        Route("/schedules", guarded(schedules_page)),
        Route("/login", guarded(login), methods=["GET", "POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(request, 404, f"no page at {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error(request, 405, f"{request.method} is not allowed at {request.url.path}")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed},
                     middleware=[Middleware(TrustedHostMiddleware,
                                            allowed_hosts=list(allowed_hosts)),
                                 Middleware(SecureHeaders)])


class SecureHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (a plain ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)
