"""A failing Raft snapshot is never silent (node/raft/adapter.py): logged at ERROR with
its cause, shown by `snapshot_status()` and `cluster status`'s NodeStatus, retried with
backoff, and a later snapshot succeeds once the cause is gone.

A real one-node replica (pysyncobj drives the hooks as in production)."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from raft_node_support import solo_replica
from raftflow.api.cluster import node_status
from raftflow.config import NodeConfig
from raftflow.core import commands as c
from raftflow.raft.adapter import ReplicatedState


def _deep(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


class _Unpicklable(int):
    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("cannot pickle _Unpicklable")


@dataclass
class _Worker:
    ready: threading.Event = field(default_factory=threading.Event)

    def running(self) -> list[tuple[str, str, int]]:
        return []


@dataclass
class _Liveness:
    def ages(self, now: float) -> dict[str, float]:
        return {}


@dataclass
class _Host:
    """What node_status reads of a node."""
    cfg: NodeConfig
    replica: ReplicatedState
    worker: _Worker = field(default_factory=_Worker)
    liveness: _Liveness = field(default_factory=_Liveness)
    started: float = field(default_factory=time.monotonic)


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


def test_a_failing_snapshot_is_reported_retried_and_succeeds_once_the_cause_is_gone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftflow")
    with solo_replica(tmp_path, log_compaction_min_entries=3, snapshot_retry_delays=(0.2, 0.4)) as replica:
        snapshot_file = tmp_path / "raft" / "snapshot"
        with replica.lock:    # a value the State's pickle cannot take: nested past the recursion limit
            replica.state.pools["deep"] = _deep(100_000)   # type: ignore[assignment]
        for i in range(6):    # past log_compaction_min_entries: pysyncobj asks for a snapshot
            assert replica.propose(c.SetPool(f"p{i}", 1, 0.0), timeout=5.0).ok
        failing = wait_for(lambda: replica.snapshot_status().error and replica.snapshot_status(), 10,
                             "the snapshot failure to be reported")
        assert "RecursionError" in failing.error and failing.at == 0 and failing.index == 0
        assert not snapshot_file.exists()
        assert _errors(caplog, "RecursionError"), "the failure was not logged at ERROR"

        # retried (with backoff: a few attempts per second, not one per Raft tick)
        started = time.monotonic()
        wait_for(lambda: replica.snapshot_status().failures >= 3, 10, "the snapshot to be retried")
        assert replica.snapshot_status().failures <= 3 + (time.monotonic() - started) / 0.2 + 1
        assert replica.propose(c.SetPool("still-writable", 1, 0.0), timeout=5.0).ok

        # cluster status shows it (the digest cannot take the deep value either: an int that refuses pickling)
        with replica.lock:
            replica.state.pools["deep"] = _Unpicklable(1)
        wait_for(lambda: "_Unpicklable" in replica.snapshot_status().error, 10, "the next failure")
        shown = node_status(_Host(_config(tmp_path, replica), replica))
        assert "_Unpicklable" in shown.snapshot_error and shown.snapshot_failures >= 4
        assert (shown.snapshot_at, shown.snapshot_index) == (0, 0)

        with replica.lock:
            del replica.state.pools["deep"]
        done = wait_for(lambda: not replica.snapshot_status().error and replica.snapshot_status(), 10,
                          "a snapshot to succeed once the cause is gone")
        assert done.failures == 0 and done.index >= 7 and abs(done.at - time.time()) < 30
        assert snapshot_file.exists() and os.path.getsize(snapshot_file) > 0
        shown = node_status(_Host(_config(tmp_path, replica), replica))
        assert (shown.snapshot_error, shown.snapshot_index) == ("", done.index) and shown.snapshot_at == done.at


def _config(tmp_path: Path, replica: ReplicatedState) -> NodeConfig:
    return NodeConfig("n1", "127.0.0.1:1", replica.selfNode.address, tmp_path, tmp_path / "secret")


def test_a_restarted_node_shows_the_snapshot_it_loaded(tmp_path: Path) -> None:
    with solo_replica(tmp_path, log_compaction_min_entries=3) as replica:
        for i in range(6):
            assert replica.propose(c.SetPool(f"p{i}", 1, 0.0), timeout=5.0).ok
        wait_for(lambda: replica.snapshot_status().index, 10, "a snapshot")
    written = replica.snapshot_status()    # final: the Raft thread (which installs snapshots) has stopped
    with solo_replica(tmp_path) as again:
        loaded = again.snapshot_status()
        assert loaded.index == written.index and loaded.error == "" and loaded.at > 0
