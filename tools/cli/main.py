"""`raftflow`: the command line. Client verbs talk gRPC to any node; `raftflow node`
runs a node.

Exit codes: 0 ok; 1 the operation failed (e.g. the run failed under --wait, or
the cluster has no quorum); 2 usage or invalid input (nothing was changed);
3 the cluster is unreachable; 4 not authenticated (no, unknown, revoked or expired
token) or the token's role may not do it.

The token is --token, else $RAFTFLOW_TOKEN, else the admin token of the local
cluster tools/up started (.raftflow/admin.token, beside cluster.json).

The cluster address is --cluster HOST:PORT,..., else $RAFTFLOW_CLUSTER, else the
nodes of the local cluster tools/up started (.raftflow/cluster.json), else
127.0.0.1:50051-50053. Each is tried until one answers. Writes are retried across
nodes and leader elections for --retry-for seconds (else $RAFTFLOW_RETRY_FOR, else 10),
with one request id that the cluster applies once (a retried trigger never makes two runs).

Connections are TLS. The CA certificate that nodes' certificates must chain to is
--ca-file, else $RAFTFLOW_CA_FILE, else the local cluster's (.raftflow/ca.pem, next
to its cluster.json), else the system's CA certificates. --insecure (or
RAFTFLOW_INSECURE=1) talks plaintext, to nodes started with `insecure = true`.

`raftflow certs init|issue` makes a CA and node certificates (deploy/README.md).

The local cluster's folder (cluster.json, ca.pem, admin.token) is $RAFTFLOW_LOCAL_DIR,
else .raftflow ($RAFTFLOW_DATA_DIR, which a node reads as its own data_dir, is still
honoured here in this release, with a warning). Options such as --cluster, --token and
-o go before the verb group or after the verb. Output: -o table (default; states
coloured on a terminal unless $NO_COLOR), -o json (= --json) or -o yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

# (before gRPC starts: `raftflow node` runs here, and the DAG loader forks to exec; why:
# node/main.py)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

from raftflow.core.limits import parse_json
from raftflow.core.model import MAX_TOKEN_DAYS, Role
from raftflow.core.spec import DagSpec, schedule_note
from raftflow.core.states import RunState, TaskState

from .client import DEFAULT_RETRY_FOR, MAX_RETRY_FOR, ApiError, ClusterClient, ClusterUnreachable
from .loader import DEFAULT_TIMEOUT, LoadError, inspect_paths, load_paths_with_reports

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 3, 4
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
DEFAULT_ADDRESSES = ["127.0.0.1:50051", "127.0.0.1:50052", "127.0.0.1:50053"]
# The API answers states as the enums' values; these name them once, from the enums.
TERMINAL = tuple(s.value for s in RunState if s.terminal)
SUCCESS = RunState.SUCCESS.value
MAX_LIST_RUNS = 2**32 - 1   # ListRunsRequest.limit is a uint32


class UsageError(Exception):
    pass


# The local cluster's folder is $RAFTFLOW_LOCAL_DIR. It used to be $RAFTFLOW_DATA_DIR,
# which a node also reads as its data_dir (a node started with it exported put its
# data in the CLI's folder). The old name still works for the CLI in this release,
# with a warning; the next release ignores it.
LOCAL_DIR_VAR, OLD_LOCAL_DIR_VAR = "RAFTFLOW_LOCAL_DIR", "RAFTFLOW_DATA_DIR"
_warned_old_dir = False


def local_data_dir() -> Path:
    """Where tools/up keeps the local cluster's files (cluster.json, ca.pem, admin.token):
    $RAFTFLOW_LOCAL_DIR, else (deprecated) $RAFTFLOW_DATA_DIR, else .raftflow."""
    global _warned_old_dir
    if os.environ.get(LOCAL_DIR_VAR):
        return Path(os.environ[LOCAL_DIR_VAR])
    old = os.environ.get(OLD_LOCAL_DIR_VAR)
    if old:
        if not _warned_old_dir:
            _warned_old_dir = True
            print(f"warning: ${OLD_LOCAL_DIR_VAR} for the CLI's local cluster is deprecated (a node reads it as its "
                  f"data_dir); use {LOCAL_DIR_VAR}={old}. The next release ignores it here", file=sys.stderr)
        return Path(old)
    return Path(".raftflow")


def cluster_tls(ca_flag: str | None, insecure_flag: bool) -> tuple[bytes | None, bool, str]:
    """(CA certificate PEM, or None for the system's roots; plaintext?; where the CA came
    from, for error messages). Order: --insecure / $RAFTFLOW_INSECURE, --ca-file,
    $RAFTFLOW_CA_FILE, the local cluster (insecure, else its ca.pem), the system's roots."""
    if insecure_flag or os.environ.get("RAFTFLOW_INSECURE", "").lower() in ("1", "true", "yes", "on"):
        return None, True, ""
    for value, source in ((ca_flag, "--ca-file"), (os.environ.get("RAFTFLOW_CA_FILE"), "$RAFTFLOW_CA_FILE")):
        if value:
            try:
                return Path(value).read_bytes(), False, f"the CA in {value} ({source})"
            except OSError as e:
                raise UsageError(f"cannot read the CA certificate {value} ({source}): {e.strerror}") from None
    manifest, local_ca = local_data_dir() / "cluster.json", local_data_dir() / "ca.pem"
    if manifest.exists():
        try:
            if json.loads(manifest.read_text()).get("insecure"):
                return None, True, ""
        except (OSError, ValueError):
            pass
        if local_ca.exists():
            return local_ca.read_bytes(), False, f"the CA in {local_ca} (the local cluster's)"
    return None, False, f"the system's CA certificates (no --ca-file, RAFTFLOW_CA_FILE or {local_ca})"


def cluster_addresses(flag: str | None) -> list[str]:
    if flag:
        return [a.strip() for a in flag.split(",") if a.strip()]
    if os.environ.get("RAFTFLOW_CLUSTER"):
        return [a.strip() for a in os.environ["RAFTFLOW_CLUSTER"].split(",") if a.strip()]
    manifest = local_data_dir() / "cluster.json"
    if manifest.exists():
        return [n["grpc"] for n in json.loads(manifest.read_text())["nodes"]]
    return DEFAULT_ADDRESSES


def client_token(flag: str | None) -> str | None:
    """--token, else $RAFTFLOW_TOKEN, else the local cluster's admin.token, else none
    (the node then answers "not authenticated: no token")."""
    if flag:
        return flag.strip()
    if os.environ.get("RAFTFLOW_TOKEN"):
        return os.environ["RAFTFLOW_TOKEN"].strip()
    try:
        return (local_data_dir() / "admin.token").read_text().strip() or None
    except OSError:
        return None


def retry_seconds(text: str) -> float:
    """--retry-for / $RAFTFLOW_RETRY_FOR: seconds, 0 to MAX_RETRY_FOR."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--retry-for (or $RAFTFLOW_RETRY_FOR) takes seconds, e.g. 10, not {text!r}") from None
    if not 0 <= seconds <= MAX_RETRY_FOR:
        raise argparse.ArgumentTypeError(
            f"--retry-for (or $RAFTFLOW_RETRY_FOR) is 0 to {MAX_RETRY_FOR:g} seconds, not {text}")
    return seconds


def int_option(name: str, low: int, high: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, else exit 2 saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} is {low} to {high:,}{meaning}, not {value}")
        return value
    return parse


def seconds_option(name: str, high: float) -> Callable[[str], float]:
    """An argparse type: seconds, more than 0 and at most `high`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes seconds, e.g. 30, not {text!r}") from None
        if not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"{name} is more than 0 and at most {high:g} seconds, not {text}")
        return value
    return parse


SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_option(text: str) -> str:
    """`runs list --since`: a duration back from now (30m, 2h, 7d, 1w) or an ISO-8601
    date or datetime (UTC unless it has an offset); the instant as UTC ISO text."""
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in SINCE_UNITS:
        back = int(value[:-1]) * SINCE_UNITS[value[-1]]
        if back > 100 * 365 * 86400:
            raise argparse.ArgumentTypeError(f"--since {text} reaches back more than 100 years")
        return datetime.fromtimestamp(time.time() - back, timezone.utc).isoformat()
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since takes a duration (30m, 2h, 7d, 1w) or a date or datetime (2026-01-31, "
            f"2026-01-31T08:00, with an offset or UTC), not {text!r}") from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).isoformat()


# ---------------------------------------------------------------- output helpers
# How results are printed: "table" (for people), "json" (--json / -o json) or "yaml".
# main() sets it from the options before a verb runs.
OUTPUT_FORMATS = ("table", "json", "yaml")
output_format = "table"
# Columns whose cells are states, coloured on a terminal (ANSI SGR colour numbers).
STATE_COLUMNS = ("STATE", "LAST RUN")
STATE_COLOURS = {"success": "32", "failed": "31", "upstream_failed": "33", "up_for_retry": "33",
                 "running": "36", "assigned": "36", "queued": "34", "skipped": "35"}


def colour_enabled() -> bool:
    """Colours only for a terminal, never when NO_COLOR is set (no-color.org) or TERM=dumb."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(state: str) -> str:
    code = STATE_COLOURS.get(state)
    return f"\x1b[{code}m{state}\x1b[0m" if code and colour_enabled() else state


def terminal_width() -> int:
    """The width to wrap long cells to: the terminal's (or $COLUMNS); 0 (no wrapping)
    when stdout is a pipe or file without $COLUMNS, so that grep sees whole lines."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() or os.environ.get("COLUMNS") else 0


def table(rows: list[list[Any]], headers: list[str], wrap_last: int = 0) -> str:
    """Columns padded to their widest cell. States are coloured on a terminal. With
    `wrap_last` (a line width), the last column wraps onto continuation lines so
    that lines fit that width (never narrower than 20 characters for it)."""
    cells = [[str(h) for h in headers]] + [["-" if v in (None, "") else str(v) for v in row] for row in rows]
    if wrap_last and len(headers) > 1:
        fixed = [max(len(r[i]) for r in cells) for i in range(len(headers) - 1)]
        room = max(20, wrap_last - sum(fixed) - 2 * len(fixed))
        wrapped = [cells[0]]
        for row in cells[1:]:
            pieces = [p for line in row[-1].splitlines() or [""]
                      for p in textwrap.wrap(line, room, break_on_hyphens=False) or [""]]
            wrapped.append(row[:-1] + [pieces[0].rstrip()])
            wrapped.extend([""] * len(fixed) + [p.rstrip()] for p in pieces[1:])
        cells = wrapped
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    coloured = {i for i, h in enumerate(headers) if h in STATE_COLUMNS}
    lines = ["  ".join((paint(v) if i in coloured and n else v) + " " * (w - len(v))
                       for i, (v, w) in enumerate(zip(r, widths))).rstrip() for n, r in enumerate(cells)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths)] + lines[1:])


def short_time(iso: str | None) -> str:
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def date_time(iso: str | None) -> str:
    """A date with its time, in UTC: 2026-01-31 08:00:00."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "-"
    return f"{(datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds():.2f}s"


def emit_json(value: Any) -> None:
    """Print a result as the output format asks: indented JSON, or YAML."""
    if output_format == "yaml":
        import yaml

        print(yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True), end="")
    else:
        print(json.dumps(value, indent=2, sort_keys=True))


def emit_line(value: Any) -> None:
    """One result of a stream (runs watch): a JSON line, or a YAML document."""
    if output_format == "yaml":
        import yaml

        print("---\n" + yaml.safe_dump(value, sort_keys=True, default_flow_style=False, allow_unicode=True),
              end="", flush=True)
    else:
        print(json.dumps(value, sort_keys=True), flush=True)


def warn_if_stale(meta: dict[str, Any] | None) -> None:
    """Reads come from the answering node's replica; say so when it may be behind."""
    if meta and meta.get("possibly_stale"):
        print(f"note: answered by {meta.get('served_by')}, which has no leader or no quorum right now: "
              "this may be out of date", file=sys.stderr)


# ---------------------------------------------------------------- verbs
def cmd_dags_submit(client: ClusterClient, args: argparse.Namespace) -> int:
    try:
        dags, reports = load_paths_with_reports(args.paths, timeout=args.load_timeout)
    except LoadError as e:
        print(f"error: {e}\nnothing was submitted", file=sys.stderr)
        return EXIT_USAGE
    if not dags:
        print(f"error: no DAGs found in {' '.join(args.paths)}; nothing was submitted", file=sys.stderr)
        return EXIT_USAGE
    for note in filter(None, (schedule_note(DagSpec.from_dict(json.loads(d["spec_json"]))) for d in dags)):
        print(f"note: {note}", file=sys.stderr)
    for warning in ignored_warnings(reports):
        print(f"warning: {warning}", file=sys.stderr)
    results = client.submit(dags)
    if args.json:
        emit_json({"dags": results})
    else:
        created_paused = {d["dag_id"] for r in reports for d in r.get("dags", [])
                          if any(n.startswith("created paused") for n in d.get("notes", []))}
        for r in results:
            note = "" if r["changed"] else " (unchanged)"
            print(f"submitted {r['dag_id']} version {r['version']}{note}")
            if r["version"] == 1 and r["dag_id"] in created_paused:
                print(f"note: {r['dag_id']} is created paused, as Airflow creates DAGs: "
                      f"raftflow dags unpause {r['dag_id']}", file=sys.stderr)
    return EXIT_OK


def ignored_warnings(reports: list[dict[str, Any]]) -> list[str]:
    """One line per DAG whose file gives arguments raftflow accepts but does not act on
    (Airflow's owner, email, sla, ...): nothing is dropped without a word."""
    out = []
    for report in reports:
        for dag in report.get("dags", []):
            where: dict[str, list[str]] = {}
            for item in dag.get("ignored", []):
                where.setdefault(item["argument"], []).append(item["where"])
            for task in dag.get("tasks", []):
                for name in task.get("ignored", []):
                    where.setdefault(name, []).append(f"task {task['task_id']}")
            if where:
                listed = "; ".join(f"{name} ({', '.join(places[:3])}{', ...' if len(places) > 3 else ''})"
                                   for name, places in sorted(where.items()))
                out.append(f"DAG {dag['dag_id']!r} ({report['file']}): accepted but not acted on by raftflow: "
                           f"{listed}. `raftflow dags check {report['file']}` lists them")
    return out


def cmd_dags_check(args: argparse.Namespace) -> int:
    """Load DAG files without submitting (no cluster needed): per DAG each task, its
    operator and raftflow kind, what is ignored and what is refused."""
    try:
        reports = inspect_paths(args.paths, timeout=args.load_timeout)
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    failed = [r for r in reports if r.get("errors")]
    if args.json:
        emit_json({"files": reports, "loaded": len(reports) - len(failed), "failed": len(failed)})
        return EXIT_USAGE if failed else EXIT_OK
    for report in reports:
        print(f"{report['file']}: {'REFUSED' if report.get('errors') else 'loads'}")
        for dag in report.get("dags", []):
            at = f" (line {dag['line']})" if dag.get("line") else ""
            print(f"  DAG {dag['dag_id']}{at}")
            ignored = ", ".join(f"{i['argument']} ({i['where']})" for i in dag.get("ignored", []))
            if ignored:
                print(f"    ignored: {ignored}")
            for note in dag.get("notes", []):
                print(f"    note: {note}")
            rows = [[t["task_id"], t["operator"], t["kind"], ", ".join(t["ignored"]) or "-",
                     ", ".join(t["refused"]) or "-"] for t in dag.get("tasks", [])]
            if rows:
                print("\n".join("    " + line for line in table(
                    rows, ["TASK", "OPERATOR", "KIND", "IGNORED", "REFUSED"]).splitlines()))
        for error in report.get("errors", []):
            print(f"  refused: {error}")
    print(f"{len(reports) - len(failed)} of {len(reports)} file(s) load; {len(failed)} refused")
    return EXIT_USAGE if failed else EXIT_OK


def cmd_dags_list(client: ClusterClient, args: argparse.Namespace) -> int:
    listing = client.list_dags()
    dags = listing["dags"]
    if args.json:
        emit_json(listing)
        return EXIT_OK
    warn_if_stale(listing.get("meta"))
    if not dags:
        print("no DAGs yet; submit some with: raftflow dags submit dags/")
        return EXIT_OK
    print(table([[d["dag_id"], d["version"], d["schedule"] or "manual", "yes" if d["paused"] else "no",
                  d["task_count"], date_time(d["next_run_at"]), d["last_run_state"]]
                 for d in dags], ["DAG", "VERSION", "SCHEDULE", "PAUSED", "TASKS", "NEXT RUN (UTC)", "LAST RUN"]))
    return EXIT_OK


def cmd_dags_show(client: ClusterClient, args: argparse.Namespace) -> int:
    dag = client.get_dag(args.dag_id, version=args.version, include_code=args.code)
    dag["spec"] = json.loads(dag.pop("spec_json"))
    if args.json:
        emit_json(dag)
        return EXIT_OK
    s, spec = dag["summary"], dag["spec"]
    latest = client.get_dag(args.dag_id)["shown_version"] if args.version else s["version"]
    print(f"DAG {s['dag_id']}  version {dag['shown_version']} of {latest}"
          f"  submitted {dag['submitted_at']}  from {s['filename']}")
    print(f"schedule: {spec['schedule'] or 'manual only'} ({spec['timezone']}), catchup {spec['catchup']}, "
          f"paused: {'yes' if s['paused'] else 'no'}, max_active_runs {spec['max_active_runs']}")
    if s["next_run_at"]:
        print(f"next run: {s['next_run_at']}")
    if spec.get("description"):
        print(f"description: {spec['description']}")
    if spec.get("tags"):
        print(f"tags: {', '.join(spec['tags'])}")
    print()
    grouped = any(t.get("group") for t in spec["tasks"])
    print(table([[t["task_id"], *([t.get("group") or "-"] if grouped else []), t["kind"],
                  ", ".join(t["upstream"]) or "-", t["retries"], _task_what(t)]
                 for t in spec["tasks"]],
                ["TASK", *(["GROUP"] if grouped else []), "KIND", "UPSTREAM", "RETRIES", "COMMAND"],
                wrap_last=terminal_width()))
    if spec.get("doc_md"):
        print(f"\n--- doc_md ---\n{spec['doc_md'].rstrip()}")
    for t in spec["tasks"]:
        if t.get("doc_md"):
            print(f"\n--- {t['task_id']}: doc_md ---\n{t['doc_md'].rstrip()}")
    if args.code:
        print(f"\n--- {s['filename']} ---\n{dag['source']}")
    return EXIT_OK


def _task_what(t: dict[str, Any]) -> str:
    """What a task runs, for `dags show`'s COMMAND column."""
    if t.get("trigger_dag_id"):
        return f"trigger {t['trigger_dag_id']}" + (" and wait" if t.get("wait_for_completion") else "")
    return str(t["command"] or t.get("python_callable") or "-")


def cmd_dags_trigger(client: ClusterClient, args: argparse.Namespace) -> int:
    if args.conf:
        try:
            conf = parse_json(args.conf, "--conf")
        except ValueError as e:
            raise UsageError(f"{e}; example: --conf '{{\"date\": \"2026-01-01\"}}'")
        if not isinstance(conf, dict):
            raise UsageError(f"--conf must be a JSON object, got {type(conf).__name__}")
    result = client.trigger(args.dag_id, args.conf or "")
    if not args.wait:
        if args.json:
            emit_json(result)
        else:
            print(f"triggered {args.dag_id}: run {result['run_id']}")
            if result["dag_paused"]:
                print(f"note: {args.dag_id} is paused; the run waits until `raftflow dags unpause {args.dag_id}`")
            print(f"watch it with: raftflow runs watch {result['run_id']}")
        return EXIT_OK
    if not args.json:
        print(f"triggered {args.dag_id}: run {result['run_id']}")
    final = watch(client, result["run_id"], quiet=args.json)
    if args.json:
        emit_json(final)
    return EXIT_OK if final["state"] == SUCCESS else EXIT_FAILED


def cmd_pause(paused: bool) -> Callable[[ClusterClient, argparse.Namespace], int]:
    def run(client: ClusterClient, args: argparse.Namespace) -> int:
        client.set_paused(args.dag_id, paused)
        print(f"{args.dag_id} {'paused' if paused else 'unpaused'}")
        return EXIT_OK
    return run


def cmd_runs_list(client: ClusterClient, args: argparse.Namespace) -> int:
    dag_id = args.dag or args.dag_id or ""
    if args.dag and args.dag_id and args.dag != args.dag_id:
        raise UsageError(f"two DAGs given: {args.dag_id} and --dag {args.dag}; give one")
    listing = client.list_runs(dag_id, args.limit, states=args.state or [], since=args.since or "")
    runs = listing["runs"]
    if args.json:
        emit_json(listing)
        return EXIT_OK
    warn_if_stale(listing.get("meta"))
    if not runs:
        filters = [f for f in (dag_id and f"of {dag_id}", args.state and f"in state {' or '.join(args.state)}",
                               args.since and f"created since {date_time(args.since)} UTC") if f]
        print(f"no runs {' '.join(filters)}" if filters else "no runs yet")
        return EXIT_OK
    print(table([[r["run_id"], r["dag_id"], r["state"], r["trigger"], r.get("triggered_by"),
                  date_time(r["created_at"]), duration(r["started_at"], r["ended_at"])]
                 for r in runs], ["RUN", "DAG", "STATE", "TRIGGER", "BY", "CREATED (UTC)", "DURATION"]))
    return EXIT_OK


def print_run(run: dict[str, Any]) -> None:
    by = f" by {run['triggered_by']}" if run.get("triggered_by") else ""
    took = f", took {run_duration(run)}" if run.get("ended_at") else ""
    print(f"run {run['run_id']}  DAG {run['dag_id']} v{run['dag_version']}  {run['state'].upper()}  "
          f"({run['trigger']}{by}, logical date {run['logical_date']}{took})")
    print(table([[t["task_id"], t["state"], t["attempt"] or "-", t["node"], short_time(t["started_at"]),
                  short_time(t["ended_at"]), duration(t["started_at"], t["ended_at"]),
                  "-" if t["exit_code"] is None else t["exit_code"], t["reason"]]
                 for t in run["tasks"]],
                ["TASK", "STATE", "ATTEMPT", "NODE", "STARTED", "ENDED", "TOOK", "EXIT", "NOTE"]))
    published = [(t["task_id"], json.dumps(t["result"])) for t in run["tasks"] if t.get("result") is not None]
    if published:
        print("\nresults:")
        for task_id, text in published:
            print(f"  {task_id}: {text if len(text) <= 200 else text[:197] + '...'}")


def cmd_runs_show(client: ClusterClient, args: argparse.Namespace) -> int:
    run = client.get_run(args.run_id)
    if args.json:
        emit_json(run)
    else:
        warn_if_stale(run.get("meta"))
        print_run(run)
        failed = [t for t in run["tasks"] if t["state"] == TaskState.FAILED.value and t["log_tail"]]
        for t in failed:
            print(f"\n--- {t['task_id']} (attempt {t['attempt']}) log tail ---\n{t['log_tail'].rstrip()}")
    return EXIT_OK


def event_time(task: dict[str, Any]) -> str:
    """When a task reached the state `runs watch` prints (UTC): a run watched after the
    fact shows each move at its own time, not at the time it was read."""
    at = {TaskState.QUEUED.value: task.get("queued_at"), TaskState.UP_FOR_RETRY.value: task.get("ended_at"),
          TaskState.ASSIGNED.value: None,   # (not recorded: seen live, now is when)
          TaskState.RUNNING.value: task.get("started_at")}.get(task["state"], task.get("ended_at"))
    return (datetime.fromisoformat(at) if at else datetime.now(timezone.utc)).astimezone(
        timezone.utc).strftime("%H:%M:%S")


def run_duration(run: dict[str, Any]) -> str:
    """A run's duration. A run reopened by `tasks clear`/`tasks mark` starts again (its
    started_at resets, as Airflow's start_date does on a re-run), so its duration is
    that of the re-run; when its tasks ran before the reopening, say so and give the
    span from the first task's start to the last task's end as well."""
    took = duration(run["started_at"], run["ended_at"])
    starts = [t["started_at"] for t in run.get("tasks", []) if t.get("started_at")]
    ends = [t["ended_at"] for t in run.get("tasks", []) if t.get("ended_at")]
    if not run["started_at"] or not starts or not run["ended_at"]:
        return took
    first = min(starts, key=datetime.fromisoformat)
    if datetime.fromisoformat(first) >= datetime.fromisoformat(run["started_at"]):
        return took
    last = max([run["ended_at"], *ends], key=datetime.fromisoformat)
    return f"{took} (since it was reopened; {duration(first, last)} from its first task's start)"


def watch(client: ClusterClient, run_id: str, quiet: bool = False, as_json: bool = False) -> dict[str, Any]:
    """Follow a run until it ends, printing each task change; survives the loss of the
    node it watches through by reconnecting to another."""
    seen: dict[str, tuple] = {}
    last: dict[str, Any] | None = None
    deadline_unreachable = None
    while True:
        try:
            for run in client.watch_run(run_id):
                deadline_unreachable = None
                last = run
                if as_json:
                    emit_line(run)
                for t in run["tasks"]:
                    key = (t["state"], t["attempt"], t["node"])
                    if seen.get(t["task_id"]) != key:
                        seen[t["task_id"]] = key
                        if not quiet and not as_json and t["state"] != TaskState.PENDING.value:
                            where = f" attempt {t['attempt']} on {t['node']}" if t["node"] else ""
                            pad = " " * (16 - len(t["state"]))
                            print(f"{event_time(t)}  {t['task_id']:<28} {paint(t['state'])}{pad}{where}", flush=True)
                if run["state"] in TERMINAL:
                    if not quiet and not as_json:
                        print(f"run {run_id} {run['state'].upper()} in {run_duration(run)}")
                    return run
        except (ApiError, ClusterUnreachable) as e:
            if isinstance(e, ApiError) and e.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                                          grpc.StatusCode.UNKNOWN):
                raise
            deadline_unreachable = deadline_unreachable or time.monotonic() + 30
            if time.monotonic() > deadline_unreachable:
                raise
            if not quiet and not as_json:
                print(f"{datetime.now(timezone.utc).strftime('%H:%M:%S')}  (lost the node being watched; "
                      "reconnecting)", flush=True)
            client._preferred = (client._preferred + 1) % len(client.addresses)
            time.sleep(0.3)
        if last is not None and last["state"] in TERMINAL:
            return last


def cmd_runs_cancel(client: ClusterClient, args: argparse.Namespace) -> int:
    stopped = client.cancel_run(args.run_id, args.reason or "")
    if args.json:
        emit_json({"run_id": args.run_id, "state": RunState.FAILED.value, "stopped_attempts": stopped})
    else:
        print(f"run {args.run_id} cancelled: {stopped} running attempt(s) are being killed; "
              "tasks that had not started are skipped")
    return EXIT_OK


def cmd_runs_watch(client: ClusterClient, args: argparse.Namespace) -> int:
    final = watch(client, args.run_id, as_json=args.json)
    return EXIT_OK if final["state"] == SUCCESS else EXIT_FAILED


FOLLOW_POLL = 0.25   # seconds between reads of a followed log
LIVE_STATES = (TaskState.ASSIGNED.value, TaskState.RUNNING.value)
NEVER_RUNS = tuple(s.value for s in TaskState if s.terminal)   # ended at attempt 0 (marked, skipped, ...)


def cmd_tasks_logs(client: ClusterClient, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if not args.follow:
        try:
            for chunk in client.task_log(args.run_id, args.task_id, args.attempt):
                out.write(chunk.data)
        except ApiError as e:
            if e.code != grpc.StatusCode.NOT_FOUND or args.attempt:
                raise
            # No attempt: a task that ended without running (an empty task, a mark,
            # upstream_failed) is answered as --follow answers it.
            task = _task_of(client.get_run(args.run_id), args.run_id, args.task_id)
            if task["attempt"] != 0 or task["state"] not in NEVER_RUNS:
                raise
            return _never_ran(task)
        out.flush()
        return EXIT_OK
    return _follow_log(client, args.run_id, args.task_id, args.attempt, out)


def _never_ran(task: dict[str, Any]) -> int:
    """`tasks logs` (with or without -f) of a task that ended without an attempt: it has
    no log. Exit 0 if it succeeded or was skipped (an empty task, a mark: nothing went
    wrong), else 1 (failed, upstream_failed: the task did not do its work)."""
    why = f": {task['reason']}" if task.get("reason") else ""
    print(f"{task['task_id']} ended {task['state']} without running (no attempt, so no log){why}", file=sys.stderr)
    ok = task["state"] in (TaskState.SUCCESS.value, TaskState.SKIPPED.value)
    return EXIT_OK if ok else EXIT_FAILED


def _follow_log(client: ClusterClient, run_id: str, task_id: str, attempt: int, out: Any) -> int:
    """Print an attempt's log as it grows, until the attempt has ended. The attempt is
    the one asked for, else the latest (waiting for the first to start). Each pass
    reads the task's state first, then the log from where it left off, so the pass
    that sees the attempt ended also reads its last output (the worker stores all
    output before it reports the end)."""
    next_chunk, waiting_said = 0, False
    while True:
        task = _task_of(client.get_run(run_id), run_id, task_id)
        if attempt == 0 and task["attempt"] == 0:
            if task["state"] in NEVER_RUNS:
                return _never_ran(task)
            if not waiting_said:
                print(f"waiting for {task_id} to start (state {task['state']})", file=sys.stderr)
                waiting_said = True
            time.sleep(FOLLOW_POLL)
            continue
        attempt = attempt or task["attempt"]
        ended = task["attempt"] > attempt or task["state"] not in LIVE_STATES
        for chunk in client.task_log(run_id, task_id, attempt, from_chunk=next_chunk):
            if chunk.data:
                out.write(chunk.data)
                next_chunk = chunk.index + 1
        out.flush()
        if ended:
            if task["attempt"] > attempt:
                print(f"attempt {attempt} ended; {task_id} is on attempt {task['attempt']} ({task['state']}): "
                      f"raftflow tasks logs {run_id} {task_id} --follow", file=sys.stderr)
            return EXIT_OK
        time.sleep(FOLLOW_POLL)


def _task_of(run: dict[str, Any], run_id: str, task_id: str) -> dict[str, Any]:
    for task in run["tasks"]:
        if task["task_id"] == task_id:
            return task
    raise UsageError(f"run {run_id} has no task {task_id!r}; it has: {', '.join(t['task_id'] for t in run['tasks'])}")


def cmd_tasks_clear(client: ClusterClient, args: argparse.Namespace) -> int:
    out = client.clear_tasks(args.run_id, args.task_ids, args.downstream)
    if args.json:
        emit_json({"run_id": args.run_id, **out})
    else:
        print(f"cleared in {args.run_id}: {', '.join(out['cleared'])}"
              + (f"; {out['stopped_attempts']} running attempt(s) are being killed" if out["stopped_attempts"] else "")
              + ". They run again; `raftflow runs watch RUN_ID` follows them.")
    return EXIT_OK


def cmd_tasks_mark(client: ClusterClient, args: argparse.Namespace) -> int:
    stopped = client.mark_task(args.run_id, args.task_id, args.state)
    if args.json:
        emit_json({"run_id": args.run_id, "task_id": args.task_id, "state": args.state, "stopped_attempts": stopped})
    else:
        print(f"{args.run_id}/{args.task_id} marked {args.state}"
              + (" (its running attempt is being killed)" if stopped else ""))
    return EXIT_OK


def cmd_tasks_story(client: ClusterClient, args: argparse.Namespace) -> int:
    """Every recorded move of a task instance, oldest first, from the answering node's replica."""
    from google.protobuf.json_format import MessageToDict

    from raftflow.proto import client_pb2
    reply = client.call("GetTaskStory", client_pb2.GetTaskStoryRequest(run_id=args.run_id, task_id=args.task_id))
    story = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    events = story["events"]
    for e in events:
        e["index"] = int(e["index"])   # (uint64 is a string in proto JSON)
    if args.json:
        emit_json(story)
        return EXIT_OK
    warn_if_stale(story.get("meta"))
    print(f"{args.run_id}/{args.task_id}: {story['state']}, {len(events)} recorded move(s), oldest first")
    print(table([[e["index"] or "?", e["at"], e["command"], e["node"], e["attempt"] or "-", e["proposer"],
                  f"{e['before']} -> {e['after']}", e["reason"]] for e in events],
                ["INDEX", "TIME", "COMMAND", "NODE", "ATTEMPT", "ASKED BY", "MOVE", "REASON"]))
    return EXIT_OK


def cmd_dags_backfill(client: ClusterClient, args: argparse.Namespace) -> int:
    out = client.backfill(args.dag_id, args.start, args.end)
    if args.json:
        emit_json({"dag_id": args.dag_id, **out})
        return EXIT_OK
    print(f"{len(out['created'])} run(s) created for {args.dag_id} from {args.start} to {args.end}"
          + (f"; {len(out['existing'])} tick(s) already had a run" if out["existing"] else "")
          + ". They start within the DAG's max_active_runs; `raftflow runs list DAG_ID` follows them.")
    return EXIT_OK


def cmd_dags_delete(client: ClusterClient, args: argparse.Namespace) -> int:
    if not args.yes:
        runs = client.list_runs(args.dag_id, limit=MAX_LIST_RUNS)["runs"]
        raise UsageError(f"this removes DAG {args.dag_id} and its {len(runs)} run(s) with their task logs, on every "
                         "node; nothing was changed. Repeat with --yes to do it")
    removed = client.delete_dag(args.dag_id)
    if args.json:
        emit_json({"dag_id": args.dag_id, "runs_removed": removed})
    else:
        print(f"DAG {args.dag_id} deleted with {removed} run(s)")
    return EXIT_OK


def cmd_pools_set(client: ClusterClient, args: argparse.Namespace) -> int:
    if args.slots < 0:
        raise UsageError(f"SLOTS must be 0 or more, got {args.slots}")
    client.set_pool(args.name, args.slots)
    print(f"pool {args.name}: {args.slots} slots")
    return EXIT_OK


def cmd_pools_list(client: ClusterClient, args: argparse.Namespace) -> int:
    listed = client.list_pools()
    if args.json:
        emit_json(listed)
        return EXIT_OK
    warn_if_stale(listed.get("meta"))
    print(table([[p["name"], p["slots"], p["used"], p["queued"]] for p in listed["pools"]],
                ["POOL", "SLOTS", "USED", "QUEUED"]))
    return EXIT_OK


def snapshot_cell(node: dict[str, Any], now: float) -> str:
    """A node's last Raft snapshot for `cluster status`: "INDEX (AGE ago)", "FAILING" first
    if its latest attempt failed, "none" if it has none, "-" if it did not answer."""
    if node["role"] == "unreachable":
        return "-"
    at = float(node.get("snapshot_at") or 0)
    last = "none" if at <= 0 else f"{node.get('snapshot_index', 0)} ({max(0.0, now - at):.0f}s ago)"
    return f"FAILING, last {last}" if node.get("snapshot_error") else last


def health_cell(node: dict[str, Any]) -> str:
    """HEALTHY in `cluster status`: "NO" (unreachable, or no heartbeat within the lease);
    "yes, no work" while it starts (NodeStarted not yet committed) or drains; else "yes"."""
    if not node["healthy"]:
        return "NO"
    return "yes" if node.get("ready") else "yes, no work"


def cmd_cluster_status(client: ClusterClient, args: argparse.Namespace) -> int:
    status = client.cluster_status()
    if args.json:
        emit_json(status)
        return EXIT_OK
    now = time.time()
    leader = status["leader"] or f"NONE ({status['served_by']} has no quorum: it reaches no majority of the voters)"
    since = next((c["at"] for c in reversed(status["leader_changes"]) if c["node"] == status["leader"]), None)
    print(f"leader: {leader}" + (f" since {since}" if since else "") + f"   (answered by {status['served_by']})")
    print(table([[n["id"], "worker, unreachable" if n.get("worker") and n["role"] == "unreachable" else n["role"],
                  health_cell(n), n["pid"] or "-", n["raft_term"],
                  n["commit_index"], f"{n['running_tasks']}/{n['slots']}",
                  "-" if n["last_heartbeat_age"] < 0 else f"{n['last_heartbeat_age']:.1f}s ago",
                  ",".join(n.get("queues") or []) or "-", snapshot_cell(n, now), n["grpc_address"],
                  n.get("web_url") or "-", n["error"]]
                 for n in status["nodes"]],
                ["NODE", "ROLE", "HEALTHY", "PID", "TERM", "COMMIT", "TASKS", "HEARTBEAT", "QUEUES", "SNAPSHOT",
                 "ADDRESS", "WEB", "ERROR"]))
    for n in status["nodes"]:
        if n.get("snapshot_error"):
            print(f"\nsnapshot FAILING on {n['id']} ({n.get('snapshot_failures', 0)} attempt(s) in a row; retried "
                  f"with backoff; its journal grows until one succeeds; see its log): {n['snapshot_error']}")
    if status["nodes"] and not any(n["grpc_address"] for n in status["nodes"]):
        print("\nPIDs and addresses are shown to admin tokens only (this token's role is lower).")
    plaintext = [n["id"] for n in status["nodes"] if not n["error"] and n.get("tls") is False]
    if plaintext:
        print(f"\nWARNING: {', '.join(plaintext)} serve(s) PLAINTEXT gRPC (insecure = true): development only")
    digests = {n["digest"] for n in status["nodes"] if n["digest"]}
    if status["leader_changes"]:
        print("\nrecent leader changes:")
        for change in status["leader_changes"][-5:]:
            print(f"  {change['at']}  {change['node']} (term {change['term']})")
    if len(digests) > 1:
        print("\nnote: replicas differ in state digest (normal for a moment while they catch up)")
    return EXIT_OK


def cmd_cluster_add_voter(client: ClusterClient, args: argparse.Namespace) -> int:
    return _print_membership(client.add_voter(args.node, args.grpc_address, args.raft_address, args.peer_address),
                             args)


def cmd_cluster_remove_voter(client: ClusterClient, args: argparse.Namespace) -> int:
    return _print_membership(client.remove_voter(args.node), args)


def _print_membership(changed: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        emit_json(changed)
    else:
        print(f"{changed['message']}; voters: {', '.join(changed['voters'])}")
    return EXIT_OK


def cmd_tokens_create(client: ClusterClient, args: argparse.Namespace) -> int:
    created = client.create_token(args.name, args.role, args.expires)
    if args.json:
        emit_json(created)
        return EXIT_OK
    expires = f", expires {created['expires_at']}" if created["expires_at"] else ", never expires"
    print(f"created token {created['name']} (role {created['role']}{expires})")
    print(created["secret"])
    print("This secret will not be shown again: store it now (use it as --token or RAFTFLOW_TOKEN).",
          file=sys.stderr)
    return EXIT_OK


def cmd_tokens_list(client: ClusterClient, args: argparse.Namespace) -> int:
    listing = client.list_tokens()
    if args.json:
        emit_json(listing)
        return EXIT_OK
    print(table([[t["name"], t["role"], "admin_token_file" if t["from_file"] else t["created_at"],
                  t["created_by"], ("EXPIRED " if t["expired"] else "") + (t["expires_at"] or "never"),
                  t["last_used_at"]] for t in listing["tokens"]],
                ["TOKEN", "ROLE", "CREATED", "BY", "EXPIRES", "LAST USED (about a minute late)"]))
    return EXIT_OK


def cmd_tokens_revoke(client: ClusterClient, args: argparse.Namespace) -> int:
    client.revoke_token(args.name)
    print(f"revoked token {args.name}: every node refuses it once it has applied the revoke")
    return EXIT_OK


def cmd_variables_set(client: ClusterClient, args: argparse.Namespace) -> int:
    created = client.set_variable(args.key, args.value)
    if args.json:
        emit_json({"key": args.key, "created": created})
        return EXIT_OK
    print(f"variable {args.key} {'created' if created else 'updated'}")
    return EXIT_OK


def cmd_variables_get(client: ClusterClient, args: argparse.Namespace) -> int:
    variable = client.get_variable(args.key)
    if args.json:
        emit_json(variable)
        return EXIT_OK
    warn_if_stale(variable.get("meta"))
    print(variable["value"])
    if variable["masked"]:
        print(f"note: {args.key} names a secret; only an admin token sees its value", file=sys.stderr)
    return EXIT_OK


def cmd_variables_list(client: ClusterClient, args: argparse.Namespace) -> int:
    listing = client.list_variables()
    if args.json:
        emit_json(listing)
        return EXIT_OK
    warn_if_stale(listing.get("meta"))
    print(table([[v["key"], _one_line(v["value"]), "yes" if v["sensitive"] else ""] for v in listing["variables"]],
                ["KEY", "VALUE", "SECRET (masked in task logs)"]))
    return EXIT_OK


def _one_line(value: str, width: int = 60) -> str:
    flat = value.replace("\n", "\\n")
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def cmd_variables_delete(client: ClusterClient, args: argparse.Namespace) -> int:
    client.delete_variable(args.key)
    print(f"variable {args.key} deleted")
    return EXIT_OK


def read_variables_file(path: str) -> dict[str, str]:
    """A JSON object {key: value} (Airflow's `variables import` format) as variables: a
    value that is not a string becomes its JSON text (var.json reads it back). Raises
    UsageError saying what is wrong with the file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        given = parse_json(text, path)
    except ValueError as e:
        raise UsageError(f"{e}; the file must be a JSON object such as {{\"key\": \"value\"}}") from None
    if not isinstance(given, dict) or not given:
        raise UsageError(f"{path} must hold a non-empty JSON object of key: value, got "
                         f"{type(given).__name__ if not isinstance(given, dict) else 'an empty object'}")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in given.items()}


def cmd_variables_import(client: ClusterClient, args: argparse.Namespace) -> int:
    """FILE.json is a JSON object {key: value} (Airflow's `variables import` format); a
    value that is not a string is stored as its JSON text (var.json reads it back)."""
    result = client.import_variables(read_variables_file(args.file))
    if args.json:
        emit_json(result)
        return EXIT_OK
    print(f"imported {result['imported']} variable(s) from {args.file} ({result['created']} new)")
    return EXIT_OK


def cmd_connections_list(client: ClusterClient, args: argparse.Namespace) -> int:
    """Every SSH connection some node defines, and which nodes have it: an ssh task runs
    only there. Secrets never leave the nodes; only how each one authenticates is shown."""
    status = client.cluster_status()
    rows: dict[tuple, dict[str, Any]] = {}
    unreachable = []
    for node in status["nodes"]:
        if node["error"]:
            unreachable.append(node["id"])
        for conn in node.get("connections") or []:
            key = (conn["name"], conn["user"], conn["host"], conn["port"], conn["auth"], conn["trust_on_first_use"])
            rows.setdefault(key, {**conn, "nodes": []})["nodes"].append(node["id"])
    connections = sorted(rows.values(), key=lambda c: (c["name"], c["nodes"]))
    if args.json:
        emit_json({"connections": connections, "unreachable_nodes": unreachable})
        return EXIT_OK
    if connections:
        print(table([[c["name"], f"{c['user']}@{c['host']}:{c['port']}" if c["host"] else "-", c["auth"] +
                      (" (trust on first use)" if c["trust_on_first_use"] else ""), ",".join(c["nodes"])]
                     for c in connections], ["CONNECTION", "ADDRESS", "AUTH", "NODES"]))
    else:
        print("no node defines an SSH connection (add [connections.NAME] to a node's config; see README)")
    names = [c["name"] for c in connections]
    for name in sorted({n for n in names if names.count(n) > 1}):
        print(f"note: nodes define {name} differently; an ssh task may run on any of them")
    if unreachable:
        print(f"note: {', '.join(unreachable)} did not answer; their connections are not listed")
    return EXIT_OK


def cmd_certs_init(args: argparse.Namespace) -> int:
    from raftflow.certs import init_dir

    path = init_dir(Path(args.dir), days=args.days)
    print(f"created the cluster CA: {path} (give it to every node as tls_ca_file, and to clients as --ca-file) "
          f"and its key {path.with_name('ca.key')} (0600: keep it off the nodes; it signs new node certificates)")
    return EXIT_OK


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from raftflow.certs import issue_in_dir

    if not args.host:
        raise UsageError("give at least one --host: the host names or IPs clients and peers dial this node at")
    cert, key = issue_in_dir(Path(args.dir), args.node_id, args.host, days=args.days)
    print(f"issued {args.node_id}'s certificate {cert} (CN {args.node_id}; SANs {args.node_id}, "
          f"{', '.join(args.host)}; valid {args.days} days) and key {key} (0600). On that node set "
          f"tls_cert_file = \"{cert}\", tls_key_file = \"{key}\", tls_ca_file = \"{Path(args.dir) / 'ca.pem'}\"")
    return EXIT_OK


def run_certs(args: argparse.Namespace) -> int:
    from raftflow.certs import CertError

    try:
        return int(args.certs_func(args))
    except (CertError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


# ---------------------------------------------------------------- parser
MAX_LOAD_TIMEOUT = 3600.0   # seconds: `dags submit/check --load-timeout`
MAX_CERT_DAYS = 36_500      # `certs init/issue --days`


def add_global_options(parser: argparse.ArgumentParser, in_verb: bool) -> None:
    """The options every client verb takes, accepted before the group (`raftflow
    --cluster X dags list`) or after the verb (`raftflow dags list --cluster X`). After
    the verb their default is SUPPRESS, so that an option given before the group is not
    overwritten by the verb's default (argparse copies a subparser's defaults over)."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if in_verb else value

    parser.add_argument("--cluster", default=default(None),
                        help="node addresses HOST:PORT,... (default: $RAFTFLOW_CLUSTER, else the local cluster "
                             "from tools/up)")
    parser.add_argument("--token", default=default(None),
                        help="API token (default: $RAFTFLOW_TOKEN, else the admin token of the local cluster from "
                             "tools/up); prefer the variable: arguments show in `ps`")
    parser.add_argument("--retry-for", type=retry_seconds, metavar="SECONDS",
                        default=default(os.environ.get("RAFTFLOW_RETRY_FOR", str(DEFAULT_RETRY_FOR))),
                        help=f"retry a write across node failures and leader elections this long (default: "
                             f"$RAFTFLOW_RETRY_FOR, else {DEFAULT_RETRY_FOR:g}; 0 to {MAX_RETRY_FOR:g}); the cluster "
                             "applies it once however often it is retried")
    parser.add_argument("--ca-file", dest="ca_file", default=default(None),
                        help="CA certificate the nodes' certificates chain to (default: $RAFTFLOW_CA_FILE, else "
                             "the local cluster's <local-dir>/ca.pem, else the system's)")
    parser.add_argument("--insecure", action="store_true", default=default(False),
                        help="plaintext, for nodes started with insecure = true (development only)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output (as -o json)")
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=default(None),
                        help="table (default), json (as --json) or yaml")


def build_parser(with_node: bool = True) -> argparse.ArgumentParser:
    """The whole command line. `with_node=False` leaves out the options of `raftflow
    node` (it takes the rest of the line as is): building them imports the node's code
    (raftflow.main: ~1.7 s), which no client verb needs, so main() builds them only for
    `raftflow node`."""
    parser = argparse.ArgumentParser(
        prog="raftflow", description="raftflow: a DAG scheduler with no single point of failure.",
        epilog="Exit codes: 0 ok, 1 operation failed, 2 usage or invalid input, 3 cluster unreachable, "
               "4 not authenticated or not allowed (the token's role).")
    add_global_options(parser, in_verb=False)
    sub = parser.add_subparsers(dest="group", required=True,
                                metavar="{dags,runs,tasks,pools,variables,connections,tokens,cluster,certs,node}")

    def verb(group: argparse._SubParsersAction, name: str, func: Callable, help: str,
             json_flag: bool = True) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help, description=help)
        p.set_defaults(func=func, structured_output=json_flag)
        add_global_options(p, in_verb=True)
        return p

    dags = sub.add_parser("dags", help="submit, list, show, trigger, pause DAGs").add_subparsers(
        dest="verb", required=True)
    p = verb(dags, "submit", cmd_dags_submit, "submit every DAG in the given files or folders")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--load-timeout", type=seconds_option("--load-timeout", MAX_LOAD_TIMEOUT), default=DEFAULT_TIMEOUT,
                   help="seconds allowed to load each file")
    p = verb(dags, "check", cmd_dags_check, "load DAG files (raftflow's or Airflow's) without submitting: each "
             "task's operator and kind, the arguments ignored, what would be refused (needs no cluster)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--load-timeout", type=seconds_option("--load-timeout", MAX_LOAD_TIMEOUT), default=DEFAULT_TIMEOUT,
                   help="seconds allowed to load each file")
    p.set_defaults(local_func=cmd_dags_check)
    p = verb(dags, "test", cmd_dags_test, "run one DAG run on this machine, without a cluster: every task in "
             "order in local processes, each task's log and final state printed (Airflow's `dags test`)")
    local_test_options(p)
    p.set_defaults(local_func=cmd_dags_test)
    verb(dags, "list", cmd_dags_list, "list DAGs")
    p = verb(dags, "show", cmd_dags_show, "show a DAG's tasks (and code)")
    p.add_argument("dag_id")
    p.add_argument("--code", action="store_true", help="also print the DAG file's source")
    p.add_argument("--version", type=int_option("--version", 0, 2**31 - 1, " (0: the latest)"), default=0,
                   help="show an older version")
    p = verb(dags, "trigger", cmd_dags_trigger, "start a manual run")
    p.add_argument("dag_id")
    p.add_argument("--conf", help="JSON object passed to the run")
    p.add_argument("--wait", action="store_true", help="follow the run; exit 1 if it fails")
    p = verb(dags, "backfill", cmd_dags_backfill, "create the runs of every schedule tick in a past range")
    p.add_argument("dag_id")
    p.add_argument("--start", required=True, help="ISO-8601 date or datetime (UTC unless it has an offset)")
    p.add_argument("--end", required=True, help="inclusive; not in the future")
    p = verb(dags, "delete", cmd_dags_delete, "remove a DAG and its whole history (not while runs are going)")
    p.add_argument("dag_id")
    p.add_argument("--yes", action="store_true", help="really delete (without it, says what would go)")
    p = verb(dags, "pause", cmd_pause(True), "stop scheduling new runs of a DAG", json_flag=False)
    p.add_argument("dag_id")
    p = verb(dags, "unpause", cmd_pause(False), "resume scheduling a DAG", json_flag=False)
    p.add_argument("dag_id")

    runs = sub.add_parser("runs", help="list, show, watch, cancel runs").add_subparsers(dest="verb", required=True)
    p = verb(runs, "list", cmd_runs_list, "list recent runs")
    p.add_argument("dag_id", nargs="?", help="only this DAG's runs (or --dag)")
    p.add_argument("--dag", help="only this DAG's runs")
    p.add_argument("--limit", type=int_option("--limit", 0, MAX_LIST_RUNS, " (0: 50)"), default=0,
                   help="at most this many runs, newest first (default 50)")
    p.add_argument("--state", action="append", choices=[s.value for s in RunState],
                   help="only runs in this state (repeat for several)")
    p.add_argument("--since", type=since_option, metavar="WHEN",
                   help="only runs created since WHEN: a duration back from now (30m, 2h, 7d, 1w) or an ISO-8601 "
                        "date or datetime (UTC unless it has an offset)")
    p = verb(runs, "show", cmd_runs_show, "show a run with every task's state, attempt, node and times")
    p.add_argument("run_id")
    p = verb(runs, "watch", cmd_runs_watch, "follow a run until it ends (exit 1 if it fails)")
    p.add_argument("run_id")
    p = verb(runs, "cancel", cmd_runs_cancel,
             "fail a queued or running run now: kill its running attempts, skip the tasks not started")
    p.add_argument("run_id")
    p.add_argument("--reason", help="recorded with the run's tasks (default: cancelled by the user)")

    tasks = sub.add_parser("tasks", help="task logs; clear and mark tasks").add_subparsers(dest="verb", required=True)
    p = verb(tasks, "clear", cmd_tasks_clear, "run tasks again (a finished run reopens); kills running attempts")
    p.add_argument("run_id")
    p.add_argument("task_ids", nargs="+", metavar="TASK_ID")
    p.add_argument("--downstream", action="store_true", help="also every task that depends on them")
    p = verb(tasks, "mark", cmd_tasks_mark, "set a task's state by hand (kills a running attempt)")
    p.add_argument("run_id")
    p.add_argument("task_id")
    p.add_argument("state", choices=[TaskState.SUCCESS.value, TaskState.FAILED.value])
    p = verb(tasks, "logs", cmd_tasks_logs, "print a task attempt's log, from whichever node ran it",
             json_flag=False)
    p.add_argument("run_id")
    p.add_argument("task_id")
    p.add_argument("--attempt", type=int_option("--attempt", 0, 2**31 - 1, " (0: the latest)"), default=0,
                   help="default: the latest attempt")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing the log as it grows until the attempt ends (waits for it to start)")
    p = verb(tasks, "test", cmd_tasks_test, "run one task of a DAG on this machine, without a cluster, whatever "
             "its upstream tasks (they are marked success, not run); its log and final state (Airflow's `tasks test`)")
    local_test_options(p, with_task=True)
    p.set_defaults(local_func=cmd_tasks_test)
    p = verb(tasks, "story", cmd_tasks_story, "every recorded move of a task instance: Raft index, time, "
             "command, node, attempt, who asked, state before -> after, reason")
    p.add_argument("run_id")
    p.add_argument("task_id")

    pools = sub.add_parser("pools", help="set and list pools (caps on concurrent tasks)").add_subparsers(
        dest="verb", required=True)
    p = verb(pools, "set", cmd_pools_set, "create a pool or change its slots (tasks use it with pool=NAME)",
             json_flag=False)
    p.add_argument("name")
    p.add_argument("slots", type=int_option("SLOTS", 0, 2**31 - 1))
    verb(pools, "list", cmd_pools_list, "list pools: slots, slots in use, tasks queued")

    connections = sub.add_parser("connections", help="the SSH connections nodes define").add_subparsers(
        dest="verb", required=True)
    verb(connections, "list", cmd_connections_list, "SSH connections, their hosts and the nodes that have each "
                                                     "(never secrets)")

    tokens = sub.add_parser("tokens", help="create, list, revoke API tokens (role admin)").add_subparsers(
        dest="verb", required=True)
    p = verb(tokens, "create", cmd_tokens_create, "create a token; prints its secret once")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=[r.value for r in Role],
                   help="viewer: reads and logs; operator: + trigger, pause, clear, mark, cancel, backfill; "
                        "admin: + submit/delete DAGs, pools, tokens")
    p.add_argument("--expires", type=int_option("--expires", 0, MAX_TOKEN_DAYS, " (0: never)"), default=0,
                   metavar="DAYS",
                   help=f"expire after DAYS days (1 to {MAX_TOKEN_DAYS}; default: never)")
    verb(tokens, "list", cmd_tokens_list, "list tokens: role, created, expiry, last use (never secrets)")
    p = verb(tokens, "revoke", cmd_tokens_revoke, "revoke a token on every node", json_flag=False)
    p.add_argument("name")

    variables = sub.add_parser("variables", help="set, get, list, delete, import Variables (templates: "
                               "var.value.KEY)").add_subparsers(dest="verb", required=True)
    p = verb(variables, "set", cmd_variables_set, "create a variable or replace its value (role operator)")
    p.add_argument("key")
    p.add_argument("value")
    p = verb(variables, "get", cmd_variables_get, "print a variable's value (a secret's is *** but for admins)")
    p.add_argument("key")
    verb(variables, "list", cmd_variables_list, "list variables (values of secret keys shown as *** but to admins)")
    p = verb(variables, "delete", cmd_variables_delete, "delete a variable (role operator)", json_flag=False)
    p.add_argument("key")
    p = verb(variables, "import", cmd_variables_import, "set every variable of a JSON object file, all or none")
    p.add_argument("file", metavar="FILE.json")

    cluster = sub.add_parser("cluster", help="cluster status, voters added and removed live").add_subparsers(
        dest="verb", required=True)
    verb(cluster, "status", cmd_cluster_status, "who leads, and each node's health and load")
    p = verb(cluster, "add-voter", cmd_cluster_add_voter,
             "make a node a voter, live (start it with `join` first, or after: it waits to be added)")
    p.add_argument("node", metavar="ID")
    p.add_argument("grpc_address", metavar="GRPC", help="its client API, HOST:PORT")
    p.add_argument("raft_address", metavar="RAFT", help="its Raft port, HOST:PORT")
    p.add_argument("peer_address", metavar="PEER", help="its peer API, HOST:PORT")
    p = verb(cluster, "remove-voter", cmd_cluster_remove_voter,
             "take a voter out, live (refused if no majority would be left); the node stops")
    p.add_argument("node", metavar="ID")

    certs = sub.add_parser("certs", help="make a cluster CA and node certificates (deploy/README.md)"
                           ).add_subparsers(dest="verb", required=True)
    p = certs.add_parser("init", help="create a CA: DIR/ca.pem and DIR/ca.key (never overwrites)",
                         description="create a CA: DIR/ca.pem and DIR/ca.key (never overwrites)")
    p.add_argument("--dir", required=True, help="folder for the CA's files")
    p.add_argument("--days", type=int_option("--days", 1, MAX_CERT_DAYS), default=3650, help="validity (default 3650)")
    p.set_defaults(certs_func=cmd_certs_init)
    p = certs.add_parser("issue", help="issue a node certificate signed by DIR's CA: DIR/NODE_ID.pem and .key",
                         description="issue a node certificate signed by DIR's CA: DIR/NODE_ID.pem and "
                                     "DIR/NODE_ID.key (CN and a DNS SAN = NODE_ID, plus every --host)")
    p.add_argument("node_id")
    p.add_argument("--dir", required=True, help="the folder of `certs init` (its ca.pem and ca.key)")
    p.add_argument("--host", action="append", default=[],
                   help="a host name or IP clients or peers dial this node at (repeat for several)")
    p.add_argument("--days", type=int_option("--days", 1, MAX_CERT_DAYS), default=365, help="validity (default 365)")
    p.set_defaults(certs_func=cmd_certs_issue)

    node = sub.add_parser("node", help="run a node (see deploy/ and tools/up)", add_help=with_node)
    if with_node:
        from raftflow.main import build_parser as node_parser

        node_parser(node)
    node.set_defaults(func=None)
    return parser


def choose_output(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set the output format from --json / -o; a verb without structured output refuses
    json and yaml (exit 2), and --json with -o table or yaml is a contradiction."""
    global output_format
    chosen = args.output or ("json" if args.json else "table")
    if args.json and chosen != "json":
        parser.error(f"--json and -o {chosen} contradict each other; give one")
    if chosen != "table" and not getattr(args, "structured_output", True):
        parser.error(f"`{args.group} {args.verb}` has no {chosen} output; leave out --json/-o {chosen}")
    output_format, args.json = chosen, chosen != "table"


def local_test_options(p: argparse.ArgumentParser, with_task: bool = False) -> None:
    p.add_argument("dag_file", metavar="DAG_FILE")
    if with_task:
        p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--dag", help="the DAG to run, when the file declares several")
    p.add_argument("--conf", help="JSON object passed to the run (dag_run.conf, params)")
    p.add_argument("--logical-date", help="ISO-8601 date or datetime of the run (default: now)")
    p.add_argument("--variables", metavar="FILE.json",
                   help="Variables the run sees, a JSON object of key: value (as `variables import` takes)")
    p.add_argument("--config", metavar="NODE.toml", help="a node's config file: its [connections] for ssh tasks")
    p.add_argument("--load-timeout", type=seconds_option("--load-timeout", MAX_LOAD_TIMEOUT), default=DEFAULT_TIMEOUT,
                   help="seconds allowed to load the file")


def cmd_dags_test(args: argparse.Namespace) -> int:
    from .localtest import dags_test  # (imports the worker: only for this verb)
    return dags_test(args)


def cmd_tasks_test(args: argparse.Namespace) -> int:
    from .localtest import tasks_test
    return tasks_test(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(with_node=False)
    args, unknown = parser.parse_known_args(argv)
    if args.group == "node":   # parsed again with the node's own options (see build_parser)
        parser = build_parser()
        args = parser.parse_args(argv)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.group not in ("node", "certs"):
        choose_output(parser, args)
    if args.group == "node":
        from raftflow.main import run
        return run(args)
    if args.group == "certs":
        return run_certs(args)
    if getattr(args, "local_func", None) is not None:   # verbs that need no cluster (dags check, dags test)
        try:
            return int(args.local_func(args))
        except BrokenPipeError:  # e.g. `raftflow dags test FILE | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
    try:
        ca_pem, insecure, ca_name = cluster_tls(args.ca_file, args.insecure)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    client = ClusterClient(cluster_addresses(args.cluster), token=client_token(args.token), retry_for=args.retry_for,
                           ca_pem=ca_pem, insecure=insecure, ca_name=ca_name)
    try:
        return args.func(client, args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.code in AUTH_CODES:
            return EXIT_AUTH
        invalid = e.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        return EXIT_USAGE if invalid else EXIT_FAILED
    except ClusterUnreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `raftflow tasks logs ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
