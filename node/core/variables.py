"""Replicated Variables (Airflow's `Variable`): key -> string value, set with
`raftflow variables set|delete|import`, read by templates as `var.value.KEY` and
`var.json.KEY`.

A python task's callable reads them with Variable.get and changes them with
Variable.set / Variable.delete (worker/taskvars.py); its changes are committed with its
attempt's outcome (TaskFinished.variables): a lost attempt changes nothing, one that ran
again changes them again.

Owns: the rules for keys and values and their bounds, Airflow's list of sensitive
names (a variable whose key holds one of them is masked in listings for everyone but
admins, and its value is replaced by *** in the task logs of attempts that could read
it), and the handlers of SetVariable, DeleteVariable and ImportVariables (called only
by `State.apply`; each checks the whole command first, so a refused one changes
nothing, and its work is bounded by its own size).

Bounds: keys follow Airflow's key rule (1-250 characters of letters, digits and
`_ . -`), a value is at most MAX_VALUE_BYTES of UTF-8, the cluster holds at most
MAX_VARIABLES of them and MAX_TOTAL_BYTES of values in all (every attempt that uses
`var` carries them to its renderer; snapshots hold them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import commands as c
from .digest import variable_key
from .limits import clip, parse_json
from .result import Code, Result, reject

if TYPE_CHECKING:
    from .state import State

KEY_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,250}")
KEY_RULE = "1 to 250 characters from A-Z a-z 0-9 _ . - (Airflow's rule for variable keys)"
MAX_VALUE_BYTES = 64 * 1024
MAX_VARIABLES = 1000
MAX_TOTAL_BYTES = 4 * 1024 * 1024
# What one attempt may set (Variable.set / delete in a python callable): committed with its
# outcome (TaskFinished.variables), so bounded like its XComs.
MAX_TASK_CHANGES = 64
MAX_TASK_CHANGE_BYTES = 256 * 1024
# The longest JSON text of an attempt's changes: its values escaped at worst (\u00XX for
# a control character: 6 bytes), and 64 keys with their quotes and separators.
CHANGES_TEXT_LIMIT = 6 * MAX_TASK_CHANGE_BYTES + MAX_TASK_CHANGES * 300
MASK = "***"
# Airflow's secrets masker (DEFAULT_SENSITIVE_FIELDS): a key containing one of these,
# in any case, is sensitive.
SENSITIVE_WORDS = ("access_token", "api_key", "apikey", "authorization", "passphrase", "passwd", "password",
                   "private_key", "secret", "token", "keyfile_dict", "service_account")
# Airflow leaves values shorter than this unmasked (masking "a" would garble every log).
MIN_MASKED_LENGTH = 5


def is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SENSITIVE_WORDS)


def key_error(key: Any) -> str | None:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        return f"variable key {clip(key)} is invalid: use {KEY_RULE}"
    return None


def value_error(key: str, value: Any) -> str | None:
    if not isinstance(value, str):
        return f"variable {key!r}: the value must be a string (JSON text for var.json), got {type(value).__name__}"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:   # (a lone surrogate: the digest, snapshots and the API could not encode it)
        return f"variable {key!r}: the value is not valid Unicode (a lone surrogate); give text"
    if size > MAX_VALUE_BYTES:
        return f"variable {key!r}: the value is {size} bytes; the limit is {MAX_VALUE_BYTES}"
    return None


def _size(value: str) -> int:
    return len(value.encode("utf-8", errors="surrogatepass"))


def check_all(state: State, changes: Mapping[str, str | None]) -> str | None:
    """Why setting `changes` (key -> value; None deletes the key) would break a rule or a
    bound, or None."""
    for key, value in changes.items():
        error = key_error(key) or (value_error(key, value) if value is not None else None)
        if error:
            return error
    deleted = [k for k, v in changes.items() if v is None and k in state.variables]
    count = (len(state.variables) - len(deleted)
             + sum(1 for k, v in changes.items() if v is not None and k not in state.variables))
    if count > MAX_VARIABLES:
        return (f"the cluster would hold {count} variables; the limit is {MAX_VARIABLES} "
                "(`raftflow variables delete KEY` removes unused ones)")
    total = (state.variable_bytes - sum(_size(state.variables[k]) for k in deleted)
             + sum(_size(v) - _size(state.variables.get(k, "")) for k, v in changes.items() if v is not None))
    if total > MAX_TOTAL_BYTES:
        return f"the variables' values would take {total} bytes in all; the limit is {MAX_TOTAL_BYTES}"
    return None


def task_changes(text: str) -> tuple[dict[str, str | None], str]:
    """(the changes in a TaskFinished's `variables` - key -> value, None to delete - or {},
    why they are malformed or ''). The form only: whether they fit is `changes_error`'s."""
    if not text:
        return {}, ""
    if not isinstance(text, str) or len(text.encode("utf-8", "replace")) > CHANGES_TEXT_LIMIT:
        return {}, f"a task sets at most {MAX_TASK_CHANGE_BYTES} bytes of variables"
    try:
        changes = parse_json(text, "the variables a task set")
    except ValueError as e:
        return {}, f"the variables a task set are not JSON ({e})"
    if not isinstance(changes, dict) or not all(v is None or isinstance(v, str) for v in changes.values()):
        return {}, "the variables a task set must be a JSON object of key: text (null to delete)"
    if len(changes) > MAX_TASK_CHANGES:
        return {}, f"a task sets at most {MAX_TASK_CHANGES} variables, not {len(changes)}"
    for key, value in changes.items():
        error = key_error(key) or (value_error(key, value) if value is not None else None)
        if error:
            return {}, error
    if sum(_size(v) for v in changes.values() if v is not None) > MAX_TASK_CHANGE_BYTES:
        return {}, f"a task sets at most {MAX_TASK_CHANGE_BYTES} bytes of variables"
    return changes, ""


def apply_changes(state: State, changes: dict[str, str | None]) -> None:
    """Set and delete (checked by task_changes and check_all first)."""
    _set(state, {k: v for k, v in changes.items() if v is not None})
    for key in (k for k, v in changes.items() if v is None and k in state.variables):
        _delete(state, key)


def _delete(state: State, key: str) -> None:
    state.variable_bytes -= _size(state.variables.pop(key))
    state.touched.add(variable_key(key))


def _set(state: State, changes: dict[str, str]) -> None:
    for key, value in changes.items():
        state.variable_bytes += _size(value) - _size(state.variables.get(key, ""))
        state.variables[key] = value
        state.touched.add(variable_key(key))


def set_variable(state: State, cmd: c.SetVariable) -> Result:
    error = check_all(state, {cmd.key: cmd.value})
    if error:
        return reject(Code.INVALID, error)
    created = cmd.key not in state.variables
    _set(state, {cmd.key: cmd.value})
    return Result(value={"key": cmd.key, "created": created})


def delete_variable(state: State, cmd: c.DeleteVariable) -> Result:
    if cmd.key not in state.variables:
        return reject(Code.NOT_FOUND, f"no variable {clip(cmd.key)}; `raftflow variables list` shows them")
    _delete(state, cmd.key)
    return Result(value={"key": cmd.key})


def import_variables(state: State, cmd: c.ImportVariables) -> Result:
    """All or nothing: every key and value is checked before any is set."""
    if not cmd.variables:
        return reject(Code.INVALID, "import at least one variable (a JSON object of key: value)")
    if len(cmd.variables) > MAX_VARIABLES:
        return reject(Code.INVALID, f"an import holds at most {MAX_VARIABLES} variables, not {len(cmd.variables)}")
    error = check_all(state, cmd.variables)
    if error:
        return reject(Code.INVALID, f"nothing was imported: {error}")
    created = sum(1 for k in cmd.variables if k not in state.variables)
    _set(state, dict(cmd.variables))
    return Result(value={"imported": len(cmd.variables), "created": created})


def masked(key: str, value: str, reveal: bool) -> str:
    """The value as a listing shows it: a sensitive key's is MASK unless `reveal` (admins)."""
    return value if reveal or not is_sensitive(key) else MASK


def secrets_of(variables: dict[str, str]) -> tuple[str, ...]:
    """The strings a task log must not show: the values of sensitive variables (and the
    string leaves of those that are JSON), longest first, as Airflow's masker does."""
    import json

    found: set[str] = set()
    for key, value in variables.items():
        if not is_sensitive(key):
            continue
        found.add(value)
        try:
            parsed = json.loads(value)
        except ValueError:
            continue
        stack = [parsed]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                found.add(item)
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return tuple(sorted((s for s in found if len(s) >= MIN_MASKED_LENGTH), key=len, reverse=True))
