"""The checks of a write's own fields, shared by apply and the API operations.

A write that apply would refuse must be refused before it is proposed: otherwise
every node's journal keeps it (a 3.9 MB pool name proposed 25 times grew each
journal by 108 MB). So each handler's checks of its command's own fields (not of
the state) live here as pure functions returning the reason or None, and both
`State.apply`'s handlers and `api.operations` call them. Messages quote input only
through `limits.clip`.
"""

from __future__ import annotations

from typing import Any

from .limits import (
    MAX_CONF_BYTES,
    MAX_FILENAME_BYTES,
    MAX_JSON_DEPTH,
    MAX_SOURCE_BYTES,
    JsonShapeError,
    check_json,
    check_text,
    clip,
    parse_json,
)
from .model import MAX_RUN_ID_BYTES, REASON_LIMIT, RESULT_LIMIT
from .names import ID_PATTERN, ID_RULE

MAX_POOL_SLOTS = 1_000_000


def pool_error(name: Any, slots: Any) -> str | None:
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        return f"pool name {clip(name)} is invalid: use {ID_RULE}"
    if isinstance(slots, bool) or not isinstance(slots, int) or not 0 <= slots <= MAX_POOL_SLOTS:
        return f"pool slots must be an integer from 0 to {MAX_POOL_SLOTS}, got {clip(slots)}"
    return None


def reason_error(reason: Any) -> str | None:
    """A reason given by hand (cancel, clear, mark) is copied into every task it moves: bounded."""
    if not isinstance(reason, str):
        return "a reason must be a string"
    if len(reason) > REASON_LIMIT:
        return f"a reason may have at most {REASON_LIMIT} characters, not {len(reason)}"
    return None


def dag_id_error(dag_id: Any) -> str | None:
    if not isinstance(dag_id, str) or not ID_PATTERN.fullmatch(dag_id):
        return f"no DAG {clip(dag_id)} (a DAG id is {ID_RULE})"
    return None


def run_id_error(run_id: Any) -> str | None:
    if not isinstance(run_id, str) or not run_id or len(run_id.encode(errors="replace")) > MAX_RUN_ID_BYTES:
        return f"run_id must be a non-empty string of at most {MAX_RUN_ID_BYTES} bytes"
    return None


def conf_error(conf: Any) -> str | None:
    """Why `conf` cannot be a run's conf: a JSON object bounded like params."""
    if not isinstance(conf, dict):
        return "conf must be a JSON object"
    try:
        check_json(conf, "conf", max_depth=MAX_JSON_DEPTH, max_bytes=MAX_CONF_BYTES)
    except JsonShapeError as e:
        return str(e)
    return None


def source_error(source: Any, filename: Any) -> str | None:
    """Why a DAG's source text or file name cannot be stored (every node keeps them)."""
    if not isinstance(source, str) or not isinstance(filename, str):
        return "source and filename must be strings"
    try:
        check_text(source, "the DAG file's source", MAX_SOURCE_BYTES)
        check_text(filename, "the DAG file's name", MAX_FILENAME_BYTES)
    except JsonShapeError as e:
        return f"{e}; split the file, or move code into modules the tasks import"
    return None


def result_error(result: Any) -> str | None:
    """Why a task's published result cannot be stored: JSON text of at most
    RESULT_LIMIT bytes, nested at most MAX_JSON_DEPTH levels."""
    if not isinstance(result, str):
        return "a task result must be JSON text"
    if not result:
        return None
    message = f"a task result must be JSON of at most {RESULT_LIMIT} bytes, nested at most {MAX_JSON_DEPTH} levels"
    try:
        if len(result.encode()) > RESULT_LIMIT:
            return message
        check_json(parse_json(result, "the result"), "the result")
    except (ValueError, UnicodeEncodeError):
        return message
    return None
