"""The web app (node/web) in one process for unit tests: a leading memory replica with
DAGs and three tokens (viewer, operator, admin), the app built on it, and Starlette
TestClients that call it as a token, by cookie, or anonymously. Shared by the
test_web_*.py modules (web-ui's page tests may use it too)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from starlette.testclient import TestClient

from core_support import T0, dag_dict, task
from raftflow.api import errors
from raftflow.api.auth import Authenticator
from raftflow.api.operations import DagFile, Operations
from raftflow.config import NodeConfig, Peer
from raftflow.core import commands as c
from raftflow.leader.loop import Liveness
from raftflow.proto import client_pb2
from raftflow.raft.memory import MemoryReplica
from raftflow.store.copies import LogCopy, merge
from raftflow.web.app import WebContext, build_app
from twin_support import MEMBERS, leading_replica

BASE_URL = "http://testserver"
ROLES = ("viewer", "operator", "admin")
TOKEN_NAMES = {"viewer": "viewer", "operator": "operator", "admin": "boss"}   # ("admin" is reserved)


def dag_file(dag_id: str = "d", filename: str = "d.py", **kw: Any) -> DagFile:
    """A DAG of two tasks, a >> b."""
    return DagFile(filename, json.dumps(dag_dict(dag_id, [task("a"), task("b", upstream=["a"])], **kw)),
                   f"# the source of {dag_id}\n")


@dataclass
class FakePeers:
    statuses: dict[str, client_pb2.NodeStatus] = field(default_factory=dict)
    logs: dict[str, list[client_pb2.LogChunk]] = field(default_factory=dict)
    # node -> the log copies it keeps ((run, task, attempt) -> copy); a node not here does not answer
    copies: dict[str, dict[tuple[str, str, int], LogCopy]] = field(default_factory=dict)

    def node_info(self, node_id: str, timeout: float = 1.0) -> client_pb2.NodeStatus:
        if node_id not in self.statuses:
            raise errors.Unavailable("failed to connect to all addresses")
        return self.statuses[node_id]

    def read_log(self, node_id: str, request: client_pb2.GetTaskLogRequest,
                 timeout: float = 30.0) -> Iterator[client_pb2.LogChunk]:
        if node_id not in self.logs:
            raise errors.Unavailable("Socket closed")
        yield from self.logs[node_id]

    def read_log_copy(self, node_id: str, run_id: str, task_id: str, attempt: int,
                      timeout: float = 5.0) -> LogCopy | None:
        if node_id not in self.copies:
            raise errors.Unavailable("failed to connect to all addresses")
        return self.copies[node_id].get((run_id, task_id, attempt))


def _set(event: threading.Event) -> threading.Event:
    event.set()
    return event


@dataclass
class FakeWorker:
    attempts: list[tuple[str, str, int]] = field(default_factory=list)   # (run, task, attempt) it runs
    ready: threading.Event = field(default_factory=lambda: _set(threading.Event()))   # takes work

    def accept(self, a: Any) -> tuple[bool, str]:
        return True, ""

    def running(self) -> list[tuple[str, str, int]]:
        return list(self.attempts)


@dataclass
class FakeStore:
    """Task logs of attempts that ran on this node: (run_id, task_id, attempt) -> chunks."""
    logs: dict[tuple[str, str, int], list[bytes]] = field(default_factory=dict)

    def read_log_from(self, run_id: str, task_id: str, attempt: int, first: int) -> Iterator[tuple[int, bytes]]:
        chunks = self.logs.get((run_id, task_id, attempt), [])
        return iter([(i, chunk) for i, chunk in enumerate(chunks) if i >= first])


@dataclass
class FakeCopies:
    """The log copies this node keeps of other nodes' attempts."""
    kept: dict[tuple[str, str, int], LogCopy] = field(default_factory=dict)

    def append(self, run_id: str, task_id: str, attempt: int, node: str, offset: int, data: bytes,
               final: bool) -> int:
        key = (run_id, task_id, attempt)
        self.kept[key] = merge(self.kept.get(key), node, offset, data, final, 1 << 20)
        return self.kept[key].end

    def read(self, run_id: str, task_id: str, attempt: int) -> LogCopy | None:
        return self.kept.get((run_id, task_id, attempt))


@dataclass
class FakeHost:
    cfg: NodeConfig
    replica: MemoryReplica
    peers: FakePeers
    liveness: Liveness
    worker: FakeWorker = field(default_factory=FakeWorker)
    store: FakeStore = field(default_factory=FakeStore)
    copies: FakeCopies = field(default_factory=FakeCopies)
    leader_loop: Any = None
    started: float = 0.0


class WebWorld:
    """One node (n1, leader of a memory cluster) with DAG `d` (or those given), a token
    of each role (TOKEN_NAMES; secrets in `secrets` by role), and its web app."""

    def __init__(self, tmp_path: Path, *dag_files: DagFile, https: bool = False) -> None:
        self.replica = leading_replica("n1")
        self.ops = Operations(self.replica, "n1", clock=lambda: T0)
        self.ops.submit_dags(list(dag_files) or [dag_file()])
        self.secrets = {role: self.ops.create_token(TOKEN_NAMES[role], role).secret for role in ROLES}
        cfg = NodeConfig("n1", "127.0.0.1:7001", "127.0.0.1:8001", tmp_path, tmp_path / "secret",
                         peers=(Peer("n2", "127.0.0.1:7002", "127.0.0.1:8002", "127.0.0.1:9002"),
                                Peer("n3", "127.0.0.1:7003", "127.0.0.1:8003", "127.0.0.1:9003")),
                         http_address="127.0.0.1:8081", insecure=not https)
        self.host = FakeHost(cfg, self.replica, FakePeers(), Liveness(list(MEMBERS), cfg.lease_timeout, 1.0, 2, "n1"))
        self.auth = Authenticator(self.replica)
        self.ctx = WebContext.for_node(self.host, self.auth, https=https, ops=self.ops)
        self.app = build_app(self.ctx)

    def client(self, role: str | None = None, **headers: str) -> TestClient:
        """A client sending `role`'s token as a bearer token (None: no token). Server
        errors come back as responses (500), never as exceptions: as a browser sees them."""
        client = TestClient(self.app, base_url=BASE_URL, raise_server_exceptions=False, follow_redirects=False)
        if role is not None:
            client.headers["authorization"] = f"Bearer {self.secrets[role]}"
        client.headers.update(headers)
        return client

    def browser(self, role: str) -> TestClient:
        """A client logged in as `role` through POST /login (it holds the session cookie)."""
        client = self.client()
        response = client.post("/login", data={"token": self.secrets[role]}, headers={"origin": BASE_URL})
        assert response.status_code == 303, response.text
        return client

    def log_size(self) -> int:
        return self.replica.status().commit_index

    def run_task(self, run_id: str, task_id: str, node: str = "n1", exit_code: int | None = 0,
                 attempt: int = 1) -> None:
        """Move a task instance through an attempt on `node`: queued, assigned, started and,
        unless `exit_code` is None, finished with it."""
        commands: list[c.Command] = [c.QueueTask(run_id, task_id, T0), c.AssignTask(run_id, task_id, node, attempt, T0),
                                     c.TaskStarted(run_id, task_id, attempt, node, T0 + 1)]
        if exit_code is not None:
            commands.append(c.TaskFinished(run_id, task_id, attempt, node, exit_code, T0 + 1, T0 + 3, "", "",
                                           T0 + 3))
        for command in commands:
            result = self.replica.propose(command)
            assert result.ok, (command, result)

    def start_run(self, run_id: str) -> None:
        assert self.replica.propose(c.StartRun(run_id, T0)).ok

    def proposers_of(self, kind: type[c.Command]) -> list[str]:
        """Who proposed each committed command of type `kind`, in log order."""
        return [entry.proposer for entry in self.replica._cluster.log if isinstance(entry.command, kind)]
