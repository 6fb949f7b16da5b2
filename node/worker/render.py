"""Rendering task templates: Jinja2's immutable sandbox, strict about undefined names.

A DAG file's author controls its templates, but they are rendered inside every
node: the sandbox keeps a template from reaching Python internals, and the
immutable variant from changing the context. An undefined name is an error (not an
empty string): a typo must fail the task, not run `rm -rf /{{ tabel }}`.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
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
