"""Who is making an HTTP request, and may they: tokens, the session cookie, CSRF.

The same tokens and roles as the gRPC API (api/auth.py): a request authenticates with
`Authorization: Bearer TOKEN` (API clients), else with the session cookie
`raftflow_session` that POST /login sets (browsers). The cookie's value is the token's
secret itself, so revoking the token ends every session made with it, on every node,
and any node accepts a session another node started. The cookie is HttpOnly (scripts
cannot read it), SameSite=Strict, Secure when the server speaks HTTPS, Path=/.

Authorisation names the Client RPC an endpoint is equivalent to (GET /api/v2/dags ->
"ListDags", PATCH is_paused -> "SetPaused") and looks its role up in the ONE table,
api.auth.REQUIRED_ROLE: an endpoint cannot need another role than its RPC.

CSRF: a browser sends the cookie with any request to this host, also one a hostile
page makes it send. So a write (any method but GET/HEAD/OPTIONS) authenticated by the
cookie must also carry `Origin` (or, without it, `Referer`) equal to this server's own
scheme://host:port, or the header `X-Raftflow-CSRF: 1` (which a cross-site form cannot
set, and a cross-site script cannot without a CORS preflight we never grant). A
bearer-token request needs neither: browsers never add that header by themselves.
POST /login and /logout change the cookie and are held to the same origin rule.

Who calls: every handler in node/web (`require` first, then `acting_as` around the
operation); `routes` gives POST /login, POST /logout and a fallback GET /login
(pages.py's `login_page` draws the form).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..api import auth
from ..api.auth import Caller, Refused
from ..api.metadata import BEARER
from . import pages

COOKIE = "raftflow_session"
CSRF_HEADER = "x-raftflow-csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_FORM_MAX_BYTES = 8 * 1024     # the login form: a token (43 characters) and a path
DEFAULT_LANDING = "/dags"


class Unauthenticated(Exception):
    """No valid token came with the request (HTTP 401); `message` says what to send."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Forbidden(Exception):
    """The caller's role does not allow this, or a cookie write failed the CSRF check
    (HTTP 403); `message` says which."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _authenticator(request: Request) -> auth.Authenticator:
    authenticator: auth.Authenticator = request.app.state.ctx.auth
    return authenticator


def _bearer(request: Request) -> str | None:
    return request.headers.get("authorization")


def caller_of(request: Request) -> Caller:
    """The caller of the request's bearer token, else of its session cookie, else
    Unauthenticated. A request that sends an Authorization header is judged by it alone."""
    authenticator = _authenticator(request)
    header = _bearer(request)
    try:
        if header is not None:
            return authenticator.authenticate(header)
        secret = request.cookies.get(COOKIE)
        if secret:
            return authenticator.authenticate(BEARER + secret)
    except Refused as e:
        raise Unauthenticated(e.message) from None
    raise Unauthenticated("not authenticated: send 'Authorization: Bearer TOKEN', or log in at /login")


def by_cookie(request: Request) -> bool:
    """The request authenticates with the session cookie (it sends no Authorization)."""
    return _bearer(request) is None


def own_origin(request: Request) -> str:
    """This server's scheme://host:port as the client addressed it."""
    return f"{request.url.scheme}://{request.headers.get('host', request.url.netloc)}"


def _origin_of(value: str) -> str:
    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def check_same_origin(request: Request) -> None:
    """Forbidden unless the request comes from this server's own pages: `Origin` (or,
    without it, `Referer`) is this server's origin, or it carries `X-Raftflow-CSRF: 1`."""
    if request.headers.get(CSRF_HEADER) == "1":
        return
    origin = request.headers.get("origin")
    sent = origin if origin is not None else _origin_of(request.headers.get("referer", ""))
    if sent and sent == own_origin(request):
        return
    raise Forbidden(f"refused a cross-site request: a write with the session cookie must come from this server's "
                    f"own pages (Origin {own_origin(request)}, got {sent or 'none'}); scripts send the header "
                    "'X-Raftflow-CSRF: 1', API clients 'Authorization: Bearer TOKEN'. Nothing was changed")


def require(request: Request, rpc_name: str) -> Caller:
    """The request's caller if its role allows the Client RPC `rpc_name` (the one table,
    api.auth.REQUIRED_ROLE), else Unauthenticated / Forbidden. A cookie write must also
    pass the CSRF check."""
    caller = caller_of(request)
    try:
        auth.Authenticator.authorize(rpc_name, caller)
    except Refused as e:
        raise Forbidden(e.message) from None
    if request.method not in SAFE_METHODS and by_cookie(request):
        check_same_origin(request)
    return caller


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Run an operation as `caller`: its writes are proposed as `token:NAME`, like gRPC's."""
    with auth.acting_as(caller):
        yield


def start_session(response: Response, secret: str, https: bool) -> None:
    """Set the session cookie holding `secret` on `response`."""
    response.set_cookie(COOKIE, secret, path="/", httponly=True, samesite="strict", secure=https)


def end_session(response: Response, https: bool) -> None:
    """Clear the session cookie on `response`."""
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=https)


def local_path(value: str | None) -> str:
    """`value` if it is a path on this server (so a login cannot redirect elsewhere),
    else the landing page."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return DEFAULT_LANDING
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(ch) < 0x20 for ch in value):
        return DEFAULT_LANDING
    return value


def _login_form(message: str, next_path: str, status: int) -> HTMLResponse:
    return HTMLResponse(pages.login_page(message, next_path), status_code=status,
                        headers={"cache-control": "no-store"})


async def _read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a small POST (bounded: LOGIN_FORM_MAX_BYTES)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > LOGIN_FORM_MAX_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:    # more fields than a login form has
        return {}
    return {key: values[0] for key, values in fields.items() if values}


async def login_get(request: Request) -> Response:
    return _login_form("", local_path(request.query_params.get("next")), 200)


async def login_post(request: Request) -> Response:
    """Form field `token` (and optional `next`): a valid token starts a session and
    redirects (303) to `next` if it is a local path, else /dags; otherwise the form
    again with the reason, 401."""
    form = await _read_form(request)
    next_path = local_path(form.get("next") or request.query_params.get("next"))
    try:
        check_same_origin(request)
    except Forbidden as e:
        return _login_form(e.message, next_path, 403)
    token = form.get("token", "").strip()
    if not token:
        return _login_form("Paste a token (`raftflow tokens create NAME --role viewer` makes one).", next_path, 401)
    try:
        # (off the event loop: the lookup takes the replica lock, which apply may hold)
        await run_in_threadpool(_authenticator(request).authenticate, BEARER + token)
    except Refused as e:
        return _login_form(e.message, next_path, 401)
    response = RedirectResponse(next_path, status_code=303)
    start_session(response, token, https=request.app.state.ctx.https)
    return response


async def logout_post(request: Request) -> Response:
    try:
        check_same_origin(request)
    except Forbidden as e:
        return _login_form(e.message, DEFAULT_LANDING, 403)
    response = RedirectResponse("/login", status_code=303)
    end_session(response, https=request.app.state.ctx.https)
    return response


def routes() -> list[BaseRoute]:
    """POST /login, POST /logout, and GET /login (mounted after pages.routes, so a GET
    /login route of the pages wins; pages.login_page draws this one's form)."""
    return [
        Route("/login", login_post, methods=["POST"]),
        Route("/logout", logout_post, methods=["POST"]),
        Route("/login", login_get, methods=["GET"]),
    ]
