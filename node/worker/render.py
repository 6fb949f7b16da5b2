"""Rendering task templates: Jinja2's immutable sandbox, strict about undefined names.

A DAG file's author controls its templates, but they are rendered inside every
node: the sandbox keeps a template from reaching Python internals, and the
immutable variant from changing the context. An undefined name is an error (not an
empty string): a typo must fail the task, not run `rm -rf /{{ tabel }}`.

Values from a trigger's conf reach commands through `params`, so a command must
quote them: `./extract.sh {{ params.table | shell_quote }}` (shlex.quote) passes
`orders; rm -rf ~` as one argument instead of running it. `environment()` builds
the one environment every renderer uses (filters included), wherever it runs.
"""

from __future__ import annotations

import shlex
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def shell_quote(value: Any) -> str:
    """The value as one shell word (POSIX sh quoting; numbers and None as their text)."""
    return shlex.quote(value if isinstance(value, str) else str(value))


def environment() -> ImmutableSandboxedEnvironment:
    """The template environment: the immutable sandbox, strict about undefined names,
    with raftflow's filters."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["shell_quote"] = shell_quote
    return env


_ENV = environment()
_MARKERS = ("{{", "{%", "{#")


class RenderError(Exception):
    """A template could not be rendered; the message says which and why."""


def render(template: str, context: dict[str, Any], what: str) -> str:
    if not any(marker in template for marker in _MARKERS):
        return template
    try:
        return _ENV.from_string(template).render(context)
    except TemplateError as e:
        raise RenderError(f"cannot render the {what}: {type(e).__name__}: {e}") from None
    except Exception as e:  # noqa: BLE001 - e.g. a filter raising on bad input: still the template's fault
        raise RenderError(f"cannot render the {what}: {type(e).__name__}: {e}") from None


def is_template(text: str) -> bool:
    """Whether `text` has Jinja syntax; one without renders to itself (worker/renderer.py
    sends only these to a renderer process)."""
    return any(marker in text for marker in _MARKERS)
