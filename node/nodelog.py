"""The node's own log (stderr): its format, and the context every record carries.

Owns: `setup()`, called once by `raftflow node` (main.run) before the node starts,
the `NodeContext` filter that stamps each record with the node's id and current Raft
term, and the two formats (`log_format` setting, `--log-format` flag):

- text (default): `TIME NODE LEVEL LOGGER: MESSAGE`, as before JSON existed (messages
  about an attempt name it already: "started RUN/TASK attempt N"); a traceback
  follows on its own lines.
- json: one JSON object per line, the same fields in machine form: time (RFC 3339,
  UTC, milliseconds), level, logger, message, node, term, and run_id / task_id /
  attempt when the record concerns one; an exception's traceback is the one field
  `exception` (one object, however many lines the traceback has).

Call sites that log about an attempt pass its identity with `extra=attempt_context(...)`
(or a dict with the ATTEMPT_FIELDS keys); nothing formats them into the message for
the JSON form's sake.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

LOG_FORMATS = ("text", "json")
ATTEMPT_FIELDS = ("run_id", "task_id", "attempt")


def attempt_context(run_id: str, task_id: str, attempt: int | None = None) -> dict[str, Any]:
    """`extra=` for a log record about one task instance (or one attempt of it)."""
    out: dict[str, Any] = {"run_id": run_id, "task_id": task_id}
    if attempt is not None:
        out["attempt"] = attempt
    return out


class NodeContext(logging.Filter):
    """Stamps every record with `node` and `term` (the current Raft term, or None before
    the node's Raft state exists). `term` is read from `term_of`, which must not block
    or take a lock (a record may come from the Raft thread itself)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.term_of: Callable[[], int] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node_id
        try:
            record.term = self.term_of() if self.term_of is not None else None
        except Exception:  # noqa: BLE001 - a log line never fails for want of a term
            record.term = None
        return True


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record.created), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), "node": getattr(record, "node", None),
            "term": getattr(record, "term", None),
        }
        for field in ATTEMPT_FIELDS:
            if getattr(record, field, None) is not None:
                out[field] = getattr(record, field)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The readable form: `TIME NODE LEVEL LOGGER: MESSAGE`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(node)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "node"):
            record.node = "-"
        return super().format(record)


def setup(node_id: str, level: str, log_format: str = "text", stream: TextIO | None = None) -> NodeContext:
    """Send the root logger's records to `stream` (stderr) in `log_format`, stamped by the
    returned NodeContext (set its `term_of` once the node's Raft state exists)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format is one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    context = NodeContext(node_id)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(context)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    return context
