"""A real one-node `ReplicatedState` (pysyncobj, sockets on 127.0.0.1, rocksdict) in
this process, for tests of the adapter and its transport that need no cluster."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from waiting import wait_for

from raftflow.config import NodeConfig, RaftTuning
from raftflow.raft.adapter import ReplicatedState

SECRET = "test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])





@contextlib.contextmanager
def solo_replica(data_dir: Path, **options: Any) -> Iterator[ReplicatedState]:
    """A started one-node replica that leads; destroyed on exit. `options`: RaftTuning
    fields, and `snapshot_retry_delays`. The data directory can be opened again after it."""
    extra = {key: options.pop(key) for key in ("snapshot_retry_delays",) if key in options}
    cfg = NodeConfig("n1", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", data_dir,
                     data_dir / "secret", raft=replace(RaftTuning(), **options))
    replica = ReplicatedState(cfg, SECRET, **extra)
    try:
        wait_for(replica.is_leader, 10, "the one node to lead")
        yield replica
    finally:
        replica.destroy_synchronous()      # the Raft thread is gone: nothing uses the archive now
        replica.state.archive.close()
