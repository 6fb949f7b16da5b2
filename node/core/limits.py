"""The bounds on what enters the replicated state, and the checks that enforce them.

Everything a client, a DAG file or a task sends ends up in Raft entries, in memory
on every node, in snapshots and in the archive; whatever is unbounded there can
stall or bloat the whole cluster. This module holds the limits and one checker of
JSON values (nesting depth, size, plain JSON types, text that encodes as UTF-8)
and one way to quote input in a message (`clip`).

Who calls: `core.spec` (params, op_kwargs, ...), the handlers (`State.apply`: conf,
task results, sources) and `api.operations` (the same checks before proposing, so
a write that apply would refuse is never replicated). Pure: no I/O, no clock.

The checker is iterative (an explicit stack): a value nested 100,000 deep costs it
nothing but time proportional to its size, never a RecursionError. Values that pass
it can be handed to `json.dumps`, `pickle` and `copy` without recursing more than
`MAX_JSON_DEPTH` levels.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Nesting levels of any JSON value that enters (params, conf, op_kwargs, results):
# deep enough for any real configuration, shallow enough that every recursive
# encoder, pickler and copier stays far from Python's recursion limit.
MAX_JSON_DEPTH = 32
MAX_CONF_BYTES = 64 * 1024          # a trigger's conf, as JSON text (like params)
MAX_SOURCE_BYTES = 1024 * 1024      # a DAG file's source text, UTF-8
MAX_FILENAME_BYTES = 4096
# The newest versions of a DAG whose source text is kept; older sources are dropped
# (unless an unfinished run uses that version). Apply uses it, so it is a constant:
# a per-node setting would let replicas diverge.
KEEP_SOURCES = 10
CLIP_CHARS = 80                     # of any input quoted in a message


class JsonShapeError(ValueError):
    """A JSON value is too deep, too large, or not plain JSON; the message says which."""


def clip(value: Any, limit: int = CLIP_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, saying the full length: the way to
    quote input in an error message (a 4 MB pool name must not come back 4 MB long, nor
    travel in a Raft entry as a rejection reason). Containers are only described (their
    repr could recurse). Never raises."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"
    if isinstance(value, (dict, list, tuple, set)):
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, (int, float, bool, type(None))):
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 256 else "<a huge integer>"
        return text if len(text) <= limit else f"{text[:limit]}..."
    return f"<{type(value).__name__}>"


def check_json(value: Any, what: str, max_depth: int = MAX_JSON_DEPTH, max_bytes: int | None = None) -> int:
    """Raise JsonShapeError unless `value` is plain JSON (dicts with string keys, lists,
    strings, finite numbers, booleans, None) nested at most `max_depth` levels (a scalar
    is level 0, `{"a": 1}` level 1), whose text encodes as UTF-8 (no lone surrogates:
    the archive and the digest encode it), and, with `max_bytes`, whose JSON text
    (`json.dumps`, default separators) is at most that long. Returns that length.
    `what` names the value in the message ("DAG 'd': params")."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, what)
        elif isinstance(item, float) and not math.isfinite(item):
            raise JsonShapeError(f"{what} must be plain JSON values (a number is {item})")
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise JsonShapeError(f"{what} is nested more than {max_depth} levels deep; flatten it")
            if isinstance(item, dict):
                for key in item:
                    if not isinstance(key, str):
                        raise JsonShapeError(f"{what} must be plain JSON values (a key is {clip(key)})")
                    _check_text(key, what)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
        elif not (item is None or isinstance(item, (bool, int, float))):
            raise JsonShapeError(f"{what} must be plain JSON values (not {type(item).__name__})")
    try:
        length = len(json.dumps(value))
    except ValueError as e:   # e.g. an integer of more than 4300 digits
        raise JsonShapeError(f"{what} must be plain JSON values ({e})") from None
    if max_bytes is not None and length > max_bytes:
        raise JsonShapeError(f"{what} is {length} bytes of JSON, more than {max_bytes}")
    return length


def check_text(value: Any, what: str, max_bytes: int) -> str:
    """`value` if it is a string of at most `max_bytes` UTF-8 bytes, else JsonShapeError."""
    if not isinstance(value, str):
        raise JsonShapeError(f"{what} must be a string, not {type(value).__name__}")
    _check_text(value, what)
    if len(value) > max_bytes or len(value.encode()) > max_bytes:
        raise JsonShapeError(f"{what} is {len(value.encode())} bytes, more than the limit of {max_bytes}")
    return value


def _check_text(text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise JsonShapeError(f"{what} hold text that is not valid Unicode (a lone surrogate such as "
                             "\\ud800)") from None


# A string (once the escape pairs that could hide a quote are out) or a bracket.
_TOKEN = re.compile(r'"[^"]*"|[\[\]{}]')


def _nests_deeper(text: str, max_depth: int) -> bool:
    """Whether brackets outside strings nest more than `max_depth` levels in `text`.
    No call here holds the GIL long (one that does stalls every thread of the node, its
    Raft thread too): str.count and str.replace are fast C loops, and the brackets and
    strings are visited one match at a time. (A single re.sub over the text with a
    per-character alternation held it 0.4 s on a 3.4 MB request.)"""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    bare = text.replace("\\\\", "").replace('\\"', "")   # \\ first, so \\" stays a closing quote
    depth = 0
    for token in _TOKEN.finditer(bare):
        char = bare[token.start()]
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char != '"':
            depth -= 1
    return False


def parse_json(text: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text from the wire without recursing on its nesting: the depth is
    measured on the text first (brackets outside strings), so `json.loads` never sees
    more than `max_depth` levels. Raises JsonShapeError (a ValueError) on bad JSON."""
    if _nests_deeper(text, max_depth):
        raise JsonShapeError(f"{what} is nested more than {max_depth} levels deep; flatten it")
    try:
        return json.loads(text)
    except ValueError as e:
        raise JsonShapeError(f"{what} is not valid JSON: {e}") from None
