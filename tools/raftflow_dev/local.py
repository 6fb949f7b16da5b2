"""A cluster of raftflow nodes on this machine: configs, secret, processes, PIDs.

Used by tools/up and tools/down, and by the integration tests, bench and chaos
tools, so that every local cluster is started the same way a real node is:
`raftflow node --config FILE`. Layout under the data dir:

    secret              the cluster secret (0600), generated once
    admin.token         the bootstrap admin token (0600), generated once; every node's
                        admin_token_file, and what the CLI finds beside cluster.json
    ca.pem, ca.key      the cluster's CA (raftflow certs), made once; clients trust ca.pem
    cluster.json        node ids and addresses, web URLs among them (what the CLI and tools read)
    nK/node.toml        node K's config
    nK/node.pem, .key   node K's certificate (CN nK, SANs nK and its host) and key
    nK/node.log         its stderr/stdout
    nK/pid              its PID while started by this helper

Processes are only ever signalled by the PIDs recorded here, after checking the
PID still runs `raftflow node` with that config.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from raftflow import certs
from raftflow.config import NodeConfig, Peer, RaftTuning, SSHConnection, to_toml

if TYPE_CHECKING:
    import grpc

    from raftflow_cli.client import ClusterClient

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now (bound to port 0, then released)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


@dataclass
class LocalNode:
    node_id: str
    grpc_address: str
    raft_address: str
    dir: Path
    peer_address: str
    http_address: str = ""    # its web server (UI and REST API); "" for none
    worker: bool = False      # a worker node: no Raft vote, no raft_address; joins through the voters
    joins: bool = False       # a voter added live: its config joins through the voters instead of naming them

    @property
    def cert_path(self) -> Path:
        return self.dir / "node.pem"

    @property
    def key_path(self) -> Path:
        return self.dir / "node.key"

    @property
    def host(self) -> str:
        return self.grpc_address.rsplit(":", 1)[0]

    @property
    def config_path(self) -> Path:
        return self.dir / "node.toml"

    @property
    def log_path(self) -> Path:
        return self.dir / "node.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / "pid"

    def pid(self) -> int | None:
        """The recorded PID if that process is alive and is this node."""
        try:
            pid = int(self.pid_path.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if str(self.config_path).encode() not in cmdline:
            return None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None
        return None if state == "Z" else pid


class LocalCluster:
    def __init__(self, data_dir: Path, nodes: int = 3, port_base: int | None = None, slots: int = 4,
                 python: str = sys.executable, extra_env: dict[str, str] | None = None,
                 raft: RaftTuning | None = None, hosts: list[str] | None = None,
                 launcher: dict[str, list[str]] | None = None,
                 queues: dict[str, list[str]] | None = None,
                 connections: dict[str, tuple[SSHConnection, ...]] | None = None,
                 run_as_user: str | None = None, scratch_dir: Path | None = None,
                 insecure: bool = False, workers: int = 0) -> None:
        """`hosts`: one address per node (default loopback); `launcher`: a command prefix
        per node id (e.g. `ip netns exec NS`) for nodes in network namespaces; `queues`:
        the task queues of some nodes (the others serve "default"); `connections`: the
        SSH connections of some nodes (the others have none); `run_as_user`, `scratch_dir`:
        every node's settings of those names (default: unset, the system temp dir);
        `insecure`: plaintext nodes (`insecure = true`) and clients, no certificates;
        `workers`: worker nodes w1..wN (no vote) besides the `nodes` voters (`add_worker`
        adds one later). An existing cluster.json decides the nodes, their addresses and
        `insecure` (`workers` adds to the workers it has, up to that many)."""
        self.run_as_user = run_as_user
        self.scratch_dir = scratch_dir
        self.data_dir = data_dir.resolve()
        self.raft = raft or RaftTuning()
        self.launcher = launcher or {}
        self.queues = queues or {}
        self.connections = connections or {}
        self.python = python
        self.extra_env = extra_env or {}
        self.port_base = port_base
        self._procs: dict[str, subprocess.Popen] = {}   # the latest process of each node
        self._started: list[subprocess.Popen] = []      # every process this helper started
        manifest = self.data_dir / "cluster.json"
        saved = json.loads(manifest.read_text()) if manifest.exists() else None
        # A cluster.json from before the peer port (and TLS) is laid out afresh.
        self.outdated = saved is not None and not all("peer" in n for n in saved["nodes"])
        if saved is not None and not self.outdated:
            self.port_base = saved.get("port_base")
            self.slots = saved["slots"]
            self.insecure = bool(saved.get("insecure", False))
            # (a cluster.json from before the web server gets a free port per node for it)
            http_ports = free_ports(len(saved["nodes"]))
            self.nodes = [LocalNode(n["id"], n["grpc"], n["raft"], self.data_dir / n["id"], n["peer"],
                                    n.get("http") or f"{n['grpc'].rsplit(':', 1)[0]}:{http_ports[i]}",
                                    worker=bool(n.get("worker")), joins=bool(n.get("joins")))
                          for i, n in enumerate(saved["nodes"])]
            while len(self.workers) < workers:
                self._new_worker()
            return
        self.slots = slots
        self.insecure = insecure
        if port_base is None:
            ports = free_ports(4 * nodes)
            grpc_ports, raft_ports, peer_ports, http_ports = (ports[k * nodes:(k + 1) * nodes] for k in range(4))
        else:
            grpc_ports = [port_base + i for i in range(nodes)]
            raft_ports = [port_base + 100 + i for i in range(nodes)]
            peer_ports = [port_base + 200 + i for i in range(nodes)]
            http_ports = [port_base + 300 + i for i in range(nodes)]
        hosts = hosts or [LOOPBACK] * nodes
        self.nodes = [
            LocalNode(f"n{i + 1}", f"{hosts[i]}:{grpc_ports[i]}", f"{hosts[i]}:{raft_ports[i]}",
                      self.data_dir / f"n{i + 1}", f"{hosts[i]}:{peer_ports[i]}", f"{hosts[i]}:{http_ports[i]}")
            for i in range(nodes)
        ]
        for _ in range(workers):
            self._new_worker()

    @property
    def voters(self) -> list[LocalNode]:
        return [n for n in self.nodes if not n.worker]

    @property
    def workers(self) -> list[LocalNode]:
        return [n for n in self.nodes if n.worker]

    def _new_worker(self, host: str = LOOPBACK) -> LocalNode:
        """A worker node's place (id w<N>, ports on `host`), appended to `nodes`."""
        taken = {n.node_id for n in self.nodes}
        node_id = next(f"w{i}" for i in itertools.count(1) if f"w{i}" not in taken)
        if self.port_base is not None:   # (tools/up --port-base P: worker i at P+400+i-1, P+500+i-1, P+600+i-1)
            i = int(node_id[1:]) - 1
            grpc_port, peer_port, http_port = (self.port_base + k + i for k in (400, 500, 600))
        else:
            grpc_port, peer_port, http_port = self._unused_ports(3)
        node = LocalNode(node_id, f"{host}:{grpc_port}", "", self.data_dir / node_id, f"{host}:{peer_port}",
                         f"{host}:{http_port}", worker=True)
        self.nodes.append(node)
        return node

    def _unused_ports(self, count: int) -> list[int]:
        """Free ports that no node of this cluster was given (a port picked for a node that
        has not bound it yet is free to the kernel, and was handed out twice)."""
        taken = {int(address.rsplit(":", 1)[1]) for n in self.nodes
                 for address in (n.grpc_address, n.raft_address, n.peer_address, n.http_address) if address}
        for _ in range(100):
            ports = free_ports(count)
            if taken.isdisjoint(ports):
                return ports
        raise RuntimeError("no free ports that this cluster's nodes do not already use")

    def new_voter(self, start: bool = True) -> str:
        """A node to be added as a voter live (`raftflow cluster add-voter`): configured to
        `join` through the voters there are, and started unless `start` is false; it waits
        to be added. No other node's config changes. Returns its id."""
        taken = {n.node_id for n in self.nodes}
        node_id = next(f"n{i}" for i in itertools.count(1) if f"n{i}" not in taken)
        grpc_port, raft_port, peer_port, http_port = self._unused_ports(4)
        node = LocalNode(node_id, f"{LOOPBACK}:{grpc_port}", f"{LOOPBACK}:{raft_port}", self.data_dir / node_id,
                         f"{LOOPBACK}:{peer_port}", f"{LOOPBACK}:{http_port}", joins=True)
        self.nodes.append(node)
        self.configure()
        if start:
            self.start_node(node_id)
        return node_id

    def forget(self, node_id: str) -> None:
        """Drop a node that left the cluster (a voter removed live) from this helper's list."""
        self.nodes.remove(self.node(node_id))
        self.configure()

    def remove_worker(self, node_id: str, timeout: float = 70.0) -> None:
        """Stop a worker (SIGTERM: it drains and leaves the cluster) and forget it here."""
        node = self.node(node_id)
        if not node.worker:
            raise ValueError(f"{node_id} is a voter, not a worker")
        self.stop_node(node_id, timeout=timeout)
        self.nodes.remove(node)
        self.configure()

    def add_worker(self, start: bool = True, host: str = LOOPBACK) -> str:
        """Add a worker node to this cluster (configured, and started unless `start` is
        false) at `host` (a network namespace's address: give `launcher` its id's prefix):
        no other node's config changes. Returns its id."""
        node = self._new_worker(host)
        self.configure()
        if start:
            self.start_node(node.node_id)
        return node.node_id

    # ------------------------------------------------------------ set-up
    @property
    def secret_file(self) -> Path:
        return self.data_dir / "secret"

    @property
    def ca_path(self) -> Path:
        """The CA certificate clients of this cluster trust (`<data-dir>/ca.pem`)."""
        return self.data_dir / certs.CA_CERT

    @property
    def addresses(self) -> str:
        return ",".join(n.grpc_address for n in self.nodes)

    def node(self, node_id: str) -> LocalNode:
        return next(n for n in self.nodes if n.node_id == node_id)

    def web_url(self, node_id: str) -> str:
        """The base URL of the node's web server (UI and REST API): https unless insecure."""
        return f"{'http' if self.insecure else 'https'}://{self.node(node_id).http_address}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def admin_token(self) -> str | None:
        """The admin token `configure` wrote; None before it has (no token is sent)."""
        try:
            return self.admin_token_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def client(self, addresses: list[str] | None = None, timeout: float = 10.0,
               token: str | None = None) -> "ClusterClient":
        """A client of this cluster (every node, or `addresses`): the one place that gives
        tests and tools what a client needs to reach and be let into these nodes. It
        calls with the admin token unless given another `token` (role tests)."""
        from raftflow_cli.client import ClusterClient

        return ClusterClient(addresses or self.addresses.split(","), timeout=timeout,
                             token=self.admin_token() if token is None else token or None,
                             ca_pem=None if self.insecure else self.ca_path.read_bytes(), insecure=self.insecure,
                             ca_name=f"the CA in {self.ca_path}")

    def channel(self, address: str, token: str | None = None) -> "grpc.Channel":
        """A raw gRPC channel to one of this cluster's nodes' client API (for calls the
        client does not wrap): TLS with the cluster's CA, as a client, sending the admin
        token (or `token`; "" sends none) on every call."""
        import grpc

        from raftflow_cli.client import with_token

        if self.insecure:
            channel = grpc.insecure_channel(address)
        else:
            channel = grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=self.ca_path.read_bytes()))
        return with_token(channel, self.admin_token() if token is None else token)

    def peer_channel(self, node_id: str, as_node: str | None) -> "grpc.Channel":
        """A raw channel to `node_id`'s peer API, presenting `as_node`'s certificate (None:
        none), as a peer does (tests of the peer port's checks)."""
        import grpc

        target = self.node(node_id)
        if self.insecure:
            return grpc.insecure_channel(target.peer_address)
        key = cert = None
        if as_node is not None:
            key, cert = self.node(as_node).key_path.read_bytes(), self.node(as_node).cert_path.read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_path.read_bytes(), private_key=key,
                                                   certificate_chain=cert)
        return grpc.secure_channel(target.peer_address, credentials,
                                   options=(("grpc.ssl_target_name_override", node_id),))

    def cli_env(self) -> dict[str, str]:
        """Environment for the `raftflow` CLI run against this cluster: it finds the nodes
        (and what else a client needs) under this data directory, as after tools/up."""
        return {"RAFTFLOW_LOCAL_DIR": str(self.data_dir)}

    def configure(self) -> None:
        """Write the secret, the CA and every node's certificate (each once, unless
        insecure), every node's config and cluster.json."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.secret_file.exists():
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        if not self.admin_token_file.exists():
            fd = os.open(self.admin_token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        if not self.insecure and not self.ca_path.exists():
            certs.write_pair(certs.new_ca(f"raftflow local CA ({self.data_dir.name})"), self.ca_path,
                             self.data_dir / certs.CA_KEY)
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            if not self.insecure and not node.cert_path.exists():
                self.issue_cert(node.node_id, self.read_ca())
            joining = node.worker or node.joins
            peers = tuple(Peer(o.node_id, o.grpc_address, o.raft_address, o.peer_address)
                          for o in self.voters if o is not node and not o.joins) if not joining else ()
            join = tuple(o.peer_address for o in self.voters if o is not node) if joining else ()
            cfg = NodeConfig(node_id=node.node_id, grpc_address=node.grpc_address, raft_address=node.raft_address,
                             peer_address=node.peer_address, data_dir=node.dir / "data",
                             role="worker" if node.worker else "voter", join=join,
                             secret_file=self.secret_file, slots=self.slots, peers=peers, raft=self.raft,
                             queues=tuple(self.queues.get(node.node_id, ("default",))),
                             connections=self.connections.get(node.node_id, ()), run_as_user=self.run_as_user,
                             admin_token_file=self.admin_token_file, http_address=node.http_address,
                             insecure=self.insecure, tls_cert_file=None if self.insecure else node.cert_path,
                             tls_key_file=None if self.insecure else node.key_path,
                             tls_ca_file=None if self.insecure else self.ca_path)
            if self.scratch_dir is not None:
                cfg = replace(cfg, scratch_dir=self.scratch_dir)
            node.config_path.write_text(to_toml(cfg))
        (self.data_dir / "cluster.json").write_text(json.dumps({
            "slots": self.slots,
            **({"port_base": self.port_base} if self.port_base is not None else {}),
            "insecure": self.insecure,
            "nodes": [{"id": n.node_id, "grpc": n.grpc_address, "raft": n.raft_address, "peer": n.peer_address,
                       "http": n.http_address, **({"worker": True} if n.worker else {}),
                       **({"joins": True} if n.joins else {})} for n in self.nodes],
        }, indent=2) + "\n")

    def read_ca(self) -> certs.KeyPair:
        return certs.read_pair(self.ca_path, self.data_dir / certs.CA_KEY)

    def issue_cert(self, node_id: str, ca: certs.KeyPair) -> None:
        """Give `node_id` a certificate from `ca` for its host (and localhost), replacing
        the one it has (a test gives a node one from another CA this way)."""
        node = self.node(node_id)
        node.cert_path.unlink(missing_ok=True)
        node.key_path.unlink(missing_ok=True)
        certs.write_pair(certs.issue(ca, node.node_id, sorted({node.host, LOOPBACK, "localhost"})),
                         node.cert_path, node.key_path)

    # ------------------------------------------------------------ processes
    def live_pid(self, node_id: str) -> int | None:
        """The node's live PID: our own child if we started it (right after fork, before
        exec, its /proc cmdline is still ours, so the pid-file check cannot see it),
        else the recorded PID if that process is this node (started by another tool)."""
        proc = self._procs.get(node_id)
        if proc is not None and proc.poll() is None:
            return proc.pid
        return self.node(node_id).pid()

    def pid_of(self, node_id: str) -> int:
        """`live_pid` of a node that must be running (a measurement of it, say)."""
        pid = self.live_pid(node_id)
        if pid is None:
            raise RuntimeError(f"{node_id} is not running")
        return pid

    def start_node(self, node_id: str, env: dict[str, str] | None = None) -> int:
        """Start a node unless it runs; `env`: variables for this process only (over `extra_env`)."""
        node = self.node(node_id)
        running = self.live_pid(node_id)
        if running is not None:
            return running
        log = open(node.log_path, "ab")
        # The node's config file names its data_dir: a RAFTFLOW_DATA_DIR left in this
        # shell (the CLI's old name for the local cluster's folder) must not move it.
        inherited = {k: v for k, v in os.environ.items() if k != "RAFTFLOW_DATA_DIR"}
        env = {**inherited, **self.extra_env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [*self.launcher.get(node_id, []),
             self.python, "-m", "raftflow_cli.main", "node", "--config", str(node.config_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        self._procs[node_id] = proc
        self._started.append(proc)
        tmp = node.pid_path.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(node.pid_path)              # readers never see a half-written pid file
        return proc.pid

    def start(self) -> None:
        self.configure()
        for node in self.nodes:
            self.start_node(node.node_id)

    def signal_node(self, node_id: str, sig: int) -> bool:
        pid = self.live_pid(node_id)
        if pid is None:
            return False
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self._reap(node_id, pid, timeout=5.0)
        return True

    def stop_node(self, node_id: str, timeout: float = 10.0) -> None:
        node = self.node(node_id)
        pid = self.live_pid(node_id)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            if not self._reap(node_id, pid, timeout):
                os.kill(pid, signal.SIGKILL)
                self._reap(node_id, pid, 5.0)
        node.pid_path.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop every node, workers first (so they can still leave through the voters),
        then any process this helper started that still runs (by its own PID, whatever
        the pid files say)."""
        for node in self.workers:
            pid = self.live_pid(node.node_id)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        for node in self.workers:
            self.stop_node(node.node_id)
        for node in self.nodes:
            pid = self.live_pid(node.node_id)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        for node in self.nodes:
            self.stop_node(node.node_id)
        for proc in self._started:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGCONT)   # a paused process cannot act on SIGTERM
                    proc.terminate()
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                except ProcessLookupError:
                    pass

    def _reap(self, node_id: str, pid: int, timeout: float) -> bool:
        """Wait until the process is gone (reaping it if we are its parent)."""
        deadline = time.monotonic() + timeout
        proc = self._procs.get(node_id)
        while time.monotonic() < deadline:
            if proc is not None and proc.pid == pid:
                if proc.poll() is not None:
                    return True
            elif not Path(f"/proc/{pid}").exists() or self.node(node_id).pid() is None:
                return True
            time.sleep(0.02)
        return False

    def wait_exit(self, node_id: str, timeout: float) -> int | None:
        """The exit code of a node process this helper started, once it exits (None on timeout)."""
        proc = self._procs.get(node_id)
        if proc is None:
            raise ValueError(f"{node_id} was not started by this helper")
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> list[str]:
        return [n.node_id for n in self.nodes if self.live_pid(n.node_id) is not None]

    def wait_ready(self, timeout: float = 30.0, expect_nodes: int | None = None) -> dict:
        """Wait until one leader is known and `expect_nodes` (default all) nodes are healthy
        and ready (their NodeStarted committed: nothing more is written on their own start).
        Returns the cluster status as JSON; raises TimeoutError with the last status seen."""
        from raftflow_cli.client import ClusterUnreachable

        expect = len(self.nodes) if expect_nodes is None else expect_nodes
        client = self.client(timeout=2.0)
        deadline = time.monotonic() + timeout
        last: object = None
        try:
            while time.monotonic() < deadline:
                try:
                    status = client.cluster_status()
                    last = status
                    healthy = [n for n in status["nodes"] if n["healthy"] and n.get("ready")]
                    if status["leader"] and len(healthy) >= expect:
                        return status
                except ClusterUnreachable as e:
                    last = str(e)
                    self._raise_if_all_exited()
                time.sleep(0.1)
        finally:
            client.close()
        raise TimeoutError(f"cluster not ready after {timeout:.0f}s; last status: {last}")

    def settled_leader(self, timeout: float = 30.0) -> tuple[str, int]:
        """(leader id, its term) once every running node, asked itself, names the same
        leader in the same term. One node's answer is not enough after a leader was
        paused and resumed: until a message of the later term reaches it, the resumed
        node still answers that it leads, in its old term."""
        from raftflow_cli.client import ClusterUnreachable

        running = [node for node in self.nodes if self.live_pid(node.node_id) is not None]
        clients = {node.node_id: self.client([node.grpc_address], timeout=2.0) for node in running}
        deadline = time.monotonic() + timeout
        views: dict[str, tuple[str, int] | str] = {}
        try:
            while time.monotonic() < deadline:
                for node_id, client in clients.items():
                    try:
                        status = client.cluster_status()
                        own = next(n for n in status["nodes"] if n["id"] == node_id)
                        views[node_id] = (str(status["leader"] or ""), int(own["raft_term"]))
                    except ClusterUnreachable as e:
                        views[node_id] = str(e)
                agreed = set(views.values())
                if len(agreed) == 1:
                    view = agreed.pop()
                    if isinstance(view, tuple) and view[0]:
                        return view
                time.sleep(0.05)
        finally:
            for client in clients.values():
                client.close()
        raise TimeoutError(f"the nodes did not agree on a leader within {timeout:.0f}s; last views: {views}")

    def _raise_if_all_exited(self) -> None:
        """Every node this object started has exited (a config it refuses, say): waiting
        longer cannot help, and their logs say why."""
        started = [self._procs.get(n.node_id) for n in self.nodes]
        if all(p is not None and p.poll() is not None for p in started):
            tail = self.nodes[0].log_path.read_text(errors="replace")[-2000:] if self.nodes[0].log_path.exists() else ""
            raise RuntimeError(f"every node exited (codes {[p.returncode for p in started if p]}); "
                               f"{self.nodes[0].node_id}'s log ends:\n{tail}")
