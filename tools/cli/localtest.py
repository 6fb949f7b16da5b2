"""`raftflow dags test DAG_FILE` and `raftflow tasks test DAG_FILE TASK_ID`: one run of a
DAG (or one task of it) on this machine, without a cluster (Airflow's commands of the
same names). The file is loaded as `dags submit` loads it (a child process); the run is
raftflow.localrun's: the node's core and worker in this process. Each task's log is
printed when the task ends, then a table of the tasks (or, with --json, all of it).

Exit status: 0 when the run succeeded (`tasks test`: the task succeeded or was
skipped), 1 when it failed, 2 for bad input (the file, the DAG, the task, --conf).
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from raftflow.config import ConfigError, load_connections
from raftflow.core.limits import parse_json
from raftflow.localrun import LocalRunError, LocalRunOutcome, TaskOutcome, run_locally, succeeded

from .loader import LoadError, inspect_file
from .main import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, emit_json, read_variables_file, table, terminal_width


def dags_test(args: argparse.Namespace) -> int:
    return _test(args, only_task="")


def tasks_test(args: argparse.Namespace) -> int:
    return _test(args, only_task=args.task_id)


def _test(args: argparse.Namespace, only_task: str) -> int:
    try:
        dags, dag_id = _load(Path(args.dag_file), args.dag, args.load_timeout)
        conf = _conf(args.conf)
        variables = read_variables_file(args.variables) if args.variables else None
        connections = load_connections(args.config) if args.config else ()
    except (LoadError, UsageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    printing = not args.json

    def task_done(task: TaskOutcome) -> None:
        if printing and (not only_task or task.task_id == only_task):
            _print_task(task)

    def started(run_id: str) -> None:
        if printing:
            what = f"task {only_task} of DAG {dag_id}" if only_task else f"DAG {dag_id}"
            print(f"running {what} on this machine, run {run_id} (no cluster; nothing is kept)", flush=True)

    signal.signal(signal.SIGTERM, _terminated)   # (as Ctrl-C: the attempts are stopped, the folder removed)
    try:
        outcome = run_locally(dags, dag_id, conf=conf, logical_date=args.logical_date or "", only_task=only_task,
                              variables=variables, connections=connections, on_started=started,
                              on_note=lambda text: print(f"note: {text}", file=sys.stderr),
                              on_task_done=task_done)
    except LocalRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print(f"{'terminated' if isinstance(e, Terminated) else 'interrupted'}: the running tasks were stopped",
              file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    ok = succeeded(outcome, only_task)
    if args.json:
        emit_json(_as_json(outcome, only_task))
    else:
        _print_summary(outcome, only_task)
    return EXIT_OK if ok else EXIT_FAILED


class Terminated(KeyboardInterrupt):
    """SIGTERM (a supervisor, `timeout`): ends the run as Ctrl-C does."""


def _terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _load(path: Path, dag_id: str | None, timeout: float) -> tuple[list[dict[str, str]], str]:
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give one DAG file")
    if not path.is_file():
        raise UsageError(f"{path}: no such file (give the DAG file, as to `raftflow dags submit`)")
    result = inspect_file(path, timeout)
    if not result.get("ok"):
        raise LoadError(result["error"])
    dags: list[dict[str, str]] = result["dags"]
    declared = [d["dag_id"] for d in (result.get("report") or {}).get("dags", [])] or \
        [parse_json(d["spec_json"], "spec")["dag_id"] for d in dags]
    if not declared:
        raise UsageError(f"{path}: defines no DAG (create one with `with DAG(...):`)")
    if dag_id is None:
        if len(declared) > 1:
            raise UsageError(f"{path} declares {len(declared)} DAGs ({', '.join(declared)}): choose one with --dag")
        dag_id = declared[0]
    elif dag_id not in declared:
        raise UsageError(f"{path} declares no DAG {dag_id!r} (it declares: {', '.join(declared)})")
    return dags, dag_id


def _conf(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        conf = parse_json(text, "--conf")
    except ValueError as e:
        raise UsageError(f"{e}; --conf takes a JSON object such as '{{\"key\": \"value\"}}'") from None
    if not isinstance(conf, dict):
        raise UsageError(f"--conf must be a JSON object such as '{{\"key\": \"value\"}}', got {type(conf).__name__}")
    return conf


def _seconds(task: TaskOutcome) -> str:
    if task.started_at is None or task.ended_at is None:
        return "-"
    return f"{task.ended_at - task.started_at:.2f}s"


def _why(task: TaskOutcome) -> str:
    if task.reason:
        return task.reason
    if task.state == "skipped" and task.exit_code:
        return "the task skipped itself"
    return f"exit {task.exit_code}" if task.exit_code else "-"


def _print_task(task: TaskOutcome) -> None:
    if task.attempt == 0:   # (never ran: skipped or upstream_failed by its trigger rule, or a branch)
        print(f"--- {task.task_id}: {task.state}" + (f" ({task.reason})" if task.reason else ""), flush=True)
        return
    print(f"--- {task.task_id}: attempt {task.attempt} log", flush=True)
    if task.log:
        print(task.log, end="" if task.log.endswith("\n") else "\n")
    ending = f"--- {task.task_id}: {task.state} after {_seconds(task)}"
    if _why(task) != "-":
        ending += f": {_why(task)}"
    if task.result is not None:
        ending += f" (returned {_short(task.result)})"
    print(ending, flush=True)


def _short(value: Any, width: int = 80) -> str:
    import json

    text = json.dumps(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _print_summary(outcome: LocalRunOutcome, only_task: str) -> None:
    tasks = [t for t in outcome.tasks if not only_task or t.task_id == only_task]
    rows = [[t.task_id, t.state, t.attempt or "-", _seconds(t), _why(t)] for t in tasks]
    print()
    print(table(rows, ["TASK", "STATE", "ATTEMPT", "TOOK", "REASON"], wrap_last=terminal_width()))
    if only_task:
        print(f"task {only_task}: {tasks[0].state} (run {outcome.run_id})")
    else:
        print(f"run {outcome.run_id}: {outcome.state}")


def _as_json(outcome: LocalRunOutcome, only_task: str) -> dict[str, Any]:
    def when(epoch: float | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()

    return {"run_id": outcome.run_id, "dag_id": outcome.dag_id, "logical_date": outcome.logical_date,
            "state": outcome.state, **({"task_id": only_task} if only_task else {}),
            "tasks": [{"task_id": t.task_id, "state": t.state, "attempt": t.attempt, "reason": t.reason,
                       "exit_code": t.exit_code, "result": t.result, "xcoms": t.xcoms, "log": t.log,
                       "started_at": when(t.started_at), "ended_at": when(t.ended_at)}
                      for t in outcome.tasks if not only_task or t.task_id == only_task]}
