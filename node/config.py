"""Node configuration: a TOML file, overridden by RAFTFLOW_* environment variables,
overridden by command-line flags (flag > environment > file > default).

    node_id = "n1"
    grpc_address = "127.0.0.1:50051"    # client API (TLS)
    peer_address = "127.0.0.1:50251"    # peer API, node to node (mutual TLS)
    raft_address = "127.0.0.1:50151"    # pysyncobj (encrypted with the cluster secret)
    http_address = "127.0.0.1:8081"     # optional: the web UI and REST API (HTTPS with the TLS files)
    metrics_require_token = true         # GET /metrics needs a token of any role (docs/metrics.md)
    data_dir = "/var/lib/raftflow/n1"
    secret_file = "/etc/raftflow/secret"
    slots = 4
    task_log_limit = 67108864            # bytes of output stored per task attempt (default 64 MiB)
    log_keep_bytes = 1048576             # bytes of each attempt's log kept in copies on other nodes (1 MiB)
    tls_cert_file = "/etc/raftflow/tls/n1.pem"   # this node's certificate: CN = node_id (raftflow certs)
    tls_key_file = "/etc/raftflow/tls/n1.key"
    tls_ca_file = "/etc/raftflow/tls/ca.pem"     # the CA that issued every node's certificate
    insecure = false                     # true: plaintext on both gRPC ports, development only
    scratch_dir = "/tmp"                 # where attempts' working folders go (default: the system temp dir)
    run_as_user = "raftflow-task"        # local task processes run as this user (default: the node's)
    admin_token_file = "/etc/raftflow/admin.token"   # optional: the bootstrap admin token
    log_format = "text"                  # or "json": one JSON object per log line (--log-format)
    role = "voter"                       # or "worker": runs tasks, no Raft vote (--role; below)

    [[peers]]
    id = "n2"
    grpc_address = "10.0.0.2:50051"
    raft_address = "10.0.0.2:50151"
    peer_address = "10.0.0.2:50251"

    [raft]                               # optional tuning, seconds
    election_timeout_min = 0.7
    election_timeout_max = 1.4
    append_entries_period = 0.2

    [connections.spark_master]           # SSH connections for ssh tasks (file only)
    host = "namenode.internal"
    port = 22
    user = "spark"
    key_file = "/etc/raftflow/keys/spark_master"   # and/or password_env = "SPARK_SSH_PASSWORD"
    known_hosts = "/etc/raftflow/known_hosts"      # default: ~/.ssh/known_hosts

A voter added to a running cluster (`raftflow cluster add-voter`) gives `join` instead
of peers: it waits until it is a voter, then takes the others from the answer. A worker
node (`role = "worker"`) has no Raft vote and no raft_address and names no peers: it
gives `join = ["HOST:PEER_PORT", ...]`, the peer API of one or more voters (`--join`,
`RAFTFLOW_JOIN="h1:p1,h2:p2"`), asks the first that answers for the voters, and follows
the log as a read-only Raft node (node/README.md, "Worker nodes"). It needs
the cluster's secret file and, unless insecure, a certificate from the cluster CA with
its node id, as every node does; no other node's config names it.

In the environment, peers are `RAFTFLOW_PEERS="n2=HOST:GRPC_PORT/HOST:RAFT_PORT/HOST:PEER_PORT,n3=..."`.
Without the three tls_* files a node refuses to start (NodeConfig.read_tls) unless
`insecure = true`.
Secrets are never part of the config: a connection names the key file, and the
environment variable that holds a password or key passphrase.
`load` raises ConfigError with a message that names the setting and its source.

What a task sees (worker/worker.py): each attempt works in a folder of its own under
`scratch_dir`/raftflow-NODE-XXXXXXXX (one per node data directory, emptied when the
node starts; never inside data_dir), removed once the attempt is reported.
`run_as_user` names the user (and its primary group, no supplementary groups) that
bash and python tasks and the template renderer run as; it must exist, and only a
node running as root may name another user than its own. The ssh runner stays the
node's user: it reads the connection's key file, which the task user must not.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import tempfile
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .core.spec import ID_PATTERN, ID_RULE
from .nodelog import LOG_FORMATS


class ConfigError(ValueError):
    pass


LEASE_MARGIN = 0.5  # seconds between a deposed leader's last possible grant and the leader's expiry
# The most of each attempt's log a copy on another node may keep (log_keep_bytes): a
# holder rewrites a copy whole on each increment it receives, so it stays small.
MAX_LOG_KEEP_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Peer:
    id: str
    grpc_address: str
    raft_address: str
    peer_address: str   # its peer API (mutual TLS): where other nodes dispatch and heartbeat


@dataclass(frozen=True, slots=True)
class TLSMaterial:
    """What a node serves and dials with (PEM): its certificate and key, and the CA
    bundle every member's certificate must chain to."""
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


@dataclass(frozen=True, slots=True)
class RaftTuning:
    # How long a follower waits on a silent leader (paused, partitioned) before it stands;
    # a leader whose process died is noticed when its connection closes (raft/eager.py).
    election_timeout_min: float = 0.7
    election_timeout_max: float = 1.4
    # A leader's longest silence (heartbeat round); proposals are sent at once (raft/eager.py).
    append_entries_period: float = 0.2
    # The Raft thread's longest sleep when nothing is due (connection retries, snapshot progress).
    tick_period: float = 0.5
    connection_timeout: float = 2.0
    connection_retry: float = 0.5
    leader_fallback_timeout: float = 1.0
    log_compaction_min_entries: float = 5000   # compact the in-memory Raft log past this many entries
    log_compaction_min_time: float = 300.0     # ... or this many seconds after the last compaction


@dataclass(frozen=True, slots=True)
class SSHConnection:
    """Where an ssh task's command runs, and how this node logs in there. Holds no
    secret: a password or key passphrase is read from the named environment variable
    by the process that connects (worker/sshrun.py), when it connects."""
    name: str
    host: str
    user: str
    port: int = 22
    key_file: Path | None = None
    password_env: str | None = None     # environment variable holding the password
    passphrase_env: str | None = None   # environment variable holding key_file's passphrase
    known_hosts: Path = Path("~/.ssh/known_hosts").expanduser()
    # Accept (and record in known_hosts) the key of a host not listed yet. A changed
    # key is refused either way.
    trust_on_first_use: bool = False
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def host_key_name(self) -> str:
        """How known_hosts names this host (OpenSSH's and paramiko's convention)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def auth(self) -> str:
        """How it logs in, for listings: "key", "password" or "key+password"."""
        return "+".join(filter(None, ("key" if self.key_file else "", "password" if self.password_env else "")))

    def to_json(self) -> str:
        """For the ssh runner process (worker/sshrun.py); holds no secret."""
        return json.dumps({name: str(value) if isinstance(value, Path) else value
                           for name, value in ((f, getattr(self, f)) for f in self.__dataclass_fields__)})

    @staticmethod
    def from_json(text: str) -> "SSHConnection":
        raw = json.loads(text)
        for name in ("key_file", "known_hosts"):
            if raw.get(name) is not None:
                raw[name] = Path(raw[name])
        return SSHConnection(**raw)


@dataclass(frozen=True, slots=True)
class TaskUser:
    """The user a node's local task processes run as (run_as_user), looked up on this
    machine: its primary group, its home (the task's HOME)."""
    name: str
    uid: int
    gid: int
    home: str

    @staticmethod
    def named(name: str, where: str = "run_as_user") -> "TaskUser":
        """The user called `name`; ConfigError (naming `where` the setting came from) if none."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"run_as_user from {where} is {name!r}, but there is no such user on this machine: "
                              f"create it (useradd --system --no-create-home {name}) or leave run_as_user out "
                              "to run tasks as the node's own user") from None
        return TaskUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/")


def _default_scratch_dir() -> Path:
    return Path(tempfile.gettempdir())


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    grpc_address: str
    raft_address: str          # "" on a worker (it has no Raft port: a read-only Raft node)
    data_dir: Path
    secret_file: Path
    slots: int = 4
    peers: tuple[Peer, ...] = ()
    raft: RaftTuning = field(default_factory=RaftTuning)
    heartbeat_interval: float = 0.5
    lease_timeout: float = 4.0    # a silent node's attempts are forfeit after this; workers fence at half
    log_level: str = "INFO"
    # The node's own log on stderr: "text" (readable lines) or "json" (one object per
    # line: time, level, logger, message, node, term, run_id/task_id/attempt; nodelog.py).
    log_format: str = "text"
    # Flush every Raft journal entry (and term/vote change) to disk before the node
    # acknowledges it: commits survive a power loss of every machine, at a cost per
    # commit (see README, "What survives what"). Off: they survive kill -9 and the
    # loss of any minority of machines.
    fsync: bool = False
    # Task queues this node serves: a task with `queue="gpu"` runs only on nodes listing it.
    queues: tuple[str, ...] = ("default",)
    # SSH connections by name; ssh tasks naming one are assigned only to nodes having it.
    connections: tuple[SSHConnection, ...] = ()
    # Bytes of a task attempt's output stored in this node's log store; past it the log
    # says where it was cut and the rest is dropped (store/local.py).
    task_log_limit: int = 64 * 1024 * 1024
    # Bytes of each attempt's log that the nodes holding a copy of it keep (the last
    # ones; the copy's first line says how many were cut): store/copies.py.
    log_keep_bytes: int = 1024 * 1024
    # The peer API's listen address. load() requires it; "" only for in-process
    # replicas in tests, which serve no API.
    peer_address: str = ""
    # TLS: the node's certificate (CN = node_id), its key, and the cluster CA bundle.
    # All three, or `insecure` (plaintext on both gRPC ports; development only).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    insecure: bool = False
    # Where this node's attempt folders go (see `scratch`): outside data_dir, so a task's
    # working directory is not the node's.
    scratch_dir: Path = field(default_factory=_default_scratch_dir)
    # The user local task processes run as; None: the node's own user.
    run_as_user: str | None = None
    # A file holding the bootstrap admin token: this node accepts it as role admin under
    # the name "admin" (api/auth.py). Not replicated and not revocable through the API:
    # change or remove the file (or this setting) and restart the node to revoke it.
    admin_token_file: Path | None = None
    # The web UI and the Airflow-style REST API (node/web/): HTTPS with the node's TLS
    # files, plain HTTP when `insecure`. "" (the default): no web server.
    http_address: str = ""
    # GET /metrics on http_address needs a token of any role (true), or is open to whoever
    # reaches the port (false): docs/metrics.md weighs it.
    metrics_require_token: bool = True
    # "voter" (a Raft member named in every voter's peers) or "worker" (core/members.py).
    role: str = "voter"
    # A worker's way in, or a voter's added live: voters' peer addresses (HOST:PORT), asked
    # in turn for the members.
    join: tuple[str, ...] = ()
    # A worker stopped (SIGTERM) takes no new work and lets its running attempts finish
    # for up to this many seconds; those still running then are handed back (queued
    # elsewhere, no retry used). Voters hand theirs back at once.
    drain_timeout: float = 60.0

    @property
    def is_worker(self) -> bool:
        return self.role == "worker"

    @property
    def web_url(self) -> str:
        """Where this node's web server is ("" without one)."""
        if not self.http_address:
            return ""
        return f"{'http' if self.insecure else 'https'}://{self.http_address}"

    @property
    def scratch(self) -> Path:
        """This node's own folder under scratch_dir, where each attempt gets a folder: named
        by the node id and its data_dir, so two nodes on one machine (also of two clusters
        with the same node ids) never share one. The worker empties it at start."""
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:8]
        return self.scratch_dir / f"raftflow-{self.node_id}-{digest}"

    @property
    def task_user(self) -> TaskUser | None:
        """run_as_user, looked up on this machine (ConfigError if it does not exist)."""
        return TaskUser.named(self.run_as_user) if self.run_as_user is not None else None

    @property
    def worker_lease(self) -> float:
        """How long an acknowledged heartbeat lets this node run attempts (worker/lease.py)."""
        return self.lease_timeout / 2

    @property
    def healthy_window(self) -> float:
        """A node silent for longer gets no new work (its running attempts are kept)."""
        return max(1.0, 3 * self.heartbeat_interval)

    @property
    def all_nodes(self) -> tuple[Peer, ...]:
        """Every member, this node included, in node-id order."""
        me = Peer(self.node_id, self.grpc_address, self.raft_address, self.peer_address)
        return tuple(sorted((me, *self.peers), key=lambda p: p.id))

    def read_secret(self) -> str:
        """The cluster secret. A node refuses to start without one (Raft transport and
        peer API are authenticated with it)."""
        try:
            secret = self.secret_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the cluster secret from {self.secret_file}: {e.strerror}. "
                              "Every node needs the same secret file (tools/up creates one for a local cluster).") \
                from None
        if len(secret) < 16:
            raise ConfigError(f"the cluster secret in {self.secret_file} is empty or shorter than 16 characters; "
                              "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return secret

    def read_admin_token(self) -> str | None:
        """The bootstrap admin token of `admin_token_file` (None when the setting is unset)."""
        if self.admin_token_file is None:
            return None
        try:
            token = self.admin_token_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read admin_token_file {self.admin_token_file}: {e.strerror}. Create it (0600) "
                              "with a random token, or remove the setting") from None
        if len(token) < 16:
            raise ConfigError(f"the admin token in {self.admin_token_file} is empty or shorter than 16 characters; "
                              "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return token

    def read_tls(self) -> TLSMaterial | None:
        """The node's TLS files, checked (its certificate names this node and holds the
        key given), or None when `insecure`. A node refuses to start without them."""
        from .certs import CertError, check_node_pair, read_pair

        if self.insecure:
            return None
        if self.tls_cert_file is None or self.tls_key_file is None or self.tls_ca_file is None:
            raise ConfigError(
                "no TLS certificate: set tls_cert_file, tls_key_file and tls_ca_file (RAFTFLOW_TLS_CERT_FILE, "
                "RAFTFLOW_TLS_KEY_FILE, RAFTFLOW_TLS_CA_FILE). Make them with `raftflow certs init --dir DIR` once, "
                f"then `raftflow certs issue {self.node_id} --dir DIR --host HOST` per node (deploy/README.md, "
                "\"Certificates\"); or, for development only, set insecure = true to serve plaintext")
        try:
            pair = read_pair(self.tls_cert_file, self.tls_key_file)
            check_node_pair(pair, self.node_id, f"tls_cert_file {self.tls_cert_file}")
            ca_pem = self.tls_ca_file.read_bytes()
        except CertError as e:
            raise ConfigError(str(e)) from None
        except OSError as e:
            raise ConfigError(f"cannot read tls_ca_file {self.tls_ca_file}: {e.strerror}") from None
        if b"BEGIN CERTIFICATE" not in ca_pem:
            raise ConfigError(f"tls_ca_file {self.tls_ca_file} holds no PEM certificate")
        return TLSMaterial(pair.cert_pem, pair.key_pem, ca_pem)


def _queues(value: Any) -> tuple[str, ...]:
    """A TOML list of names, or "a,b" text (environment, flags)."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or \
            not all(isinstance(v, str) and ID_PATTERN.fullmatch(v) for v in items):
        raise ValueError(value)
    return tuple(dict.fromkeys(items))


_queues.__name__ = f"a non-empty list of queue names ({ID_RULE})"


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


_bool.__name__ = "true or false"

ROLES = ("voter", "worker")


def _addresses(value: Any) -> tuple[str, ...]:
    """A TOML list of HOST:PORT, or "a:1,b:2" text (environment, flags)."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(value)
    return tuple(dict.fromkeys(items))


_addresses.__name__ = "a non-empty list of HOST:PORT addresses"

_SCALARS: dict[str, tuple[Callable[[Any], Any], str]] = {  # key -> (type, environment variable)
    "node_id": (str, "RAFTFLOW_NODE_ID"),
    "grpc_address": (str, "RAFTFLOW_GRPC_ADDRESS"),
    "raft_address": (str, "RAFTFLOW_RAFT_ADDRESS"),
    "data_dir": (Path, "RAFTFLOW_DATA_DIR"),
    "secret_file": (Path, "RAFTFLOW_SECRET_FILE"),
    "slots": (int, "RAFTFLOW_SLOTS"),
    "heartbeat_interval": (float, "RAFTFLOW_HEARTBEAT_INTERVAL"),
    "lease_timeout": (float, "RAFTFLOW_LEASE_TIMEOUT"),
    "log_level": (str, "RAFTFLOW_LOG_LEVEL"),
    "log_format": (str, "RAFTFLOW_LOG_FORMAT"),
    "fsync": (_bool, "RAFTFLOW_FSYNC"),
    "queues": (_queues, "RAFTFLOW_QUEUES"),
    "task_log_limit": (int, "RAFTFLOW_TASK_LOG_LIMIT"),
    "log_keep_bytes": (int, "RAFTFLOW_LOG_KEEP_BYTES"),
    "peer_address": (str, "RAFTFLOW_PEER_ADDRESS"),
    "tls_cert_file": (Path, "RAFTFLOW_TLS_CERT_FILE"),
    "tls_key_file": (Path, "RAFTFLOW_TLS_KEY_FILE"),
    "tls_ca_file": (Path, "RAFTFLOW_TLS_CA_FILE"),
    "insecure": (_bool, "RAFTFLOW_INSECURE"),
    "scratch_dir": (Path, "RAFTFLOW_SCRATCH_DIR"),
    "run_as_user": (str, "RAFTFLOW_RUN_AS_USER"),
    "admin_token_file": (Path, "RAFTFLOW_ADMIN_TOKEN_FILE"),
    "http_address": (str, "RAFTFLOW_HTTP_ADDRESS"),
    "metrics_require_token": (_bool, "RAFTFLOW_METRICS_REQUIRE_TOKEN"),
    "role": (str, "RAFTFLOW_ROLE"),
    "join": (_addresses, "RAFTFLOW_JOIN"),
    "drain_timeout": (float, "RAFTFLOW_DRAIN_TIMEOUT"),
}
_TLS_FILES = ("tls_cert_file", "tls_key_file", "tls_ca_file")


def load(path: str | Path | None, flags: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Merge file, environment and flags (None-valued flags are ignored)."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    where: dict[str, str] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        raw = _read_toml(path)
        where = {k: f"{path}" for k in raw}
        base = path.parent.resolve()
        unknown = set(raw) - set(_SCALARS) - {"peers", "raft", "connections"}
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    for key, (_typ, env) in _SCALARS.items():
        if env in environ:
            raw[key], where[key] = environ[env], f"${env}"
    if "RAFTFLOW_PEERS" in environ:
        raw["peers"], where["peers"] = _parse_peers(environ["RAFTFLOW_PEERS"]), "$RAFTFLOW_PEERS"
    for key, value in (flags or {}).items():
        if value is not None:
            raw[key], where[key] = value, f"--{key.replace('_', '-')}"

    values: dict[str, Any] = {}
    for key, (typ, _env) in _SCALARS.items():
        if key not in raw:
            continue
        try:
            values[key] = typ(raw[key])
        except (TypeError, ValueError):
            raise ConfigError(f"{key} from {where[key]} must be {typ.__name__}, got {raw[key]!r}") from None
    role = values.get("role", "voter")
    if role not in ROLES:
        raise ConfigError(f"role from {where['role']} is {role!r}: use {' or '.join(repr(r) for r in ROLES)}")
    worker = role == "worker"
    if worker:
        for key in ("raft_address", "peers"):
            if key in raw:
                raise ConfigError(f"{key} from {where.get(key, 'config')} is set, but a worker has no Raft vote: it "
                                  "names no peers and no raft_address; give it `join` (voters' peer addresses)")
        if "join" not in values:
            raise ConfigError("a worker needs `join`: the peer address (HOST:PORT) of one or more voters "
                              "(--join, or RAFTFLOW_JOIN)")
        for address in values["join"]:
            _check_address(address, f"join from {where['join']}")
        values["raft_address"] = ""
    elif "join" in values and raw.get("peers"):
        raise ConfigError(f"join from {where['join']} and peers from {where.get('peers', 'config')} are both set: a "
                          "voter either names the others in [[peers]] (a bootstrap voter) or joins a running "
                          "cluster through `join` (a voter added live with `raftflow cluster add-voter`)")
    elif "join" in values:
        for address in values["join"]:
            _check_address(address, f"join from {where['join']}")
    missing = [k for k in ("node_id", "grpc_address", "raft_address", "peer_address", "data_dir", "secret_file")
               if k not in values]
    if missing:
        raise ConfigError(f"missing setting(s): {', '.join(missing)} (set them in the config file, "
                          f"as --{missing[0].replace('_', '-')}, or as {_SCALARS[missing[0]][1]})")
    for key in ("data_dir", "secret_file", "scratch_dir", "admin_token_file", *_TLS_FILES):
        if key in values and not values[key].expanduser().is_absolute():
            values[key] = (base / values[key].expanduser()).resolve()
        elif key in values:
            values[key] = values[key].expanduser()
    given = [k for k in _TLS_FILES if k in values]
    if given and len(given) < len(_TLS_FILES):
        absent = [k for k in _TLS_FILES if k not in values]
        raise ConfigError(f"{', '.join(given)} set but {', '.join(absent)} not: a node needs all three TLS files "
                          "(its certificate, its key, the cluster CA)")
    if not ID_PATTERN.fullmatch(values["node_id"]):
        raise ConfigError(f"node_id {values['node_id']!r} is invalid: use {ID_RULE}")
    own = ("grpc_address", "peer_address") if worker else ("grpc_address", "raft_address", "peer_address")
    for key in own:
        _check_address(values[key], f"{key} from {where[key]}")
    _check_distinct(values["node_id"], *(values[key] for key in own))
    if values.get("http_address"):
        _check_address(values["http_address"], f"http_address from {where['http_address']}")
        if values["http_address"] in (values["grpc_address"], values["raft_address"], values["peer_address"]):
            raise ConfigError(f"http_address from {where['http_address']} is {values['http_address']!r}, which "
                              "grpc_address, raft_address or peer_address already uses: give the web server a "
                              "port of its own")
    if not 0 <= values.get("drain_timeout", 0) <= 86_400:
        raise ConfigError(f"drain_timeout from {where['drain_timeout']} must be 0 to 86400 (seconds)")
    if values.get("slots", 1) < 1:
        raise ConfigError(f"slots from {where['slots']} must be at least 1")
    if values.get("log_format", "text") not in LOG_FORMATS:
        raise ConfigError(f"log_format from {where['log_format']} is {values['log_format']!r}: use "
                          f"{' or '.join(repr(f) for f in LOG_FORMATS)}")
    if values.get("task_log_limit", 1) < 1:
        raise ConfigError(f"task_log_limit from {where['task_log_limit']} must be at least 1 (bytes)")
    if not 1 <= values.get("log_keep_bytes", 1) <= MAX_LOG_KEEP_BYTES:
        raise ConfigError(f"log_keep_bytes from {where['log_keep_bytes']} must be 1 to {MAX_LOG_KEEP_BYTES} (bytes)")
    if "run_as_user" in values:
        _check_run_as_user(values["run_as_user"], where["run_as_user"])

    peers = tuple(_peer(p, where.get("peers", "config")) for p in raw.get("peers", []))
    for p in peers:
        _check_distinct(p.id, p.grpc_address, p.raft_address, p.peer_address)
    ids = [values["node_id"], *(p.id for p in peers)]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"node ids must be unique, got {', '.join(ids)}")
    tuning = RaftTuning()
    if "raft" in raw:
        try:
            tuning = replace(tuning, **{k: float(v) for k, v in raw["raft"].items()})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[raft] section: {e}") from None
    if tuning.election_timeout_min <= tuning.append_entries_period * 3:
        raise ConfigError("[raft] election_timeout_min must be well above append_entries_period")
    connections = _connections(raw.get("connections", {}), base, environ)
    cfg = NodeConfig(peers=peers, raft=tuning, connections=connections, **values)
    if cfg.scratch.is_relative_to(cfg.data_dir) or cfg.data_dir.is_relative_to(cfg.scratch):
        raise ConfigError(f"scratch_dir{' from ' + where['scratch_dir'] if 'scratch_dir' in where else ''} "
                          f"puts the attempts' folders ({cfg.scratch}) inside data_dir ({cfg.data_dir}) or around "
                          "it: a task's working directory must be outside the node's data; choose another scratch_dir")
    # A leader checks its fallback at every tick, and ticks at least every heartbeat round
    # (raft/eager.py): it steps down at most append_entries_period after the timeout.
    if cfg.raft.leader_fallback_timeout + cfg.raft.append_entries_period + LEASE_MARGIN > cfg.worker_lease:
        raise ConfigError(
            f"lease_timeout {cfg.lease_timeout}s is too short for leader_fallback_timeout "
            f"{cfg.raft.leader_fallback_timeout}s: workers fence at lease_timeout/2, which must exceed the "
            f"fallback (checked every append_entries_period, {cfg.raft.append_entries_period}s) by {LEASE_MARGIN}s "
            "(a deposed leader acknowledges heartbeats until it falls back)")
    if cfg.heartbeat_interval * 3 > cfg.worker_lease:
        raise ConfigError(f"heartbeat_interval {cfg.heartbeat_interval}s is too long for lease_timeout "
                          f"{cfg.lease_timeout}s: at least 3 heartbeats must fit in lease_timeout/2")
    return cfg


def _check_run_as_user(name: str, where: str) -> None:
    """The user exists, and this node may start processes as it: root may start them as
    anyone, any other user only as itself."""
    if not name:
        raise ConfigError(f"run_as_user from {where} is empty: name a user, or leave run_as_user out to run tasks "
                          "as the node's own user")
    user = TaskUser.named(name, where)
    me = os.geteuid()
    if me != 0 and user.uid != me:
        raise ConfigError(f"run_as_user from {where} is {name!r}, but this node runs as {_user_name(me)!r}, not "
                          "root, and only root can start processes as another user: start the node as root "
                          "(deploy/raftflow.service does) or leave run_as_user out")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


_CONNECTION_KEYS = frozenset({"host", "port", "user", "key_file", "password_env", "passphrase_env", "known_hosts",
                              "trust_on_first_use", "connect_timeout"})


def load_connections(path: str | Path, environ: Mapping[str, str] | None = None) -> tuple[SSHConnection, ...]:
    """The SSH connections of a node's config file, and nothing else of it (`raftflow dags
    test --config`): checked as a node checks them. Raises ConfigError."""
    path = Path(path)
    raw = _read_toml(path)
    return _connections(raw.get("connections", {}), path.parent.resolve(), os.environ if environ is None else environ)


def _read_toml(path: Path) -> dict[str, Any]:
    """A config file's tables; ConfigError saying why it cannot be read."""
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _connections(raw: Any, base: Path, environ: Mapping[str, str]) -> tuple[SSHConnection, ...]:
    """The [connections.NAME] tables, checked now so that a typo fails the node's start,
    not every attempt: the key file must be readable, the named environment variables
    set, and known_hosts must exist unless trust_on_first_use."""
    if not isinstance(raw, dict):
        raise ConfigError("connections must be tables: [connections.NAME] with host, user and key_file or password_env")
    out = []
    for name, table in sorted(raw.items()):
        where = f"[connections.{name}]"
        if not ID_PATTERN.fullmatch(name):
            raise ConfigError(f"{where}: the connection name is invalid: use {ID_RULE}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table with host, user and key_file or password_env")
        unknown = set(table) - _CONNECTION_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(_CONNECTION_KEYS))}")
        for key in ("host", "user"):
            if not isinstance(table.get(key), str) or not table[key].strip():
                raise ConfigError(f"{where}: {key} must be a non-empty string")
        port = table.get("port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"{where}: port must be an integer from 1 to 65535, got {port!r}")
        timeout = table.get("connect_timeout", 10.0)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 3600:
            raise ConfigError(f"{where}: connect_timeout must be seconds in (0, 3600], got {timeout!r}")
        tofu = table.get("trust_on_first_use", False)
        if not isinstance(tofu, bool):
            raise ConfigError(f"{where}: trust_on_first_use must be true or false, got {tofu!r}")
        for key in ("password_env", "passphrase_env"):
            var = table.get(key)
            if var is not None and (not isinstance(var, str) or not var):
                raise ConfigError(f"{where}: {key} must name an environment variable")
            if var is not None and var not in environ:
                raise ConfigError(f"{where}: {key} names ${var}, which is not set in this node's environment")
        if table.get("key_file") is None and table.get("password_env") is None:
            raise ConfigError(f"{where}: give key_file (a private key) or password_env (an environment variable "
                              "holding the password); secrets are never written in the config itself")
        key_file = _config_path(table.get("key_file"), base, f"{where}: key_file")
        if key_file is not None:
            try:
                key_file.open("rb").close()
            except OSError as e:
                raise ConfigError(f"{where}: cannot read key_file {key_file}: {e.strerror}") from None
        known_hosts = _config_path(table.get("known_hosts", "~/.ssh/known_hosts"), base, f"{where}: known_hosts")
        assert known_hosts is not None  # it has a default
        if not tofu and not known_hosts.is_file():
            raise ConfigError(
                f"{where}: known_hosts {known_hosts} does not exist, so the host's key cannot be verified. Add it: "
                f"ssh-keyscan -p {port} {table['host']} >> {known_hosts} (then compare the fingerprint with the "
                "host's own: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), or set trust_on_first_use = true")
        out.append(SSHConnection(
            name=name, host=table["host"].strip(), user=table["user"].strip(), port=port, key_file=key_file,
            password_env=table.get("password_env"), passphrase_env=table.get("passphrase_env"),
            known_hosts=known_hosts, trust_on_first_use=tofu, connect_timeout=float(timeout)))
    return tuple(out)


def _config_path(value: Any, base: Path, what: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"{what} must be a file path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _check_address(value: str, what: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")


def _check_distinct(node_id: str, *addresses: str) -> None:
    if len(set(addresses)) < len(addresses):
        raise ConfigError(f"node {node_id}: grpc_address, raft_address and peer_address (a worker: grpc_address and "
                          f"peer_address) must be different addresses, got {', '.join(addresses)}")


_PEER_KEYS = ("id", "grpc_address", "raft_address", "peer_address")


def _peer(raw: Any, source: str) -> Peer:
    if isinstance(raw, Peer):
        return raw
    if not isinstance(raw, dict) or not set(_PEER_KEYS) <= set(raw):
        raise ConfigError(f"each peer (from {source}) needs id, grpc_address, raft_address and peer_address, "
                          f"got {raw!r}")
    unknown = set(raw) - set(_PEER_KEYS)
    if unknown:
        raise ConfigError(f"peer {raw['id']}: unknown setting(s) {', '.join(sorted(unknown))}")
    peer = Peer(*(str(raw[key]) for key in _PEER_KEYS))
    for key in _PEER_KEYS[1:]:
        _check_address(getattr(peer, key), f"peer {peer.id} {key}")
    return peer


def _parse_peers(text: str) -> list[Peer]:
    peers = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        node_id, eq, addrs = item.partition("=")
        parts = addrs.split("/")
        if not eq or len(parts) != 3:
            raise ConfigError(f"RAFTFLOW_PEERS item {item!r} must look like "
                              "ID=HOST:GRPC_PORT/HOST:RAFT_PORT/HOST:PEER_PORT")
        peers.append(Peer(node_id, *parts))
    return peers


def to_toml(cfg: NodeConfig) -> str:
    """Render a config file (used by tools/up and the tests to write node configs)."""
    lines = [
        f'node_id = "{cfg.node_id}"',
        f'grpc_address = "{cfg.grpc_address}"',
        f'raft_address = "{cfg.raft_address}"',
        f'data_dir = "{cfg.data_dir}"',
        f'secret_file = "{cfg.secret_file}"',
        f"slots = {cfg.slots}",
        f"heartbeat_interval = {cfg.heartbeat_interval}",
        f"lease_timeout = {cfg.lease_timeout}",
        f'log_level = "{cfg.log_level}"',
        f'log_format = "{cfg.log_format}"',
        f"fsync = {'true' if cfg.fsync else 'false'}",
        "queues = [" + ", ".join(f'"{q}"' for q in cfg.queues) + "]",
        f"task_log_limit = {cfg.task_log_limit}",
        f"log_keep_bytes = {cfg.log_keep_bytes}",
        f"scratch_dir = {_toml_str(str(cfg.scratch_dir))}",
        f"insecure = {'true' if cfg.insecure else 'false'}",
    ]
    if cfg.is_worker:
        lines.remove(f'raft_address = "{cfg.raft_address}"')
        lines += ['role = "worker"', f"drain_timeout = {cfg.drain_timeout}"]
    if cfg.join:
        lines.append("join = [" + ", ".join(_toml_str(a) for a in cfg.join) + "]")
    if cfg.peer_address:
        lines.insert(2, f'peer_address = "{cfg.peer_address}"')
    if cfg.run_as_user is not None:
        lines.append(f"run_as_user = {_toml_str(cfg.run_as_user)}")
    if cfg.http_address:
        lines.append(f"http_address = {_toml_str(cfg.http_address)}")
    if not cfg.metrics_require_token:
        lines.append("metrics_require_token = false")
    if cfg.admin_token_file is not None:
        lines.append(f"admin_token_file = {_toml_str(str(cfg.admin_token_file))}")
    lines += [f"{key} = {_toml_str(str(getattr(cfg, key)))}" for key in _TLS_FILES if getattr(cfg, key) is not None]
    if cfg.raft != RaftTuning():
        lines += ["", "[raft]"] + [f"{name} = {getattr(cfg.raft, name)}" for name in RaftTuning.__dataclass_fields__]
    for conn in cfg.connections:
        lines += ["", f"[connections.{conn.name}]", f"host = {_toml_str(conn.host)}", f"port = {conn.port}",
                  f"user = {_toml_str(conn.user)}", f"known_hosts = {_toml_str(str(conn.known_hosts))}",
                  f"trust_on_first_use = {'true' if conn.trust_on_first_use else 'false'}",
                  f"connect_timeout = {conn.connect_timeout}"]
        lines += [f"{key} = {_toml_str(str(getattr(conn, key)))}"
                  for key in ("key_file", "password_env", "passphrase_env") if getattr(conn, key) is not None]
    for p in cfg.peers:
        lines += ["", "[[peers]]", f'id = "{p.id}"', f'grpc_address = "{p.grpc_address}"',
                  f'raft_address = "{p.raft_address}"', f'peer_address = "{p.peer_address}"']
    return "\n".join(lines) + "\n"


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
