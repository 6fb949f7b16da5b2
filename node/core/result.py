"""The outcome of applying one command: `Code`, `Result`, and `Rejected` (how a
handler refuses a command before it changed anything).

`Result.value` holds only answers for the proposer (versions, run ids, created or
existing runs, a Batch's member results); what nodes must do afterwards is in
`Result.effects` (core/effects.py). A repeated client request id is answered with
its first outcome and no effects (`Result.replay`, core/requests.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from . import commands as c
from .effects import DropRunLogs, Effect, StopAttempt

E = TypeVar("E", bound=Effect)


class Code(str, Enum):
    OK = "ok"
    INVALID = "invalid"          # the command is wrong in itself (bad spec, bad conf)
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"        # valid, but stale or no longer applicable (fenced)
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Replay:
    """Marks the answer to a repeated request id: the command changed nothing and asked
    nodes for nothing; `Result` carries what its first apply (at Raft index `index`)
    told the client, and these counts of that apply's effects."""
    index: int
    stopped_attempts: int = 0
    runs_removed: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    code: Code = Code.OK
    reason: str = ""
    value: Any = None
    effects: tuple[Effect, ...] = ()   # a Batch: its accepted members' effects, in order
    replay: Replay | None = None       # set on the answer to a repeated request id (effects are then empty)

    @property
    def ok(self) -> bool:
        return self.code is Code.OK

    def effects_of(self, kind: type[E]) -> tuple[E, ...]:
        return tuple(e for e in self.effects if isinstance(e, kind))

    @property
    def stopped_attempts(self) -> int:
        """How many attempts the command stopped (StopAttempt effects), a replay's included."""
        return self.replay.stopped_attempts if self.replay else len(self.effects_of(StopAttempt))

    @property
    def runs_removed(self) -> int:
        """How many runs the command removed (DropRunLogs effects), a replay's included."""
        return self.replay.runs_removed if self.replay else sum(len(e.run_ids) for e in self.effects_of(DropRunLogs))


OK = Result()


def reject(code: Code, reason: str) -> Result:
    return Result(code, reason)


class Rejected(Exception):
    """Raised by a handler's checks before any mutation; apply turns it into a Result."""

    def __init__(self, code: Code, reason: str):
        super().__init__(reason)
        self.result = Result(code, reason)


def internal_rejections(command: c.Command, result: Result) -> list[str]:
    """The reasons of every INTERNAL rejection in `result`: the command's own, or its
    Batch members' named by position and type (a Batch itself is OK while its members
    are rejected one by one). Each is a bug in apply: whoever applies logs them, so
    none passes silently."""
    if result.code is Code.INTERNAL:
        return [result.reason]
    if isinstance(command, c.Batch) and isinstance(result.value, list):
        return [f"member {i} ({sub.TYPE}): {r.reason}" for i, (sub, r) in enumerate(zip(command.commands, result.value))
                if isinstance(r, Result) and r.code is Code.INTERNAL]
    return []
