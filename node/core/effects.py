"""Effects: what must happen outside the replicated state after a command applied.

`State.apply` changes only replicated state; anything else a committed command
requires of a node (kill an attempt, delete task logs) leaves apply as one of these
typed values in `Result.effects`, and the node executes them (node/main.py
`_after_apply`, in the Raft thread, also when the journal is replayed at start: so
every effect must be safe to execute twice). The human reason is written here, in
the core, once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Effect:
    """Base of every effect."""


@dataclass(frozen=True, slots=True)
class StopAttempt(Effect):
    """A committed decision (cancel, clear, mark) took this attempt away: the node
    running it kills it."""
    run_id: str
    task_id: str
    node: str
    attempt: int
    why: str


@dataclass(frozen=True, slots=True)
class DropRunLogs(Effect):
    """These runs left the state (PruneRuns, DeleteDag): every node deletes their task logs."""
    run_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReleasedAttempts(Effect):
    """NodeStarted released, as lost, the attempts the log still gave `node`'s previous
    (dead) process; keys are "run_id/task_id". Nothing to execute: the proposer tells
    its operator."""
    node: str
    keys: tuple[str, ...]
