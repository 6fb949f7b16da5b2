"""The one transition table for task instances and runs."""

from __future__ import annotations

import itertools

import pytest

from raftflow.core.states import (
    RUN_TRANSITIONS, TASK_ACTIVE, TASK_TERMINAL, TASK_TRANSITIONS, InvalidTransition, RunState,
    TaskState, check_run_move, check_task_move,
)

T, R = TaskState, RunState

# The state diagram, written out independently of states.py: a change to the table
# must be a deliberate change here too.
EXPECTED_TASK_MOVES = {
    (T.PENDING, T.QUEUED), (T.PENDING, T.UPSTREAM_FAILED),
    (T.QUEUED, T.ASSIGNED),
    (T.ASSIGNED, T.RUNNING), (T.ASSIGNED, T.FAILED),
    (T.RUNNING, T.SUCCESS), (T.RUNNING, T.FAILED), (T.RUNNING, T.UP_FOR_RETRY),
    (T.ASSIGNED, T.QUEUED), (T.RUNNING, T.QUEUED),   # lost with its node
    (T.UP_FOR_RETRY, T.QUEUED),
    (T.PENDING, T.SUCCESS),                          # an empty task
    (T.PENDING, T.SKIPPED), (T.QUEUED, T.SKIPPED), (T.UP_FOR_RETRY, T.SKIPPED),   # run cancelled
}
# By hand: `tasks clear` (any state -> pending), `tasks mark` (any state -> success or failed).
MANUAL_TASK_MOVES = {(a, b) for a in TaskState for b in (T.PENDING, T.SUCCESS, T.FAILED) if a is not b}
EXPECTED_TASK_MOVES |= MANUAL_TASK_MOVES
EXPECTED_RUN_MOVES = {(R.QUEUED, R.RUNNING), (R.RUNNING, R.SUCCESS), (R.RUNNING, R.FAILED),
                      (R.QUEUED, R.FAILED), (R.SUCCESS, R.QUEUED), (R.FAILED, R.QUEUED)}

ALL_TASK_PAIRS = list(itertools.product(TaskState, TaskState))
ALL_RUN_PAIRS = list(itertools.product(RunState, RunState))


def params(pairs) -> list:
    """Sorted (start, finish) pairs as pytest params with readable ids."""
    return [pytest.param(a, b, id=f"{a.value}->{b.value}") for a, b in sorted(pairs)]


def test_task_table_is_the_documented_diagram():
    assert set(TASK_TRANSITIONS) == EXPECTED_TASK_MOVES


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
        check_task_move("k", start, finish)


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
