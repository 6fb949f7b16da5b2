"""Run and task-instance states, the run table, and `InvalidTransition`.

The task-instance edges, each with the function that does its bookkeeping, are in
core/transitions.py; run moves are checked here by `check_run_move`. Any other
pair is an `InvalidTransition` naming the key, the offending pair and the key's
story. The tables are the state diagram in node/README.md: keep both true.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Sequence


class TaskState(str, Enum):
    PENDING = "pending"            # waiting for its upstream tasks
    QUEUED = "queued"              # ready; waiting for a node with a free slot
    ASSIGNED = "assigned"          # attempt committed to a node; dispatched, not yet started
    RUNNING = "running"            # the node's claim to start it committed; its process runs
    UP_FOR_RETRY = "up_for_retry"  # failed with retries left; re-queued after retry_delay
    SUCCESS = "success"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    # not run (its trigger rule could not be met; its run was cancelled or timed out), or
    # ran and exited with one of its skip_on_exit_code (Airflow's AirflowSkipException)
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self in TASK_TERMINAL


class RunState(str, Enum):
    QUEUED = "queued"    # created; waits for max_active_runs or for its DAG to be unpaused
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCESS, RunState.FAILED)


TASK_TERMINAL = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.UPSTREAM_FAILED, TaskState.SKIPPED})
TASK_ACTIVE = frozenset({TaskState.ASSIGNED, TaskState.RUNNING})  # hold a slot on a node

R = RunState
RUN_TRANSITIONS: frozenset[tuple[RunState, RunState]] = frozenset({
    (R.QUEUED, R.RUNNING),
    (R.RUNNING, R.SUCCESS),
    (R.RUNNING, R.FAILED),
    (R.QUEUED, R.FAILED),           # cancelled before it started
    (R.SUCCESS, R.QUEUED),          # reopened: a task was cleared or marked
    (R.FAILED, R.QUEUED),
})


class InvalidTransition(Exception):
    """A move no table allows. `story` is the key's story (a task instance's events,
    oldest first) at the moment of the refusal: what led there."""

    def __init__(self, key: str, start: Enum, finish: Enum, story: Sequence[Any] = (), hint: str = ""):
        super().__init__(f"{key}: {hint}illegal transition {start.value} -> {finish.value}")
        self.key, self.start, self.finish = key, start, finish
        self.story = tuple(story)


def check_run_move(key: str, start: RunState, finish: RunState) -> None:
    if (start, finish) not in RUN_TRANSITIONS:
        raise InvalidTransition(key, start, finish)
