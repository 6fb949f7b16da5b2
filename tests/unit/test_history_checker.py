"""tools/jepsen's history checker (raftflow_dev/history.py) on histories written by hand:
each rule passes a correct history and names the fault in a broken one."""

from __future__ import annotations

import pytest

from raftflow_dev.history import (
    INFINITY,
    Kind,
    Op,
    Outcome,
    check_monotonic_reads,
    check_registers,
    check_same_index_same_state,
    check_triggers,
)

OK, FAIL, INFO = Outcome.OK, Outcome.FAIL, Outcome.INFO


def trigger(key: str, outcome: Outcome) -> Op:
    return Op(0, Kind.TRIGGER, key, invoked=1.0, completed=INFINITY if outcome is INFO else 2.0, outcome=outcome)


def write(key: str, value: int, invoked: float, completed: float, outcome: Outcome = OK) -> Op:
    return Op(0, Kind.WRITE, key, value, invoked, INFINITY if outcome is INFO else completed, outcome)


def read(client: int, values: dict[str, int], invoked: float, completed: float, applied: int = 0,
         node: str = "n1") -> Op:
    return Op(client, Kind.READ, invoked=invoked, completed=completed, outcome=OK, values=values, applied=applied,
              node=node)


# ---------------------------------------------------------------- triggers
def test_triggers_each_outcome_with_the_runs_it_may_have() -> None:
    ops = [trigger("a", OK), trigger("b", FAIL), trigger("c", INFO), trigger("d", INFO)]
    assert check_triggers(ops, {"a": 1, "c": 1}) == []


@pytest.mark.parametrize("runs, fault", [
    ({}, "acknowledged trigger a (client 0) has 0 runs, not 1"),                 # a lost write
    ({"a": 2}, "acknowledged trigger a (client 0) has 2 runs, not 1"),           # applied twice
    ({"a": 1, "b": 1}, "trigger b (client 0) failed definitely"),               # a failure that applied
    ({"a": 1, "c": 2}, "trigger c of unknown outcome has 2 runs"),
    ({"a": 1, "z": 1}, "1 run(s) carry op z, which no client triggered"),
])
def test_triggers_name_each_fault(runs: dict[str, int], fault: str) -> None:
    ops = [trigger("a", OK), trigger("b", FAIL), trigger("c", INFO)]
    violations = check_triggers(ops, runs)
    assert len(violations) == 1 and violations[0].startswith(fault)


# ---------------------------------------------------------------- registers
def test_registers_a_correct_history_with_stale_reads_and_concurrent_writes() -> None:
    ops = [write("k", 1, 0.0, 1.0), write("k", 2, 2.0, 3.0), write("k", 3, 2.5, 3.5),
           read(1, {"k": 1}, 4.0, 4.1),           # stale: allowed (replica reads)
           read(2, {"k": 3}, 3.2, 3.3),           # a write in flight may be seen
           write("k", 4, 5.0, 6.0, INFO)]        # unknown: may or may not be there
    assert check_registers(ops, {"k": 3}) == []  # 2 and 3 were concurrent: either may end last
    assert check_registers(ops, {"k": 4}) == []


@pytest.mark.parametrize("extra, final, fault", [
    ([read(1, {"k": 9}, 4.0, 4.1)], {"k": 2}, "client 1 read k=9 from n1, a value nobody wrote"),
    ([write("k", 5, 4.0, 4.5, FAIL), read(1, {"k": 5}, 5.0, 5.1)], {"k": 2}, "client 1 read k=5 from n1, written "
                                                                              "by a write that failed"),
    ([write("k", 6, 7.0, 8.0), read(1, {"k": 6}, 4.0, 4.1)], {"k": 6}, "client 1 read k=6 before that write"),
    ([], {"k": 1}, "k ends as 1, but the acknowledged write of 2 began after that write had completed"),
    ([], {}, "k was written (acknowledged) but the healed cluster does not have it"),
    ([write("k", 5, 4.0, 4.5, FAIL)], {"k": 5}, "k ends as 5, written by a write that failed definitely"),
])
def test_registers_name_each_fault(extra: list[Op], final: dict[str, int], fault: str) -> None:
    ops = [write("k", 1, 0.0, 1.0), write("k", 2, 2.0, 3.0), *extra]
    violations = check_registers(ops, final)
    assert any(v.startswith(fault) for v in violations), violations


def test_registers_refuse_a_workload_that_repeats_a_value() -> None:
    with pytest.raises(ValueError, match="values must be unique per key"):
        check_registers([write("k", 1, 0.0, 1.0), write("k", 1, 2.0, 3.0)], {})


# ---------------------------------------------------------------- reads
def test_monotonic_reads_per_client_in_completion_order() -> None:
    ops = [read(1, {}, 0.0, 1.0, applied=5), read(1, {}, 1.0, 2.0, applied=5, node="n2"),
           read(1, {}, 2.0, 3.0, applied=9), read(2, {}, 2.5, 3.1, applied=4)]   # another client may lag
    assert check_monotonic_reads(ops) == []
    ops.append(read(1, {}, 3.0, 4.0, applied=7, node="n3"))
    assert check_monotonic_reads(ops) == ["client 1 read index 7 from n3 after it had read index 9 from n1 "
                                          "(went back in time)"]


def test_one_state_per_index_across_nodes() -> None:
    ops = [read(1, {"k": 1}, 0.0, 1.0, applied=5, node="n1"), read(2, {"k": 1}, 0.0, 1.0, applied=5, node="n2"),
           read(2, {"k": 2}, 1.0, 2.0, applied=6, node="n2")]
    assert check_same_index_same_state(ops) == []
    ops.append(read(3, {"k": 2}, 2.0, 3.0, applied=5, node="n3"))
    assert check_same_index_same_state(ops) == ["at index 5, n1 showed {'k': 1} but n3 showed {'k': 2}"]
