"""What an HTTP request sends, read with bounds and checked: JSON bodies, query
parameters, the request-id header. Each bad input is a `BadRequest` (400 unless said)
whose message says what was wrong; nothing is proposed then.

Who calls: the handlers of node/web (api_v2.py, pages.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..core.limits import check_json, clip, parse_json
from ..core.requests import request_id_error

REQUEST_ID_HEADER = "x-raftflow-request-id"
MAX_JSON_BODY_BYTES = 256 * 1024    # a trigger's conf is at most 64 KiB; room for the rest of a body


class BadRequest(Exception):
    """The request is malformed (`status`, 400 unless said); `message` says how."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


async def read_json(request: Request, what: str = "the request body",
                    max_bytes: int = MAX_JSON_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object: at most `max_bytes`, nested at most MAX_JSON_DEPTH
    levels (checked on the text, before parsing), plain JSON; else BadRequest."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(f"{what} is larger than {max_bytes} bytes", status=413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what} is not UTF-8 text") from None
    if not text.strip():
        raise BadRequest(f"{what} is empty; send a JSON object")
    try:
        value = parse_json(text, what)
        check_json(value, what)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def request_id(request: Request) -> str:
    """The write's `X-Raftflow-Request-Id` ("" when not sent): the same id again, through
    any node, applies the write once (core/requests.py). A malformed one is a BadRequest."""
    values = request.headers.getlist(REQUEST_ID_HEADER)
    if not values:
        return ""
    if len(values) > 1:
        raise BadRequest(f"send the {REQUEST_ID_HEADER} header once, not {len(values)} times; nothing was changed")
    error = request_id_error(values[0])
    if error:
        raise BadRequest(f"bad {REQUEST_ID_HEADER} header: {error}; nothing was changed")
    return values[0]


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """Query parameter `name` as an integer in [low, high] (`default` when absent)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer, got {clip(raw)}") from None
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low} and {high}, got {value}")
    return value


def field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], what: str, default: Any = None) -> Any:
    """`body[name]` if it has one of `kinds` (absent or null: `default`), else BadRequest."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise BadRequest(f"{what}: {name} must be {_kind_names(kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise BadRequest(f"{what}: {name} must be {_kind_names(kinds)}, got {type(value).__name__}")
    return value


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {bool: "true or false", str: "a string", int: "an integer", dict: "a JSON object", list: "a list",
             float: "a number"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
