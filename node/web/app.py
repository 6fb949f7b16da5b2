"""The web application and the server that runs it in the node process.

Owns `WebContext` (what handlers may use of the node), `build_app` (the routes in
their order, the error handlers, the response headers every answer carries) and
`WebServer` (uvicorn on a daemon thread with its own event loop, started and stopped
by main.py when `http_address` is set).

Routes, in this order: the JSON API (`api_v2.routes`), the pages (`pages.routes`),
session's POST /login, POST /logout and fallback GET /login, GET /metrics
(`metrics.routes`), then `/static`.

Errors: every error becomes a response here, never a traceback. Under /api/ it is
JSON `{"detail": message}` as Airflow's API answers; elsewhere a plain HTML message,
and a page that needs a login redirects to /login?next=PATH. The operations' typed
errors map to statuses in one table (`STATUS`).

Who calls: main.py (`WebContext.for_node`, `WebServer`); tests build the app with
`build_app` and drive it with Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api import cluster, errors
from ..api.auth import Authenticator
from ..api.cluster import Host
from ..api.operations import Operations, StreamLimit
from ..config import ConfigError
from ..metrics import NodeMetrics
from ..proto import client_pb2
from . import api_v2, metrics as metrics_route, pages, session
from .inputs import BadRequest

log = logging.getLogger("raftflow.web")

STATIC_DIR = Path(__file__).parent / "static"
API_PREFIX = "/api/"
# No request body the server accepts is larger (a trigger's conf is at most 64 KiB of
# JSON); a larger Content-Length is refused before it is read.
MAX_BODY_BYTES = 1024 * 1024
# Log reads served at once (Starlette's thread pool has 40 threads).
MAX_LOG_READS = 16
# Headers every response carries unless it set its own.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)

# The operations' errors as HTTP statuses (Airflow's where it has one).
STATUS: dict[type[errors.ServiceError], int] = {
    errors.Invalid: 400,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Exhausted: 429,
    errors.Unavailable: 503,
    errors.NoQuorum: 503,
    # Not 503: a client must not retry it elsewhere without its request id (it could apply twice).
    errors.OutcomeUnknown: 504,
    errors.Internal: 500,
}

TaskLogReader = Callable[[str, str, int, int], Iterator[client_pb2.LogChunk]]


@dataclass(frozen=True, slots=True)
class WebContext:
    """What the web handlers use of their node. `cluster_status()` asks every node
    (unfiltered: callers apply cluster.visible_to); `task_log(run_id, task_id, attempt,
    first_chunk)` reads an attempt's log from whichever node ran it (attempt 0: the latest)."""
    ops: Operations
    host: Host
    auth: Authenticator
    node_id: str
    https: bool
    cluster_status: Callable[[], client_pb2.ClusterStatusResponse]
    task_log: TaskLogReader
    # Log reads at once (one from a peer that hangs holds a worker thread up to its
    # timeout): past it, 429, so the other requests always find a thread.
    log_reads: StreamLimit | None = None
    # GET /metrics (web/metrics.py): this node's metrics, and whether a scrape needs a token.
    metrics: NodeMetrics | None = None
    metrics_require_token: bool = True

    @classmethod
    def for_node(cls, host: Host, auth: Authenticator, https: bool, ops: Operations | None = None,
                 metrics: NodeMetrics | None = None) -> WebContext:
        ops = ops or Operations(host.replica, host.cfg.node_id)
        fanout = ThreadPoolExecutor(max_workers=8, thread_name_prefix="web-status")
        return cls(
            ops=ops, host=host, auth=auth, node_id=host.cfg.node_id, https=https,
            cluster_status=lambda: cluster.cluster_status(host, ops, fanout),
            task_log=lambda run_id, task_id, attempt, first: cluster.task_log(host, ops, run_id, task_id, attempt,
                                                                              first),
            log_reads=StreamLimit(host.cfg.node_id, MAX_LOG_READS),
            metrics=metrics, metrics_require_token=host.cfg.metrics_require_token,
        )


def is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def error_response(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error as the caller reads it: JSON {"detail"} for the API, a short HTML page otherwise."""
    ctx = getattr(request.app.state, "ctx", None)
    headers = {"x-raftflow-node": ctx.node_id, **(headers or {})} if ctx is not None else headers
    if is_api(request):
        return JSONResponse({"detail": message}, status_code=status, headers=headers)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>raftflow: {status}</title></head>"
            f"<body><h1>{status}</h1><p>{escape(message)}</p><p><a href=/dags>DAGs</a></p></body></html>")
    return HTMLResponse(page, status_code=status, headers=headers)


def status_of(error: errors.ServiceError) -> int:
    """The HTTP status of an operation's error (its nearest class in STATUS)."""
    return next((STATUS[kind] for kind in type(error).__mro__ if kind in STATUS), 500)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ServiceError)
    status = status_of(exc)
    # Unavailable: nothing changed, and an election or a catch-up ends within seconds.
    return error_response(request, status, exc.message, {"retry-after": "1"} if status == 503 else None)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    return error_response(request, exc.status, exc.message)


async def _unauthenticated(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, session.Unauthenticated)
    if not is_api(request) and request.method in session.SAFE_METHODS:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(path, safe='')}", status_code=303)
    return error_response(request, 401, exc.message, {"www-authenticate": "Bearer"})


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, session.Forbidden)
    return error_response(request, 403, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no such page or endpoint: {request.method} {request.url.path}"
        if is_api(request):
            message += "; docs/api.md lists the endpoints served"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(request, exc.status_code, message, dict(exc.headers or {}))


async def _internal(request: Request, exc: Exception) -> Response:
    """A bug: the client gets a message naming the node (whose log has the traceback)."""
    ctx = getattr(request.app.state, "ctx", None)
    where = f"node {ctx.node_id}" if ctx else "the node"
    return error_response(request, 500, f"internal error on {where} ({type(exc).__name__}); its log has the "
                          "details. Nothing is known to have changed")


class _Guard:
    """Pure ASGI middleware: refuses a body larger than MAX_BODY_BYTES by its
    Content-Length (413) before anything reads it, and adds SECURITY_HEADERS to every
    response that did not set them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            request = Request(scope)
            text = (f"the request body is larger than {MAX_BODY_BYTES} bytes" if length.isdigit()
                    else "the Content-Length header is not a number")
            response = error_response(request, 413 if length.isdigit() else 400, text)
            await response(scope, receive, send)
            return

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in SECURITY_HEADERS if name not in present]
            await send(message)

        await self.app(scope, receive, send_guarded)


def build_app(ctx: WebContext) -> Starlette:
    """The application: the JSON API, the pages, the session routes, /metrics, /static."""
    routes = [*api_v2.routes(ctx), *pages.routes(ctx), *session.routes(),
              *metrics_route.routes(ctx.metrics, ctx.metrics_require_token),
              Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static")]
    app = Starlette(routes=routes, exception_handlers={
        errors.ServiceError: _service_error,
        BadRequest: _bad_request,
        session.Unauthenticated: _unauthenticated,
        session.Forbidden: _forbidden,
        HTTPException: _http_error,
        Exception: _internal,
    })
    app.state.ctx = ctx
    app.add_middleware(_Guard)
    return app


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be [v6]) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class _QuietServer(uvicorn.Server):
    """uvicorn's server, woken once a second instead of ten times when nothing happens
    (an idle node's cost: issue 17 part 6). uvicorn's `main_loop` ticks every 0.1 s to
    look at `should_exit` and, every tenth tick, refresh the Date header; here every
    tick refreshes it (the counter steps by 10) and `wake` ends the wait at once, so a
    stop is as quick as before."""

    TICK = 1.0

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            try:
                await asyncio.wait_for(self._woken.wait(), self.TICK)
            except asyncio.TimeoutError:
                pass

    def wake(self) -> None:
        """Let the main loop look at `should_exit` now (from any thread)."""
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            try:
                loop.call_soon_threadsafe(woken.set)
            except RuntimeError:
                pass        # the loop has closed: the server is gone already


class WebServer:
    """uvicorn serving `app` on `address` from a daemon thread with its own event loop.
    The constructor binds the address exactly and loads the TLS files (ConfigError if
    either fails, before the node starts anything); `stop` ends it within a few seconds."""

    GRACE = 2    # seconds open requests (a log that follows, a live page) get at stop

    def __init__(self, app: Any, address: str, cert_file: Path | None = None, key_file: Path | None = None) -> None:
        host, port = split_address(address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(128)
        except OSError as e:
            self._socket.close()
            raise ConfigError(f"cannot listen on http_address {address}: {e.strerror}; is the port in use, or the "
                              "address not this machine's?") from None
        self.address = f"{host}:{self._socket.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=self.GRACE,
            ssl_certfile=str(cert_file) if cert_file else None, ssl_keyfile=str(key_file) if key_file else None,
            limit_concurrency=512, server_header=False)
        try:
            config.load()
        except Exception as e:  # noqa: BLE001 - uvicorn raises ssl/OS errors of several kinds
            self._socket.close()
            raise ConfigError(f"cannot serve HTTPS on http_address {address} with {cert_file} / {key_file}: {e}") \
                from None
        # uvicorn's "Started server process" lines would name the node process as a server of
        # its own; the node logs where its web server is. Its errors (tracebacks) still show.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._server = _QuietServer(config)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except Exception:  # noqa: BLE001 - the node goes on without its web server; say so
            log.exception("the web server on %s stopped", self.address)

    def start(self, timeout: float = 10.0) -> None:
        """Serve; return once it accepts connections (or log why it did not)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            log.error("the web server on %s did not start within %.0f s", self.address, timeout)

    def stop(self) -> None:
        self._server.should_exit = True
        self._server.wake()
        if self._thread.is_alive():
            self._thread.join(self.GRACE + 3.0)
        self._socket.close()
