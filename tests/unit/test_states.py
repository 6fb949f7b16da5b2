"""The transition tables for task instances (one per cause, each edge with its
bookkeeping function) and runs."""

from __future__ import annotations

import itertools

import pytest

from raftflow.core.model import Run, StoryEvent, TaskInstance
from raftflow.core.states import (
    RUN_TRANSITIONS,
    TASK_ACTIVE,
    TASK_TERMINAL,
    InvalidTransition,
    RunState,
    TaskState,
    check_run_move,
)
from raftflow.core.transitions import AUTOMATIC, CANCEL, CLEAR, LOSS, MARK, TASK_TRANSITIONS, plan_move

T, R = TaskState, RunState

# The state diagram, written out independently of states.py: a change to the table
# must be a deliberate change here too.
EXPECTED_AUTOMATIC = {
    (T.PENDING, T.QUEUED), (T.PENDING, T.UPSTREAM_FAILED),
    (T.QUEUED, T.ASSIGNED),
    (T.ASSIGNED, T.RUNNING),
    (T.RUNNING, T.SUCCESS), (T.RUNNING, T.FAILED), (T.RUNNING, T.UP_FOR_RETRY),
    (T.RUNNING, T.SKIPPED),                          # exit code in skip_on_exit_code (#19)
    (T.UP_FOR_RETRY, T.QUEUED),
    (T.PENDING, T.SUCCESS),                          # an empty task
    (T.PENDING, T.SKIPPED),                          # its trigger rule can no longer be met
}
EXPECTED_LOSS = {(T.ASSIGNED, T.QUEUED), (T.RUNNING, T.QUEUED),    # lost with its node
                 (T.ASSIGNED, T.FAILED), (T.RUNNING, T.FAILED)}    # ... max_lost_attempts times
EXPECTED_CANCEL = {(T.ASSIGNED, T.FAILED), (T.RUNNING, T.FAILED),
                   (T.PENDING, T.SKIPPED), (T.QUEUED, T.SKIPPED), (T.UP_FOR_RETRY, T.SKIPPED)}
# By hand: `tasks clear` (any state -> pending), `tasks mark` (any state -> success or failed).
EXPECTED_CLEAR = {(a, T.PENDING) for a in TaskState if a is not T.PENDING}
EXPECTED_MARK = {(a, b) for a in TaskState for b in (T.SUCCESS, T.FAILED) if a is not b}
MANUAL_TASK_MOVES = EXPECTED_CLEAR | EXPECTED_MARK
EXPECTED_TASK_MOVES = EXPECTED_AUTOMATIC | EXPECTED_LOSS | EXPECTED_CANCEL | MANUAL_TASK_MOVES
TABLES = {"automatic": (AUTOMATIC, EXPECTED_AUTOMATIC), "loss": (LOSS, EXPECTED_LOSS),
          "cancel": (CANCEL, EXPECTED_CANCEL), "clear": (CLEAR, EXPECTED_CLEAR), "mark": (MARK, EXPECTED_MARK)}
EXPECTED_RUN_MOVES = {(R.QUEUED, R.RUNNING), (R.RUNNING, R.SUCCESS), (R.RUNNING, R.FAILED),
                      (R.QUEUED, R.FAILED), (R.SUCCESS, R.QUEUED), (R.FAILED, R.QUEUED)}

ALL_TASK_PAIRS = list(itertools.product(TaskState, TaskState))
ALL_RUN_PAIRS = list(itertools.product(RunState, RunState))


def params(pairs) -> list:
    """Sorted (start, finish) pairs as pytest params with readable ids."""
    return [pytest.param(a, b, id=f"{a.value}->{b.value}") for a, b in sorted(pairs)]


def check_task_move(key: str, start: TaskState, finish: TaskState, table=None) -> None:
    """plan_move on a task instance in `start` (any table by default), run id and task id from `key`."""
    run_id, task_id = key.split("/")
    ti = TaskInstance(task_id, start, story=[StoryEvent(1.0, T.PENDING, start, "how it got there")])
    run = Run(run_id, "d", 1, "", "", "", "manual", {}, RunState.RUNNING, 0.0, tasks={task_id: ti})
    tables = [table] if table is not None else [t for t, _ in TABLES.values() if (start, finish) in t]
    plan_move(tables[0] if tables else AUTOMATIC, run, ti, finish, None, 0.0, "")


def test_task_table_is_the_documented_diagram():
    assert set(TASK_TRANSITIONS) == EXPECTED_TASK_MOVES


@pytest.mark.parametrize("name", list(TABLES))
def test_each_cause_has_exactly_its_documented_edges(name):
    table, expected = TABLES[name]
    assert set(table) == expected


@pytest.mark.parametrize("start, finish", params([
    (T.ASSIGNED, T.SUCCESS), (T.ASSIGNED, T.FAILED), (T.ASSIGNED, T.UP_FOR_RETRY),  # a result needs a start claim
    (T.QUEUED, T.SKIPPED), (T.UP_FOR_RETRY, T.SKIPPED),   # only a cancel skips a task that was ready
]))
def test_the_automatic_table_lacks_the_moves_only_other_causes_make(start, finish):
    with pytest.raises(InvalidTransition):
        check_task_move("r/t", start, finish, AUTOMATIC)


def test_invalid_transition_carries_the_story_of_the_key():
    with pytest.raises(InvalidTransition) as info:
        check_task_move("r/t", T.SUCCESS, T.QUEUED, AUTOMATIC)
    assert info.value.story == (StoryEvent(1.0, T.PENDING, T.SUCCESS, "how it got there"),)


def test_run_table_is_the_documented_diagram():
    assert set(RUN_TRANSITIONS) == EXPECTED_RUN_MOVES


@pytest.mark.parametrize("start, finish", params(EXPECTED_TASK_MOVES))
def test_every_legal_task_move_is_accepted(start, finish):
    assert check_task_move("r/t", start, finish) is None


@pytest.mark.parametrize("start, finish", params(EXPECTED_RUN_MOVES))
def test_every_legal_run_move_is_accepted(start, finish):
    assert check_run_move("r", start, finish) is None


@pytest.mark.parametrize("start, finish", params(p for p in ALL_TASK_PAIRS if p not in EXPECTED_TASK_MOVES))
def test_every_illegal_task_move_raises_naming_key_and_states(start, finish):
    with pytest.raises(InvalidTransition) as info:
        check_task_move("run_1/extract", start, finish)
    err = info.value
    assert (err.key, err.start, err.finish) == ("run_1/extract", start, finish)
    assert str(err) == f"run_1/extract: illegal transition {start.value} -> {finish.value}"


@pytest.mark.parametrize("start, finish", params(p for p in ALL_RUN_PAIRS if p not in EXPECTED_RUN_MOVES))
def test_every_illegal_run_move_raises_naming_key_and_states(start, finish):
    with pytest.raises(InvalidTransition) as info:
        check_run_move("run_1", start, finish)
    assert (info.value.key, info.value.start, info.value.finish) == ("run_1", start, finish)
    assert str(info.value) == f"run_1: illegal transition {start.value} -> {finish.value}"


@pytest.mark.parametrize("start, finish", params([
    (T.SUCCESS, T.QUEUED),          # a finished task never runs again
    (T.FAILED, T.UP_FOR_RETRY),
    (T.UPSTREAM_FAILED, T.QUEUED),
    (T.PENDING, T.ASSIGNED),        # must be queued first
    (T.QUEUED, T.RUNNING),          # must be assigned (fenced) first
    (T.RUNNING, T.ASSIGNED),
    (T.RUNNING, T.RUNNING),
    (T.UP_FOR_RETRY, T.ASSIGNED),
]))
def test_notable_illegal_task_moves(start, finish):
    with pytest.raises(InvalidTransition, match=f"illegal transition {start.value} -> {finish.value}"):
        check_task_move("r/k", start, finish)


def test_task_terminal_property():
    assert {s for s in TaskState if s.terminal} == {T.SUCCESS, T.FAILED, T.UPSTREAM_FAILED, T.SKIPPED} == TASK_TERMINAL
    assert not T.UP_FOR_RETRY.terminal and not T.RUNNING.terminal


def test_run_terminal_property():
    assert {s for s in RunState if s.terminal} == {R.SUCCESS, R.FAILED}


def test_terminal_states_are_left_only_by_hand():
    """The scheduler never moves a finished task or run; only clear and mark do."""
    for start, finish in TASK_TRANSITIONS:
        assert not start.terminal or (start, finish) in MANUAL_TASK_MOVES, (start, finish)
    for start, finish in RUN_TRANSITIONS:
        assert not start.terminal or finish is R.QUEUED, (start, finish)


def test_every_non_terminal_state_can_reach_a_terminal_one():
    for table, states in ((TASK_TRANSITIONS, TaskState), (RUN_TRANSITIONS, RunState)):
        for state in states:
            seen, frontier = {state}, [state]
            while frontier:
                here = frontier.pop()
                for a, b in table:
                    if a == here and b not in seen:
                        seen.add(b)
                        frontier.append(b)
            assert any(s.terminal for s in seen), state


def test_active_states_are_exactly_those_holding_a_slot():
    assert TASK_ACTIVE == {T.ASSIGNED, T.RUNNING}


def test_states_serialise_as_their_values():
    assert T("up_for_retry") is T.UP_FOR_RETRY and T.UP_FOR_RETRY == "up_for_retry"
    assert R("success") is R.SUCCESS
