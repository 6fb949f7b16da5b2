"""tools/bench airflow: the same Airflow DAG files on Airflow 3 and on raftflow, in one run.

    tools/bench airflow [--quick] [--json] [--airflow-version V] [--constraints FILE|URL]
                        [--reinstall] [--chain-runs N] [--fanout-runs N] [--nodes N] [--slots N]

The DAG files are bench/airflow_dags/: a chain of 20 BashOperator("true") and
1 -> 200 -> 1 of them. Airflow parses them itself; raftflow loads them through its
Airflow-compatibility loader (what `raftflow dags submit` does). Each system runs on
its own, one after the other (Airflow first, stopped before raftflow starts), so the
two never share the machine's cores.

Airflow is installed on demand into its own venv under the cache,
~/.cache/raftflow/airflow-venv/<version>-py<X.Y>/ (pip, with Airflow's published
constraints file for that version and Python when it can be fetched), never into the
project's .venv: Airflow pins hundreds of packages (SQLAlchemy, pydantic, protobuf,
grpcio...) that would fight raftflow's own. A venv that finished installing is reused.

Airflow runs with LocalExecutor on SQLite (Airflow 3 accepts that pair: tasks talk to
the api-server, not to the database), parallelism 4, no example DAGs, AIRFLOW_HOME in
a temporary folder, every port chosen free at run time: `airflow db migrate`, then
`airflow scheduler`, `airflow dag-processor` and `airflow api-server`, each in its own
process group, stopped (SIGTERM, then SIGKILL) at the end, on error and on Ctrl-C.

Figures come from each system's own records of its task instances: Airflow's
start_date/end_date through its REST API (/api/v2), raftflow's started_at/ended_at
(as bench_scale reads them). The trigger instant is the client's clock just before
the trigger call; everything runs on one machine, so the clocks agree.
  chain step      next task's start - previous task's end (all gaps of all runs: median, p90)
  first start     trigger -> the first task's start (median of runs)
  last end        trigger -> the last task's end (median of runs)
  fan-out wall    trigger -> the last task's end; tasks/s = 202 / wall (median of runs)
Ratios are Airflow / raftflow, computed in the same invocation (for tasks/s: raftflow /
Airflow, so every ratio reads "times faster"). Not part of `tools/bench all` nor of
tools/test: it needs the network for the first install and takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Callable

from .bench_scale import _epoch, _ms
from .local import LOOPBACK, free_ports

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "bench" / "airflow_dags"
CHAIN_DAG, CHAIN_LENGTH = "bench_airflow_chain", 20
FANOUT_DAG, FANOUT_WIDTH = "bench_airflow_fanout", 200
FANOUT_TASKS = FANOUT_WIDTH + 2

DEFAULT_AIRFLOW_VERSION = "3.3.2"       # the version measured in docs/benchmarks.md
PARALLELISM = 4
CONSTRAINTS_URL = "https://raw.githubusercontent.com/apache/airflow/constraints-{version}/constraints-{python}.txt"
STAMP = "raftflow-airflow.json"         # written into the venv once pip has finished
RUNS = {"full": (3, 2), "quick": (1, 1)}  # (chain runs, fan-out runs)


class BenchError(Exception):
    """Something the reader must act on; printed without a traceback."""


# ---------------------------------------------------------------- the pure parts


@dataclass(frozen=True)
class Span:
    task_id: str
    start: float        # epoch seconds
    end: float


def spans_from_airflow(records: list[dict[str, Any]]) -> list[Span]:
    """Task instance records of one Airflow DAG run (/api/v2/.../taskInstances), as spans.
    Every task must have succeeded with both times recorded: a failed or unfinished task
    makes the run's figures meaningless, so it is an error that names the task."""
    spans = []
    for r in records:
        if r.get("state") != "success":
            raise BenchError(f"Airflow task {r.get('task_id')!r} ended {r.get('state')!r}, not success")
        if not r.get("start_date") or not r.get("end_date"):
            raise BenchError(f"Airflow task {r.get('task_id')!r} has no start_date/end_date")
        spans.append(Span(r["task_id"], _epoch(r["start_date"]), _epoch(r["end_date"])))
    return spans


def spans_from_raftflow(tasks: list[dict[str, Any]]) -> list[Span]:
    """The tasks of a finished raftflow run (ClusterClient.get_run), as spans."""
    spans = []
    for t in tasks:
        if t.get("state") != "success" or not t.get("started_at") or not t.get("ended_at"):
            raise BenchError(f"raftflow task {t.get('task_id')!r} ended {t.get('state')!r} without both times")
        spans.append(Span(t["task_id"], _epoch(t["started_at"]), _epoch(t["ended_at"])))
    return spans


@dataclass(frozen=True)
class ChainRun:
    gaps: list[float]       # seconds: each task's start - the previous task's end
    to_first: float         # trigger -> first start
    to_last: float          # trigger -> last end


def chain_run(spans: list[Span], triggered: float, length: int = CHAIN_LENGTH) -> ChainRun:
    if len(spans) != length:
        raise BenchError(f"a chain run has {len(spans)} task records, expected {length}")
    ordered = sorted(spans, key=lambda s: s.start)
    gaps = [b.start - a.end for a, b in zip(ordered, ordered[1:])]
    return ChainRun(gaps, ordered[0].start - triggered, max(s.end for s in spans) - triggered)


def fanout_wall(spans: list[Span], triggered: float, tasks: int = FANOUT_TASKS) -> float:
    """Trigger -> the last task's end, in seconds."""
    if len(spans) != tasks:
        raise BenchError(f"a fan-out run has {len(spans)} task records, expected {tasks}")
    return max(s.end for s in spans) - triggered


def summarise(chains: list[ChainRun], walls: list[float], task_seconds: list[float] | None = None,
              tasks: int = FANOUT_TASKS) -> dict[str, Any]:
    """One system's figures: pooled chain gaps, medians over runs; `task_seconds` (each
    fan-out task's end - start, its own recorded run time) says how much of the wall
    went into running the tasks rather than scheduling them."""
    gaps = [g for c in chains for g in c.gaps]
    wall = statistics.median(walls)
    extra = {"fanout_task_run": _ms(task_seconds)} if task_seconds else {}
    return {**extra,
        "chain_step": _ms(gaps),
        "trigger_to_first_start": _ms([c.to_first for c in chains]),
        "trigger_to_last_end_s": round(statistics.median(c.to_last for c in chains), 2),
        "fanout_wall_s": round(wall, 2),
        "fanout_tasks_per_s": round(tasks / wall, 1),
        "runs": {"chain": len(chains), "fanout": len(walls)},
    }


def ratios(airflow: dict[str, Any], raftflow: dict[str, Any]) -> dict[str, float | None]:
    """How many times faster raftflow is, figure by figure: Airflow / raftflow for times,
    raftflow / Airflow for tasks per second. None where raftflow's time is 0."""
    def ratio(a: float, r: float) -> float | None:
        return round(a / r, 1) if r > 0 else None
    return {
        "chain_step_median": ratio(airflow["chain_step"]["median_ms"], raftflow["chain_step"]["median_ms"]),
        "chain_step_p90": ratio(airflow["chain_step"]["p90_ms"], raftflow["chain_step"]["p90_ms"]),
        "trigger_to_first_start": ratio(airflow["trigger_to_first_start"]["median_ms"],
                                        raftflow["trigger_to_first_start"]["median_ms"]),
        "trigger_to_last_end": ratio(airflow["trigger_to_last_end_s"], raftflow["trigger_to_last_end_s"]),
        "fanout_wall": ratio(airflow["fanout_wall_s"], raftflow["fanout_wall_s"]),
        "fanout_tasks_per_s": ratio(raftflow["fanout_tasks_per_s"], airflow["fanout_tasks_per_s"]),
    }


def render(result: dict[str, Any]) -> str:
    """The side-by-side table tools/bench airflow prints."""
    a, r, x = result["airflow"], result["raftflow"], result["ratios"]

    def q(fig: dict[str, Any]) -> str:
        return f"{fig['median_ms']:.1f} ms (p90 {fig['p90_ms']:.1f}, n={fig['n']})"
    rows = [
        ("chain step (next start - prev end)", q(a["chain_step"]), q(r["chain_step"]),
         f"{x['chain_step_median']}x (p90 {x['chain_step_p90']}x)"),
        ("chain: trigger -> first start", q(a["trigger_to_first_start"]), q(r["trigger_to_first_start"]),
         f"{x['trigger_to_first_start']}x"),
        (f"chain of {CHAIN_LENGTH}: trigger -> last end", f"{a['trigger_to_last_end_s']} s",
         f"{r['trigger_to_last_end_s']} s", f"{x['trigger_to_last_end']}x"),
        (f"fan-out 1 -> {FANOUT_WIDTH} -> 1: wall", f"{a['fanout_wall_s']} s", f"{r['fanout_wall_s']} s",
         f"{x['fanout_wall']}x"),
        ("fan-out: tasks/s", f"{a['fanout_tasks_per_s']}", f"{r['fanout_tasks_per_s']}", f"{x['fanout_tasks_per_s']}x"),
    ]
    if "fanout_task_run" in a and "fanout_task_run" in r:
        rows.append(("fan-out: one task's run (end - start)", q(a["fanout_task_run"]), q(r["fanout_task_run"]), ""))
    head = ("", f"Airflow {result['airflow_version']}", "raftflow", "ratio")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]
    lines = [f"== airflow: the same DAG files on Airflow and on raftflow ({result['date']})"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    s = result["setup"]
    lines.append(f"  Airflow: LocalExecutor, SQLite, parallelism {PARALLELISM}; raftflow: {s['raftflow_nodes']} nodes "
                 f"x {s['raftflow_slots']} slots; runs: chain {a['runs']['chain']}, fan-out {a['runs']['fanout']} each")
    lines.append(f"  Airflow venv: {s['venv']} ({'reused' if s['venv_reused'] else 'installed'} in "
                 f"{s['venv_install_s']} s; constraints: {s['constraints']})")
    lines.append(f"  Airflow start to DAGs parsed: {s['airflow_start_s']} s; whole invocation: {s['total_s']} s")
    if "load_average_1min" in s:
        lines.append("  load average (1 min) at Airflow's start, raftflow's start, the end: "
                     + ", ".join(str(v) for v in s["load_average_1min"].values()))
    return "\n".join(lines)


# ---------------------------------------------------------------- the venv


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "raftflow"


def venv_dir(cache: Path, airflow_version: str, python_version: str) -> Path:
    """One venv per Airflow version and Python minor version (constraints differ by both)."""
    return cache / "airflow-venv" / f"{airflow_version}-py{python_version}"


def constraints_url(airflow_version: str, python_version: str) -> str:
    return CONSTRAINTS_URL.format(version=airflow_version, python=python_version)


def check_airflow_version(version: str) -> str:
    """Airflow 3 only: the REST API (/api/v2), the separate dag-processor and LocalExecutor
    on SQLite are Airflow 3's."""
    if not re.fullmatch(r"3\.\d+\.\d+", version):
        raise argparse.ArgumentTypeError(f"{version!r}: give an Airflow 3 release such as {DEFAULT_AIRFLOW_VERSION}")
    return version


def _python_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _fetch_constraints(source: str, dest: Path) -> None:
    if re.match(r"https?://", source):
        with urllib.request.urlopen(source, timeout=20) as response:
            dest.write_bytes(response.read())
    else:
        shutil.copyfile(source, dest)


def ensure_venv(cache: Path, airflow_version: str, python: str, constraints: str | None, reinstall: bool,
                log: Callable[[str], None]) -> dict[str, Any]:
    """The venv holding apache-airflow==airflow_version, installed if it is not there yet.
    Returns {"venv", "reused", "install_s", "constraints"}."""
    py = _python_version(python)
    venv = venv_dir(cache, airflow_version, py)
    stamp = venv / STAMP
    if stamp.is_file() and (venv / "bin" / "airflow").exists() and not reinstall:
        info = json.loads(stamp.read_text())
        return {"venv": str(venv), "reused": True, "install_s": 0.0, "constraints": info.get("constraints")}
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)         # an earlier install that did not finish, or --reinstall
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"installing apache-airflow=={airflow_version} into {venv} (once; a few minutes)")
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    source = constraints or constraints_url(airflow_version, py)
    pinned = venv / "constraints.txt"
    try:
        _fetch_constraints(source, pinned)
        used: str = source
    except (OSError, urllib.error.URLError) as e:
        if constraints:
            raise BenchError(f"cannot read the constraints file {constraints}: {e}") from None
        log(f"Airflow's constraints file could not be fetched ({source}: {e}); installing without it: pip "
            "resolves Airflow's own version ranges (pass --constraints FILE to pin)")
        used = f"none ({source} unreachable)"
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
               f"apache-airflow=={airflow_version}"]
    if pinned.exists():
        command += ["--constraint", str(pinned)]
    with open(venv / "install.log", "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = (venv / "install.log").read_text()[-2000:]
        raise BenchError(f"pip install apache-airflow=={airflow_version} failed (network?); {venv}/install.log:\n"
                         f"{tail}")
    stamp.write_text(json.dumps({"airflow_version": airflow_version, "python": py, "constraints": used,
                                 "installed": datetime.now().isoformat(timespec="seconds")}) + "\n")
    return {"venv": str(venv), "reused": False, "install_s": round(time.monotonic() - started, 1),
            "constraints": used}


# ---------------------------------------------------------------- Airflow, running


def airflow_env(home: Path, dags: Path, api_port: int, log_port: int) -> dict[str, str]:
    """Airflow's configuration for this run, as AIRFLOW__SECTION__KEY variables."""
    base = f"http://{LOOPBACK}:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "AIRFLOW__API__HOST": LOOPBACK,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_port),
        # Every client on this loopback-only, throw-away instance is an admin: no passwords.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        # Shared by the scheduler (which signs the tasks' tokens) and the api-server.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
    })
    return env


class AirflowInstance:
    """A running Airflow: db migrate, then scheduler, dag-processor and api-server."""

    COMPONENTS = ("scheduler", "dag-processor", "api-server")

    def __init__(self, venv: Path, dags: Path, log: Callable[[str], None]) -> None:
        self.venv, self.dags, self.log = venv, dags, log
        self._tmp = tempfile.TemporaryDirectory(prefix="raftflow-bench-airflow-")
        self.home = Path(self._tmp.name)
        api_port, log_port = free_ports(2)
        self.base = f"http://{LOOPBACK}:{api_port}"
        self.env = airflow_env(self.home, dags, api_port, log_port)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""

    def _airflow(self, *args: str) -> list[str]:
        return [str(self.venv / "bin" / "airflow"), *args]

    def start(self, timeout: float = 240.0) -> None:
        migrate = subprocess.run(self._airflow("db", "migrate"), env=self.env, capture_output=True, text=True)
        if migrate.returncode != 0:
            raise BenchError(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-2000:]}")
        for name in self.COMPONENTS:
            with open(self.home / f"{name}.log", "wb") as out:
                # Its own session (process group): stop() ends it with every child it forked.
                self.procs[name] = subprocess.Popen(self._airflow(name), env=self.env, stdout=out,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                health = self._request("GET", "/api/v2/monitor/health", auth=False)
                if all((health.get(c) or {}).get("status") == "healthy" for c in ("scheduler", "dag_processor")):
                    break
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"Airflow was not healthy within {timeout:.0f} s\n{self.log_tails()}")
            time.sleep(1.0)
        self.token = self._request("GET", "/auth/token", auth=False)["access_token"]
        for dag_id in (CHAIN_DAG, FANOUT_DAG):
            while True:
                self._check_alive()
                try:
                    if "dag_id" in self._request("GET", f"/api/v2/dags/{dag_id}"):
                        break
                except urllib.error.HTTPError as e:
                    if e.code != 404:
                        raise
                if time.monotonic() > deadline:
                    raise BenchError(f"Airflow had not parsed {dag_id} within {timeout:.0f} s\n{self.log_tails()}")
                time.sleep(0.5)
            self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def version(self) -> str:
        return str(self._request("GET", "/api/v2/version")["version"])

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise BenchError(f"airflow {name} exited with {proc.returncode}\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for name in self.COMPONENTS:
            path = self.home / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name}.log (last {len(tail)} lines)\n" + "\n".join(tail))
        return "\n".join(out)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def run_once(self, dag_id: str, timeout: float) -> tuple[float, list[dict[str, Any]]]:
        """Trigger dag_id, wait for its run to end; (trigger instant, task instance records)."""
        triggered = time.time()
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
        run_path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
        deadline = time.monotonic() + timeout
        while (state := self._request("GET", run_path)["state"]) not in ("success", "failed"):
            self._check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"Airflow run of {dag_id} did not end within {timeout:.0f} s (state {state})")
            time.sleep(0.5)
        records: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", f"{run_path}/taskInstances?limit=100&offset={len(records)}")
            records += page["task_instances"]
            if not page["task_instances"] or len(records) >= page["total_entries"]:
                break
        if state != "success":
            failed = [r["task_id"] for r in records if r.get("state") != "success"]
            raise BenchError(f"Airflow run of {dag_id} failed (tasks not successful: {failed[:10]})\n"
                             f"{self.log_tails()}")
        return triggered, records

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM each component's process group, SIGKILL what is left after `grace` s.
        A task's supervisor runs in a session of its own, outside its component's group:
        the components' descendants are listed first and killed by pid at the end."""
        descendants = _descendants({proc.pid for proc in self.procs.values()})
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)    # the group: LocalExecutor workers, log server
            proc.wait()
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()


def _descendants(roots: set[int]) -> list[int]:
    """Every live process below `roots` (from /proc's parent pids), whatever its session."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier}
        found += sorted(frontier)
    return found


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)    # start_new_session: the group's id is the leader's pid
    except ProcessLookupError:
        pass


def measure_airflow(instance: AirflowInstance, chain_runs: int, fanout_runs: int,
                    log: Callable[[str], None]) -> tuple[list[ChainRun], list[float], list[float]]:
    chains, walls, task_seconds = [], [], []
    for i in range(chain_runs):
        triggered, records = instance.run_once(CHAIN_DAG, timeout=300)
        chains.append(chain_run(spans_from_airflow(records), triggered))
        log(f"airflow chain {i + 1}/{chain_runs}: step median "
            f"{statistics.median(chains[-1].gaps) * 1000:.0f} ms, last end {chains[-1].to_last:.1f} s")
    for i in range(fanout_runs):
        triggered, records = instance.run_once(FANOUT_DAG, timeout=900)
        spans = spans_from_airflow(records)
        walls.append(fanout_wall(spans, triggered))
        task_seconds += [sp.end - sp.start for sp in spans]
        log(f"airflow fan-out {i + 1}/{fanout_runs}: {walls[-1]:.1f} s")
    return chains, walls, task_seconds


# ---------------------------------------------------------------- raftflow, running


def measure_raftflow(nodes: int, slots: int, chain_runs: int, fanout_runs: int,
                     log: Callable[[str], None]) -> tuple[list[ChainRun], list[float], list[float]]:
    from raftflow_cli.loader import load_paths

    from .bench import Bench
    from .bench_scale import _wait_run

    bench = Bench(nodes, quick=False, slots=slots)
    try:
        bench.client.submit(load_paths([str(DAGS)]))     # the Airflow-compat loader, as `dags submit`
        for dag_id in (CHAIN_DAG, FANOUT_DAG):
            bench.client.set_paused(dag_id, False)
        chains, walls, task_seconds = [], [], []
        for i in range(chain_runs):
            triggered = time.time()
            run = _wait_run(bench, bench.client.trigger(CHAIN_DAG)["run_id"], 300)
            chains.append(chain_run(spans_from_raftflow(run["tasks"]), triggered))
            log(f"raftflow chain {i + 1}/{chain_runs}: step median {statistics.median(chains[-1].gaps) * 1000:.1f} ms")
        for i in range(fanout_runs):
            triggered = time.time()
            run = _wait_run(bench, bench.client.trigger(FANOUT_DAG)["run_id"], 600)
            spans = spans_from_raftflow(run["tasks"])
            walls.append(fanout_wall(spans, triggered))
            task_seconds += [sp.end - sp.start for sp in spans]
            log(f"raftflow fan-out {i + 1}/{fanout_runs}: {walls[-1]:.2f} s")
        return chains, walls, task_seconds
    finally:
        bench.close()


# ---------------------------------------------------------------- the command


def parse_args(argv: list[str]) -> argparse.Namespace:
    def positive(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
        return value
    parser = argparse.ArgumentParser(prog="tools/bench airflow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 chain run and 1 fan-out run each (default: 3 and 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--chain-runs", type=positive, help="chain runs on each system")
    parser.add_argument("--fanout-runs", type=positive, help="fan-out runs on each system")
    parser.add_argument("--airflow-version", type=check_airflow_version, default=DEFAULT_AIRFLOW_VERSION,
                        help=f"the apache-airflow release to install and run (default {DEFAULT_AIRFLOW_VERSION})")
    parser.add_argument("--constraints", help="a constraints FILE or URL for pip (default: Airflow's published one)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the Airflow venv is made with")
    parser.add_argument("--cache-dir", type=Path, default=cache_root(),
                        help="holds airflow-venv/ (default ~/.cache/raftflow)")
    parser.add_argument("--reinstall", action="store_true", help="build the Airflow venv again")
    parser.add_argument("--nodes", type=positive, default=3, help="raftflow nodes (default 3)")
    parser.add_argument("--slots", type=positive, default=4, help="task slots per raftflow node (default 4)")
    args = parser.parse_args(argv)
    chain_default, fanout_default = RUNS["quick" if args.quick else "full"]
    args.chain_runs = args.chain_runs or chain_default
    args.fanout_runs = args.fanout_runs or fanout_default
    return args


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    log: Callable[[str], None] = lambda text: print(f"[bench airflow] {text}", file=sys.stderr, flush=True)  # noqa: E731
    venv = ensure_venv(args.cache_dir, args.airflow_version, args.python, args.constraints, args.reinstall, log)
    instance = AirflowInstance(Path(venv["venv"]), DAGS, log)
    load = {"airflow_start": _load_average()}
    try:
        log(f"starting Airflow (AIRFLOW_HOME {instance.home})")
        t0 = time.monotonic()
        instance.start()
        airflow_start_s = round(time.monotonic() - t0, 1)
        version = instance.version()
        a_chains, a_walls, a_tasks = measure_airflow(instance, args.chain_runs, args.fanout_runs, log)
    finally:
        instance.close()
    log(f"Airflow stopped; starting a {args.nodes}-node raftflow cluster")
    load["raftflow_start"] = _load_average()
    r_chains, r_walls, r_tasks = measure_raftflow(args.nodes, args.slots, args.chain_runs, args.fanout_runs, log)
    load["end"] = _load_average()
    airflow, raftflow = summarise(a_chains, a_walls, a_tasks), summarise(r_chains, r_walls, r_tasks)
    return {"scenario": "airflow", "date": datetime.now().date().isoformat(), "airflow_version": version,
            "sizes": {"chain": CHAIN_LENGTH, "fanout": f"1 -> {FANOUT_WIDTH} -> 1"},
            "airflow": airflow, "raftflow": raftflow, "ratios": ratios(airflow, raftflow),
            "setup": {"venv": venv["venv"], "venv_reused": venv["reused"], "venv_install_s": venv["install_s"],
                      "constraints": venv["constraints"], "airflow_parallelism": PARALLELISM,
                      "airflow_start_s": airflow_start_s, "raftflow_nodes": args.nodes,
                      "raftflow_slots": args.slots, "total_s": round(time.monotonic() - started, 1),
                      "load_average_1min": load}}


def _load_average() -> float:
    """The machine's 1-minute load average: on a shared machine, what else was running."""
    return round(os.getloadavg()[0], 2)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Stop Airflow on `kill` too, and on Ctrl-C even where SIGINT came in ignored (a
    # background job of a script): Python then installs no KeyboardInterrupt of its own.
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        result = run(args)
    except BenchError as e:
        print(f"tools/bench airflow: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tools/bench airflow: interrupted; Airflow and the cluster were stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    print(json.dumps(result, sort_keys=True) if args.json else render(result), flush=True)
    return 0
