"""tools/up and tools/down: a local cluster for trying raftflow on one machine.

tools/up starts (or reuses) the cluster, submits dags/, triggers mlexpert_local_dag,
shows its progress live and prints what to try next. With --ssh-demo it first
starts (or reuses) a local sshd, gives every node the connection spark_master to
it, and runs mlexpert_dag instead: the Airflow DAG file of the notes raftflow
started from, unchanged (the sshd's PATH has dags/bin's stand-in spark-submit).
tools/down stops the nodes (and that sshd) it started, by their recorded PIDs. Both are conveniences over
`raftflow node --config FILE`, which is how a node runs on a real machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import time
from pathlib import Path

from raftflow.config import ConfigError, SSHConnection, load as load_config
from raftflow.core.states import RunState
from raftflow_cli.loader import LoadError, load_paths
from raftflow_cli.main import print_run, watch

from .local import LOOPBACK, LocalCluster

DEMO_DAG = "mlexpert_local_dag"
SSH_DEMO_DAG = "mlexpert_dag"
SSH_DEMO_CONNECTION = "spark_master"
ROOT = Path(__file__).resolve().parents[2]


def _port_busy(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        # As the node's servers do: a port held only by TIME_WAIT connections of a
        # node that just stopped is free for them (tools/down && tools/up).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return True
    return False


def _ssh_demo_connection(data_dir: Path) -> SSHConnection | None:
    """Start (or reuse) the demo's sshd; the connection every node gets to it."""
    from .sshd import LocalSSHServer, find_sshd

    if find_sshd()[0] is None:
        print(f"--ssh-demo needs sshd: {find_sshd()[1]}", file=sys.stderr)
        return None
    # The demo's "name node": commands it runs find dags/bin's stand-in spark-submit first.
    server = LocalSSHServer(data_dir / "sshd", remote_path=f"{ROOT / 'dags' / 'bin'}:/usr/local/bin:/usr/bin:/bin")
    if server.recorded_pid() is not None and not server.attach():
        server.stop_recorded()   # an sshd of an older tools/up, without that PATH
    if server.attach():
        print(f"reusing sshd (pid {server.recorded_pid()}) on {server.host}:{server.port}")
    else:
        try:
            server.start()
        except RuntimeError as e:
            print(f"could not start sshd for --ssh-demo: {e}", file=sys.stderr)
            return None
        assert server.process is not None   # start() returned: it runs
        print(f"started sshd (pid {server.process.pid}) on {server.host}:{server.port}, keys in {server.dir}")
    return SSHConnection(name=SSH_DEMO_CONNECTION, host=server.host, port=server.port, user=server.user,
                         key_file=server.client_key, known_hosts=server.known_hosts, connect_timeout=10.0)


DEFAULT_NODES, DEFAULT_PORT_BASE = 3, 50051


def _layout_defaults(data_dir: Path, nodes: int | None, port_base: int | None,
                     workers: int | None) -> tuple[int, int, int]:
    """--nodes (voters), --port-base and --workers where given, else what the cluster in
    `data_dir` already has (its cluster.json), else the defaults: `tools/up --data-dir X`
    restarts X as it was."""
    try:
        known = json.loads((data_dir / "cluster.json").read_text())["nodes"]
        voters = [n for n in known if not n.get("worker")]
        had = (len(voters), int(voters[0]["grpc"].rsplit(":", 1)[1]), len(known) - len(voters))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        had = (DEFAULT_NODES, DEFAULT_PORT_BASE, 0)
    return ((had[0] if nodes is None else nodes), (had[1] if port_base is None else port_base),
            (had[2] if workers is None else workers))


def up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    args.nodes, args.port_base, args.workers = _layout_defaults(data_dir, args.nodes, args.port_base, args.workers)
    connections: dict[str, tuple[SSHConnection, ...]] = {}
    conn: SSHConnection | None = None   # the demo sshd's connection, with --ssh-demo
    if args.ssh_demo:
        data_dir.mkdir(parents=True, exist_ok=True)
        conn = _ssh_demo_connection(data_dir)
        if conn is None:
            return 1
        connections = {f"n{i + 1}": (conn,) for i in range(args.nodes)}
    else:
        connections = _kept_connections(data_dir)
    cluster = LocalCluster(data_dir, nodes=args.nodes, port_base=args.port_base, connections=connections)
    running = cluster.running()
    if cluster.outdated and running:
        print(f"the cluster running from {data_dir} predates TLS and the peer port: stop it with "
              f"`tools/down{'' if str(data_dir) == '.raftflow' else f' --data-dir {data_dir}'}`, then run tools/up "
              "again", file=sys.stderr)
        return 2
    wanted = (args.nodes, f"{LOOPBACK}:{args.port_base}")
    current = (len(cluster.voters), cluster.voters[0].grpc_address)
    if current != wanted:
        if running:
            print(f"a cluster of {len(cluster.voters)} voters from {data_dir} is running at {cluster.addresses}; "
                  f"stop it with `tools/down --data-dir {data_dir}` to start a different one", file=sys.stderr)
            return 2
        (data_dir / "cluster.json").unlink()
        cluster = LocalCluster(data_dir, nodes=args.nodes, port_base=args.port_base, connections=connections)
    # Workers come and go with the cluster running: no other node's config changes.
    while len(cluster.workers) < args.workers:
        cluster._new_worker()
    for extra in cluster.workers[args.workers:]:
        if extra.node_id in running:
            print(f"stopping worker {extra.node_id} (it drains: running attempts finish first, up to its "
                  "drain_timeout)")
        cluster.remove_worker(extra.node_id)
        running = [n for n in running if n != extra.node_id]
    if running and conn is not None and not _has_connection(cluster, conn):
        print(f"the running cluster at {cluster.addresses} has no {SSH_DEMO_CONNECTION} connection to "
              f"{conn.host}:{conn.port} (it was started without --ssh-demo, or with another sshd): "
              f"stop it with `tools/down"
              f"{'' if str(data_dir) == '.raftflow' else f' --data-dir {data_dir}'}` and run tools/up --ssh-demo",
              file=sys.stderr)
        return 2
    if running and len(running) == len(cluster.nodes):
        print(f"reusing the running cluster: {', '.join(running)} at {cluster.addresses}")
    else:
        stopped = [n for n in cluster.nodes if n.node_id not in running]
        busy = [n.grpc_address for n in stopped if _port_busy(n.grpc_address)]
        busy += [n.raft_address for n in stopped if n.raft_address and _port_busy(n.raft_address)]
        busy += [n.peer_address for n in stopped if _port_busy(n.peer_address)]
        busy += [n.http_address for n in stopped if n.http_address and _port_busy(n.http_address)]
        if busy:
            print(f"ports in use by another program: {', '.join(busy)}; choose others with --port-base P",
                  file=sys.stderr)
            return 2
        cluster.configure()
        for node in stopped:
            pid = cluster.start_node(node.node_id)
            raft = "worker: no vote, joins through the voters" if node.worker else f"Raft {node.raft_address}"
            print(f"started {node.node_id} (pid {pid}): API {node.grpc_address}, peer API {node.peer_address}, "
                  f"{raft}, web {cluster.web_url(node.node_id)}, log {node.log_path}")
        if not cluster.insecure:
            print(f"TLS on every gRPC and web port; the CLI trusts the cluster's CA certificate {cluster.ca_path}")
    started = time.monotonic()
    try:
        status = cluster.wait_ready(timeout=60)
    except TimeoutError as e:
        print(f"the cluster did not become ready: {e}\nsee the node logs under {data_dir}/n*/node.log",
              file=sys.stderr)
        return 1
    print(f"cluster ready in {time.monotonic() - started:.1f}s: leader {status['leader']}, "
          f"{sum(n['healthy'] for n in status['nodes'])}/{len(status['nodes'])} nodes healthy")
    if args.no_demo:
        _next_steps(cluster, data_dir)
        return 0

    client = cluster.client()
    try:
        try:
            dags = load_paths([str(ROOT / "dags")])
        except LoadError as e:
            print(f"cannot load dags/: {e}", file=sys.stderr)
            return 2
        for result in client.submit(dags):
            print(f"submitted {result['dag_id']} v{result['version']}")
        demo_started = time.monotonic()
        demo = SSH_DEMO_DAG if args.ssh_demo else DEMO_DAG
        if args.ssh_demo:
            client.set_paused(demo, False)   # created paused: only clusters with the connection run it
            print(f"unpaused {demo} (created paused, as Airflow creates DAGs; its tasks run on the nodes over "
                  f"SSH connection {SSH_DEMO_CONNECTION})")
        run_id = client.trigger(demo)["run_id"]
        print(f"\ntriggered {demo}: run {run_id}\n")
        final = watch(client, run_id)
        print(f"(demo wall time {time.monotonic() - demo_started:.1f}s)\n")
        print_run(final)
    finally:
        client.close()
    _next_steps(cluster, data_dir)
    return 0 if final["state"] == RunState.SUCCESS.value else 1


def _kept_connections(data_dir: Path) -> dict[str, tuple[SSHConnection, ...]]:
    """The SSH connections each node's current config gives it. tools/up rewrites every
    node's config when it starts nodes; without --ssh-demo it keeps what a node had (a
    `tools/up --no-demo` after `tools/up --ssh-demo` must not take spark_master away)."""
    kept: dict[str, tuple[SSHConnection, ...]] = {}
    for path in sorted(data_dir.glob("n*/node.toml")):
        try:
            cfg = load_config(path, environ={})   # the file alone: not this shell's RAFTFLOW_* variables
        except ConfigError as e:
            print(f"note: {path} does not load ({e}); its node restarts without its SSH connections",
                  file=sys.stderr)
            continue
        if cfg.connections:
            kept[cfg.node_id] = cfg.connections
    return kept


def _has_connection(cluster: LocalCluster, conn: SSHConnection) -> bool:
    """Every answering node has `conn` (same name, host and port)."""
    client = cluster.client()
    try:
        nodes = client.cluster_status()["nodes"]
    except Exception:  # noqa: BLE001 - unreachable: the caller's wait_ready reports it
        return True
    finally:
        client.close()
    return all(any((c["name"], c["host"], c["port"]) == (conn.name, conn.host, conn.port)
                   for c in n.get("connections") or []) for n in nodes if not n["error"])


def _next_steps(cluster: LocalCluster, data_dir: Path) -> None:
    default = str(data_dir) == ".raftflow"
    env = "" if default else f"RAFTFLOW_LOCAL_DIR={data_dir} "
    activate = "source .venv/bin/activate   # puts `raftflow` on your PATH"
    leader_pid = f"$({env}raftflow cluster status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); " \
                 "print(next(n[\"pid\"] for n in s[\"nodes\"] if n[\"id\"]==s[\"leader\"]))')"
    ssh_demo = f"tools/up --ssh-demo{'' if default else f' --data-dir {data_dir}'}"
    urls = "  ".join(cluster.web_url(n.node_id) for n in cluster.nodes if n.http_address)
    trust = "" if cluster.insecure else (f"\n  (HTTPS with the cluster's own CA, {cluster.ca_path}: import it into "
                                         "the browser or accept its warning once)")
    print(f"""
The web UI and Airflow's REST API (/api/v2) on every node: {urls}
  log in with the admin token in {data_dir}/admin.token, or a token from `raftflow tokens create`{trust}

What to try next:
  {activate}
  {env}raftflow cluster status                 # who leads, each node's health and load
  {env}raftflow dags list
  {env}raftflow dags trigger fan_out --wait    # 6 parallel tasks spread over the nodes
  {env}raftflow runs list
  {env}raftflow runs show RUN_ID
  {env}raftflow tasks logs RUN_ID TASK_ID      # served through any node
  {env}raftflow dags test dags/etl_chain.py   # one run on this machine, no cluster: check a DAG first
  {env}raftflow dags submit dags/              # after editing a DAG: a new version
  {env}raftflow connections list               # SSH connections and the nodes that have them
  {env}raftflow tokens create ci --role operator   # a token for a script (the CLI uses the admin token)
  {ssh_demo}   # mlexpert_dag, an Airflow DAG file, over SSH (a local sshd)

Kill the leader and watch the cluster carry on:
  kill -9 {leader_pid}
  {env}raftflow cluster status
Node PIDs are in {data_dir}/n*/pid, logs in {data_dir}/n*/node.log; the cluster's CA certificate
(what the CLI trusts) is {data_dir}/ca.pem, its admin token {data_dir}/admin.token (both found by the CLI).
Stop everything with: tools/down{'' if default else f' --data-dir {data_dir}'}""")


def down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    if not (data_dir / "cluster.json").exists():
        print(f"no local cluster in {data_dir}")
        return 0
    cluster = LocalCluster(data_dir)
    running = cluster.running()
    cluster.stop()
    print(f"stopped {', '.join(running)}" if running else "no nodes were running")
    from .sshd import LocalSSHServer

    if LocalSSHServer(data_dir / "sshd").stop_recorded():
        print("stopped the --ssh-demo sshd")
    if args.purge:
        shutil.rmtree(data_dir)
        print(f"removed {data_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/up", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int,
                        help="how many voters (default: as the cluster in --data-dir has, else 3)")
    parser.add_argument("--workers", type=int,
                        help="how many worker nodes besides (no Raft vote; added to or taken from a running "
                             "cluster without restarting it; worker i uses P+400+i-1, P+500+i-1, P+600+i-1; "
                             "default: as the cluster in --data-dir has, else 0)")
    parser.add_argument("--port-base", type=int,
                        help="node i serves its client API on P+i-1, Raft on P+100+i-1, its peer API on "
                             "P+200+i-1 and its web UI and REST API on P+300+i-1 (default: as the cluster in "
                             "--data-dir has, else 50051)")
    parser.add_argument("--data-dir", default=".raftflow")
    parser.add_argument("--no-demo", action="store_true", help="start the cluster only")
    parser.add_argument("--ssh-demo", action="store_true",
                        help="start a local sshd, give every node the connection spark_master to it, "
                             "and run mlexpert_dag (the Airflow file of the origin notes; its tasks run over SSH)")
    parser.add_argument("--down", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--purge", action="store_true", help="with tools/down: also delete the data dir")
    args = parser.parse_args(argv)
    if args.nodes is not None and not 1 <= args.nodes <= 99:
        parser.error(f"--nodes is 1 to 99, not {args.nodes}")
    if args.workers is not None and not 0 <= args.workers <= 99:
        parser.error(f"--workers is 0 to 99, not {args.workers}")
    if args.port_base is not None and not 1024 <= args.port_base <= 65535 - 700:
        parser.error(f"--port-base is 1024 to {65535 - 700} (node i uses P+i-1 up to P+300+i-1, worker i up to "
                     f"P+600+i-1), not {args.port_base}")
    return down(args) if args.down else up(args)


if __name__ == "__main__":
    sys.exit(main())
