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

import datetime
import random
import shlex
import time
import uuid
from types import SimpleNamespace
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .xcom import with_task_instance


def shell_quote(value: Any) -> str:
    """The value as one shell word (POSIX sh quoting; numbers and None as their text)."""
    return shlex.quote(value if isinstance(value, str) else str(value))


def ds_add(ds: str, days: int) -> str:
    """Airflow's macros.ds_add: `ds` (YYYY-MM-DD) plus `days` (negative: earlier)."""
    return (datetime.datetime.strptime(ds, "%Y-%m-%d") + datetime.timedelta(days=days)).strftime("%Y-%m-%d")


def ds_format(ds: str, input_format: str, output_format: str) -> str:
    """Airflow's macros.ds_format: `ds` read with `input_format`, written with `output_format`."""
    return datetime.datetime.strptime(str(ds), input_format).strftime(output_format)


# Airflow's `macros` module, as far as templates use it (a global of every template:
# it holds modules, which the context, pickled to a renderer, could not).
MACROS = SimpleNamespace(ds_add=ds_add, ds_format=ds_format, datetime=datetime.datetime,
                         timedelta=datetime.timedelta, time=time, uuid=uuid, random=random.random)


def environment() -> ImmutableSandboxedEnvironment:
    """The template environment: the immutable sandbox, strict about undefined names,
    with raftflow's filters and Airflow's `macros`."""
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["shell_quote"] = shell_quote
    env.globals["macros"] = MACROS
    return env


_ENV = environment()
_MARKERS = ("{{", "{%", "{#")


class RenderError(Exception):
    """A template could not be rendered; the message says which and why."""


def render(template: str, context: dict[str, Any], what: str) -> str:
    if not any(marker in template for marker in _MARKERS):
        return template
    context = {**context}
    with_task_instance(context)   # (`ti.xcom_pull(...)`; the fields as before; a view given stays)
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
