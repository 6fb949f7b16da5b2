"""The UI pages (owned by the web-ui part of issue #15; this placeholder keeps the
web server's interface until it lands and is replaced whole).

Contract with app.py / session.py:
- `routes(ctx) -> list[BaseRoute]`: mounted after the JSON API and before session's
  routes (a GET /login here wins over session's fallback).
- `login_page(message, next_path) -> str`: the HTML of the login form (field
  `name="token"`, plus a hidden `next`), POSTed to /login; `message` says why the last
  try failed ("" for none). session.py serves it for GET /login and failed logins.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from .app import WebContext


def routes(ctx: WebContext) -> list[BaseRoute]:
    return []


def login_page(message: str, next_path: str) -> str:
    error = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    return ("<!doctype html><html><head><meta charset=utf-8><title>raftflow: log in</title></head><body>"
            f"<h1>raftflow</h1>{error}<form method=post action=/login>"
            f'<input type=hidden name=next value="{escape(next_path)}">'
            '<label>Token <input type=password name=token autocomplete=current-password autofocus></label> '
            "<button type=submit>Log in</button></form></body></html>")
