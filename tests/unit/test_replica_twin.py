"""The in-memory replica (raft/memory.py) keeps the Replica contract, and
propose_until_decided (raft/replica.py) retries exactly while nothing is decided."""

from __future__ import annotations

import threading

import pytest

from core_support import T0, dag_dict
from raftflow.core import commands as c
from raftflow.core.result import Code, Result
from raftflow.raft.memory import MemoryCluster
from raftflow.raft.replica import OutcomeUnknown, Unavailable, propose_until_decided


def _submit(at: float = T0) -> c.SubmitDag:
    return c.SubmitDag(dag_dict("d"), "# src", "d.py", at)


def test_every_replica_applies_the_log_in_order_and_notifies() -> None:
    cluster = MemoryCluster()
    a, b = cluster.replica("a"), cluster.replica("b")
    assert a.propose(_submit()).ok
    assert b.state.dags["d"].latest.version == 1
    assert a.state.digest() == b.state.digest()
    late = cluster.replica("c")                  # a new member applies the log so far
    assert late.state.digest() == a.state.digest()
    assert a.status().commit_index == a.status().last_applied == 1


def test_a_lagging_replica_applies_nothing_until_it_proposes_and_then_everything_before_its_entry() -> None:
    cluster = MemoryCluster()
    a, b = cluster.replica("a"), cluster.replica("b")
    cluster.elect("a")
    b.lag()
    a.propose(_submit())
    cluster.elect("a")
    assert "d" not in b.state.dags and b.term() == 1 and b.status().last_applied == 0
    result = b.propose(c.SetPaused("d", True, T0))   # would be NOT_FOUND on b's stale state
    assert result.ok and b.state.dags["d"].paused
    assert (b.term(), b.is_leader()) == (2, False)


def test_without_quorum_nothing_is_appended_and_a_timeout_may_still_commit() -> None:
    cluster = MemoryCluster()
    a = cluster.replica("a")
    a.quorum = False
    with pytest.raises(Unavailable, match="no quorum"):
        a.propose(_submit())
    assert cluster.log == [] and not a.status().has_quorum
    a.quorum = True
    a.fail_next(OutcomeUnknown("outcome unknown: not committed within 5.0s"), commit=True)
    with pytest.raises(OutcomeUnknown):
        a.propose(_submit())
    assert "d" in a.state.dags
    with pytest.raises(ValueError):
        a.fail_next(Unavailable("no leader"), commit=True)


def test_a_batch_outcome_lists_each_member_with_its_own_result() -> None:
    cluster = MemoryCluster()
    a = cluster.replica("a")
    a.propose(c.Batch((_submit(), c.SetPaused("nope", True, T0))))
    assert [(type(cmd), r.code) for cmd, r in a.outcomes(c.Command)] == [
        (c.SubmitDag, Code.OK), (c.SetPaused, Code.NOT_FOUND)]
    assert cluster.commands(c.SetPaused) == [c.SetPaused("nope", True, T0)]


# ---------------------------------------------------------------- propose_until_decided
class Flaky:
    """A propose function that raises the given errors first, then returns `result`."""

    def __init__(self, errors: list[Unavailable], result: Result = Result(), stop: threading.Event | None = None,
                 stop_after: int = -1) -> None:
        self.errors = list(errors)
        self.result = result
        self.calls: list[c.Command] = []
        self._stop, self._stop_after = stop, stop_after

    def __call__(self, command: c.Command, timeout: float) -> Result:
        self.calls.append(command)
        if self._stop is not None and len(self.calls) == self._stop_after:
            self._stop.set()
        if self.errors:
            raise self.errors.pop(0)
        return self.result


def test_it_retries_unavailable_until_a_result_and_reports_what_happened() -> None:
    propose = Flaky([Unavailable("no leader"), OutcomeUnknown("outcome unknown"), Unavailable("no quorum")],
                    Result(Code.CONFLICT, "stale"))
    retried: list[str] = []
    decision = propose_until_decided(propose, c.NodeStarted("n1", T0), threading.Event(), first_delay=0.001,
                                     max_delay=0.002, on_retry=lambda e: retried.append(str(e)))
    assert decision.result == Result(Code.CONFLICT, "stale")   # a rejection is a decision: no retry
    assert (decision.failures, decision.maybe_committed, decision.gave_up) == (3, True, "")
    assert retried == ["no leader", "outcome unknown", "no quorum"]
    assert len(propose.calls) == 4


def test_a_set_stop_still_allows_one_try_and_ends_the_retries() -> None:
    stop = threading.Event()
    stop.set()
    decided = propose_until_decided(Flaky([]), c.NodeStarted("n1", T0), stop, first_delay=1, max_delay=1)
    assert decided.result == Result()
    propose = Flaky([Unavailable("no leader")] * 5)
    gave_up = propose_until_decided(propose, c.NodeStarted("n1", T0), stop, first_delay=1, max_delay=1,
                                    stopped="the node is shutting down")
    assert (gave_up.result, gave_up.gave_up, gave_up.failures, len(propose.calls)) == (
        None, "the node is shutting down", 1, 1)
    assert str(gave_up.last_error) == "no leader" and not gave_up.maybe_committed


def test_stop_set_while_waiting_ends_it_and_give_up_is_asked_before_every_try() -> None:
    stop = threading.Event()
    propose = Flaky([Unavailable("no leader")] * 5, stop=stop, stop_after=2)
    decision = propose_until_decided(propose, c.NodeStarted("n1", T0), stop, first_delay=0.001, max_delay=0.001)
    assert (decision.gave_up, len(propose.calls)) == ("stopped", 2)

    asked: list[int] = []

    def give_up() -> str:
        asked.append(1)
        return "lease lapsed" if len(asked) == 3 else ""

    propose = Flaky([Unavailable("no leader")] * 5)
    decision = propose_until_decided(propose, c.NodeStarted("n1", T0), threading.Event(), first_delay=0.001,
                                     max_delay=0.001, give_up=give_up)
    assert (decision.result, decision.gave_up, len(propose.calls)) == (None, "lease lapsed", 2)


def test_a_command_factory_stamps_each_try_afresh() -> None:
    stamps = iter([1.0, 2.0, 3.0])
    propose = Flaky([Unavailable("no leader")] * 2)
    propose_until_decided(propose, lambda: c.NodeStarted("n1", next(stamps)), threading.Event(),
                          first_delay=0.001, max_delay=0.001)
    assert [cmd.at for cmd in propose.calls] == [1.0, 2.0, 3.0]


def test_with_a_memory_replica_it_outlasts_a_lost_quorum() -> None:
    cluster = MemoryCluster()
    a = cluster.replica("a")
    a.quorum = False
    stop = threading.Event()

    def regain(error: Unavailable) -> None:
        a.quorum = True                          # the cluster comes back while we wait

    decision = propose_until_decided(a.propose, _submit(), stop, first_delay=0.001, max_delay=0.001,
                                     on_retry=regain)
    assert decision.result is not None and decision.result.ok and decision.failures == 1
    assert "d" in a.state.dags
