"""The checks of a write's own fields, shared by apply and the API operations.

A write that apply would refuse must be refused before it is proposed: otherwise
every node's journal keeps it (a 3.9 MB pool name proposed 25 times grew each
journal by 108 MB). So each handler's checks of its command's own fields (not of
the state) live here as pure functions returning the reason or None, and both
`State.apply`'s handlers and `api.operations` call them. Messages quote input only
through `limits.clip`.
"""

from __future__ import annotations

import json
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
from .model import (
    FILE_ADMIN,
    MAX_RUN_ID_BYTES,
    MAX_TOKEN_DAYS,
    MAX_XCOMS,
    REASON_LIMIT,
    RESULT_LIMIT,
    TOKEN_PROPOSER,
    XCOM_TOTAL_LIMIT,
    Role,
)
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


MAX_XCOM_KEY_CHARS = 200


def xcom_text(value: Any) -> str:
    """One XCom value as it is stored: compact JSON, non-ASCII kept (what the limits measure)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def xcoms_error(xcoms: Any) -> str | None:
    """Why the XComs an attempt pushed cannot be stored: a JSON object of at most
    MAX_XCOMS keys (non-empty strings of at most MAX_XCOM_KEY_CHARS, not "return_value",
    which is the result), each value JSON of at most RESULT_LIMIT bytes, all together at
    most XCOM_TOTAL_LIMIT."""
    if not isinstance(xcoms, str):
        return "the pushed XComs must be JSON text"
    if not xcoms:
        return None
    if len(xcoms.encode("utf-8", "replace")) > XCOM_TOTAL_LIMIT + 64 * MAX_XCOMS:
        return f"the pushed XComs hold more than {XCOM_TOTAL_LIMIT} bytes of JSON"
    try:
        pushed = parse_json(xcoms, "the pushed XComs")
        check_json(pushed, "the pushed XComs")   # (keys too: text the digest can encode)
    except ValueError as e:
        return str(e)
    if not isinstance(pushed, dict) or not pushed:
        return "the pushed XComs must be a non-empty JSON object"
    if len(pushed) > MAX_XCOMS:
        return f"a task may push at most {MAX_XCOMS} XComs; it pushed {len(pushed)}"
    for key, value in pushed.items():
        if not key or len(key) > MAX_XCOM_KEY_CHARS or key == "return_value":
            return (f"an XCom key must be 1 to {MAX_XCOM_KEY_CHARS} characters and not 'return_value' (the task's "
                    f"result), got {key[:40]!r}")
        problem = result_error(xcom_text(value))
        if problem:
            return f"XCom {key!r}: {problem.replace('a task result', 'a value')}"
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


# ------------------------------------------------------------ tokens
DAY = 86400.0
HEX = frozenset("0123456789abcdef")
# A token's secret is 32 random bytes (api/operations.py): a plain sha256 of it is
# enough. Slow, salted hashes (bcrypt, scrypt) protect guessable passwords; 256 bits
# of randomness cannot be guessed, so a fast hash keeps a lookup per call O(1).
TOKEN_HASH_CHARS = 64


def token_name_error(name: Any) -> str | None:
    if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
        return f"token name {clip(name)} is invalid: use {ID_RULE}"
    if name == FILE_ADMIN:
        return (f"the token name {FILE_ADMIN!r} is reserved for the admin token of the nodes' admin_token_file; "
                "choose another name")
    return None


def role_error(role: Any) -> str | None:
    if role not in {r.value for r in Role}:
        return f"role {clip(role)} is unknown: use {', '.join(r.value for r in Role)}"
    return None


def token_days_error(days: Any) -> str | None:
    """Expiry in whole days from now: 1 to MAX_TOKEN_DAYS (0: never)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_TOKEN_DAYS:
        return f"a token expires after 1 to {MAX_TOKEN_DAYS} days (0: never), not {clip(days)}"
    return None


def token_command_error(name: Any, role: Any, token_hash: Any, expires_at: Any, created_by: Any,
                        at: float) -> str | None:
    """Why a CreateToken's own fields are wrong (apply and the API check them alike)."""
    error = token_name_error(name) or role_error(role)
    if error:
        return error
    if not isinstance(token_hash, str) or len(token_hash) != TOKEN_HASH_CHARS or not set(token_hash) <= HEX:
        return "a token's hash must be 64 lowercase hex digits (sha256)"
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or \
            not (expires_at == 0 or at < expires_at <= at + MAX_TOKEN_DAYS * DAY):
        return f"a token expires 1 to {MAX_TOKEN_DAYS} days after it is created, or never (0)"
    if not isinstance(created_by, str) or len(created_by) > len(TOKEN_PROPOSER) + 250:
        return "created_by must be a token name"
    return None
