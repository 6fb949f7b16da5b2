"""Run and task-instance states, and the one table of legal moves between them.

Every state change in `State.apply` goes through `check_task_move` or
`check_run_move`; any other pair is an `InvalidTransition` naming the key and the
offending pair. The table is the state diagram in node/README.md: keep both true.
"""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    PENDING = "pending"            # waiting for its upstream tasks
    QUEUED = "queued"              # ready; waiting for a node with a free slot
    ASSIGNED = "assigned"          # attempt committed to a node; dispatched, not yet started
    RUNNING = "running"            # the node's claim to start it committed; its process runs
    UP_FOR_RETRY = "up_for_retry"  # failed with retries left; re-queued after retry_delay
    SUCCESS = "success"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"            # not run: its run was cancelled or timed out

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

T = TaskState
TASK_TRANSITIONS: frozenset[tuple[TaskState, TaskState]] = frozenset({
    (T.PENDING, T.QUEUED),
    (T.PENDING, T.UPSTREAM_FAILED),
    (T.PENDING, T.SUCCESS),         # an empty task: nothing to run
    (T.PENDING, T.SKIPPED),         # its run was cancelled or timed out (also from queued, up_for_retry)
    (T.QUEUED, T.SKIPPED),
    (T.UP_FOR_RETRY, T.SKIPPED),
    (T.QUEUED, T.ASSIGNED),
    (T.ASSIGNED, T.RUNNING),        # the worker's start claim committed (the fencing point)
    (T.ASSIGNED, T.QUEUED),         # lost with its node before it started
    (T.ASSIGNED, T.FAILED),         # ... for the max_lost_attempts-th time; or its run was cancelled
    (T.RUNNING, T.QUEUED),          # lost with its node: runs again elsewhere
    (T.RUNNING, T.SUCCESS),
    (T.RUNNING, T.FAILED),          # exit != 0 with no retries left; or its run was cancelled
    (T.RUNNING, T.UP_FOR_RETRY),
    (T.UP_FOR_RETRY, T.QUEUED),
})

# By hand (ClearTasks, MarkTask): any state back to pending, any state to success or
# failed. The attempt number never goes back, so fencing still holds.
TASK_TRANSITIONS = TASK_TRANSITIONS | frozenset(
    (start, finish) for start in T for finish in (T.PENDING, T.SUCCESS, T.FAILED) if start is not finish
)

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
    def __init__(self, key: str, start: Enum, finish: Enum):
        super().__init__(f"{key}: illegal transition {start.value} -> {finish.value}")
        self.key, self.start, self.finish = key, start, finish


def check_task_move(key: str, start: TaskState, finish: TaskState) -> None:
    if (start, finish) not in TASK_TRANSITIONS:
        raise InvalidTransition(key, start, finish)


def check_run_move(key: str, start: RunState, finish: RunState) -> None:
    if (start, finish) not in RUN_TRANSITIONS:
        raise InvalidTransition(key, start, finish)
