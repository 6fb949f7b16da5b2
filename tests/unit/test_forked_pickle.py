"""raft/forked.py: the object is pickled as it was at the fork, by a child the caller
does not wait for; failures come back named; the child holds none of the parent's
descriptors (a killed node's ports are free at once)."""

from __future__ import annotations

import os
import pickle
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from raftflow.raft.adapter import staggered_compaction
from raftflow.raft.forked import PickleFailed, pickle_in_child


class _Probe:
    """Pickles as a string computed where it is pickled (the child)."""

    def __init__(self, probe: Any) -> None:
        self.probe = probe

    def __reduce__(self) -> Any:
        return (str, (self.probe(),))


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_the_pickle_is_the_object_as_it_was_at_the_fork() -> None:
    state = {"runs": {f"r{i}": [i, str(i)] for i in range(1000)}, "nested": [[["x"]]]}
    child = pickle_in_child(state)
    state["runs"]["late"] = [0, "changed after the fork"]
    assert pickle.loads(child.result()) == {"runs": {f"r{i}": [i, str(i)] for i in range(1000)},
                                           "nested": [[["x"]]]}


def test_the_caller_does_not_wait_for_the_pickle(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)

    def wait_for_the_test() -> str:   # (in the child: blocks until the test opens the gate)
        with open(gate, "rb") as f:
            return f.read().decode()

    child = pickle_in_child({"gate": _Probe(wait_for_the_test)})
    # pickle_in_child returned while its child is blocked on the gate: the caller did not wait
    with open(gate, "wb") as f:
        f.write(b"open")
    assert pickle.loads(child.result()) == {"gate": "open"}


def test_the_child_holds_none_of_the_parents_descriptors() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd = listener.fileno()
    try:
        child = pickle_in_child(_Probe(lambda: f"open={_fd_open(fd)}"))
        assert pickle.loads(child.result()) == "open=False"
    finally:
        listener.close()


def test_a_pickle_that_raises_in_the_child_is_reported_with_its_cause() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PickleFailed, match="RecursionError"):
        pickle_in_child({"deep": deep}).result()

    def refuse() -> str:
        raise TypeError("cannot pickle this")
    with pytest.raises(PickleFailed, match="TypeError: cannot pickle this"):
        pickle_in_child(_Probe(refuse)).result()


def test_a_child_that_dies_is_reported() -> None:
    child = pickle_in_child(_Probe(lambda: os.kill(os.getpid(), signal.SIGKILL) or ""))
    with pytest.raises(PickleFailed, match="exit status -9"):
        child.result()


def test_the_child_yields_the_cpu_to_every_raft_thread() -> None:
    before = os.nice(0)
    child = pickle_in_child(_Probe(lambda: str(os.nice(0))))
    assert pickle.loads(child.result()) == str(min(19, before + 19))
    assert os.nice(0) == before      # (the parent's priority is untouched)


def test_replicas_compact_their_logs_at_different_indexes() -> None:
    thresholds = {node: staggered_compaction(5000, node) for node in ("n1", "n2", "n3", "w1", "w2", "w3", "w4")}
    assert all(5000 <= t <= 6250 for t in thresholds.values()), thresholds
    assert len(set(thresholds.values())) == len(thresholds), thresholds
    assert staggered_compaction(5000, "n1") == thresholds["n1"]          # fixed per node: restarts agree
    assert staggered_compaction(3, "n1") == 3                            # (tiny test thresholds stay as set)
