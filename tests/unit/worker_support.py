"""A worker on its own, with Raft replaced by a recorder of proposals (used by the
worker unit tests and the ssh task tests against a real sshd)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from raftflow.config import SSHConnection, TaskUser
from raftflow.core import commands as c
from raftflow.core.result import Code, Result
from raftflow.store.local import LocalStore
from raftflow.worker.worker import AttemptSetup, Worker


class Reports:
    """Stands in for Raft: records proposals; a start claim is accepted only if `current`."""

    def __init__(self, current: bool, claim_delay: float = 0.0) -> None:
        self.current = current
        self.claim_delay = claim_delay
        self.commands: list[c.Command] = []
        self.arrived = threading.Condition()

    def propose(self, command: c.Command, timeout: float) -> Result:
        with self.arrived:
            self.commands.append(command)
            self.arrived.notify_all()
        if isinstance(command, c.TaskStarted):
            time.sleep(self.claim_delay)           # a slow commit (e.g. the node was cut off)
            if not self.current:
                return Result(Code.CONFLICT, "attempt 1 on n1 is not current (current: attempt 2 on n2)")
        return Result()

    def wait_for(self, kind: type, timeout: float = 10.0) -> c.Command:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                found = [x for x in self.commands if isinstance(x, kind)]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no {kind.__name__} reported; got {self.commands}"
                self.arrived.wait(remaining)


def make_worker(tmp_path: Path, current: bool, lease: float = 30.0, claim_delay: float = 0.0,
                setup: AttemptSetup | None = None,
                connections: tuple[SSHConnection, ...] = (),
                log_limit: int | None = None, scratch: Path | None = None, store_dir: Path | None = None,
                run_as: TaskUser | None = None) -> tuple[Worker, Reports, LocalStore]:
    """`scratch` (default tmp_path/work) is the worker's scratch folder, `store_dir`
    (default tmp_path/store) its store's: the node's data."""
    reports = Reports(current, claim_delay)
    store_dir = store_dir or tmp_path / "store"
    store = LocalStore(store_dir) if log_limit is None else LocalStore(store_dir, log_limit)
    worker = Worker("n1", 2, store, scratch or tmp_path / "work", propose=reports.propose, lease_duration=lease,
                    setup=(lambda a: setup) if setup is not None else None, connections=connections, run_as=run_as)
    worker.ready.set()
    return worker, reports, store
