"""The worker on its own (real bash, real local store, no network): it runs an attempt
only once its start is committed, reports results, and fences on a lapsed lease."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from waiting import wait_for

from raftflow.core import commands as c
from raftflow.core.spec import TaskSpec
from raftflow.store.local import LocalStore
from raftflow.worker import worker as worker_module
from raftflow.worker.worker import Assignment, AttemptSetup, Worker
from worker_support import Reports, make_worker


def assignment(command: str, marker: Path | None = None) -> Assignment:
    return Assignment("r1", "t1", 1, "d", "bash", command, {}, "2026-01-01T00:00:00+00:00")


def test_a_current_attempt_runs_and_its_result_is_reported(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(assignment("echo hello; exit 3")) == (True, "")
    done = reports.wait_for(c.TaskFinished)
    assert (done.exit_code, done.attempt, done.node) == (3, 1, "n1")
    assert isinstance(reports.commands[0], c.TaskStarted), "the start is committed before the result"
    assert b"".join(store.read_log("r1", "t1", 1)) == b"hello\n"
    worker.shutdown()


def test_a_superseded_dispatch_never_starts(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=False)
    marker = tmp_path / "ran"
    assert worker.accept(assignment(f"touch {marker}"))[0]
    wait_idle(worker, timeout=5)
    assert not marker.exists()
    assert [type(x) for x in reports.commands] == [c.TaskStarted], "only the refused start claim"
    worker.shutdown()


def test_a_lapsed_lease_kills_the_attempt_and_reports_it_lost(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, lease=0.5)
    assert worker.accept(assignment("sleep 30"))[0]
    lost = reports.wait_for(c.LoseAttempt)
    assert lost.attempt == 1 and "lost its lease" in lost.reason
    assert not any(isinstance(x, c.TaskFinished) for x in reports.commands)
    assert b"its lease lapsed" in b"".join(store.read_log("r1", "t1", 1))
    ok, reason = worker.accept(Assignment("r1", "t2", 1, "d", "bash", "true", {}, ""))
    assert not ok and "no valid lease" in reason
    worker.shutdown()


def test_the_lease_watchdog_sleeps_while_idle_and_fences_at_the_deadline(tmp_path):
    """No attempt: nothing to fence, the watchdog waits to be woken (no idle wake-ups).
    An attempt that arrives after a long idle spell is fenced right at the deadline, not
    at the next poll."""
    worker, reports, store = make_worker(tmp_path, current=True, lease=1.5)
    assert worker._lease_watch_delay(time.monotonic()) is None
    time.sleep(0.3)        # idle: the watchdog is asleep with no timeout
    assert worker.accept(assignment("sleep 30"))[0]
    deadline = worker.lease.valid_until()
    now = time.monotonic()   # (one reading for both sides: a busy machine may pause between two)
    delay = worker._lease_watch_delay(now)
    assert delay is not None and 0 < delay <= deadline - now + 2 * worker_module.LEASE_WATCH_SLACK
    reports.wait_for(c.LoseAttempt)
    assert worker.lease.lapses == 1
    assert time.monotonic() - deadline < 1.0, "fenced soon after the deadline, not at some later poll"
    worker.shutdown()


def test_a_renewed_lease_keeps_the_attempt_running_past_its_first_deadline(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, lease=0.4)
    assert worker.accept(assignment("sleep 1.2; echo done"))[0]
    first_deadline = worker.lease.valid_until()
    while not any(isinstance(x, c.TaskFinished) for x in reports.commands):
        worker.renew_lease(time.monotonic())     # a leader with quorum acknowledges every 0.1 s
        time.sleep(0.1)
        assert time.monotonic() < first_deadline + 10, "the attempt never finished"
    assert time.monotonic() > first_deadline + 0.5
    assert not any(isinstance(x, c.LoseAttempt) for x in reports.commands)
    assert worker.lease.lapses == 0
    worker.shutdown()


def test_a_start_claim_that_commits_after_the_lease_lapsed_never_starts(tmp_path):
    """The claim committed, but the lease lapsed meanwhile: the leader may already have
    given the task away, so the attempt must not start; it is reported lost instead."""
    worker, reports, store = make_worker(tmp_path, current=True, lease=0.3, claim_delay=0.8)
    marker = tmp_path / "ran"
    assert worker.accept(assignment(f"touch {marker}"))[0]
    lost = reports.wait_for(c.LoseAttempt)
    assert "lease lapsed" in lost.reason
    assert not marker.exists()
    assert not any(isinstance(x, c.TaskFinished) for x in reports.commands)
    worker.shutdown()


def test_a_real_time_signal_is_reported_not_a_crash(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(assignment("kill -s 40 $$"))[0]
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code == 168 and "signal 40" in done.reason
    wait_idle(worker, timeout=5)
    worker.shutdown()


def wait_idle(worker: Worker, timeout: float = 10.0) -> None:
    wait_for(lambda: not worker.running(), timeout, "the worker to have no attempt running", interval=0.01)


def log_text(store: LocalStore) -> str:
    return b"".join(store.read_log("r1", "t1", 1)).decode()


CONTEXT = {"ds": "2026-01-01", "params": {"table": "orders"}, "run_id": "r1", "results": {"up": {"rows": 7}}}


def test_command_and_env_are_rendered_with_the_attempt_context(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup(CONTEXT))
    a = Assignment("r1", "t1", 1, "d", "bash", 'echo "{{ ds }} {{ params.table }} $WHERE {{ results.up.rows }}"',
                   {"WHERE": "/data/{{ ds }}"}, "")
    assert worker.accept(a)[0]
    assert reports.wait_for(c.TaskFinished).exit_code == 0
    assert log_text(store) == "2026-01-01 orders /data/2026-01-01 7\n"
    worker.shutdown()


def test_a_template_error_fails_the_attempt_with_the_message_and_runs_nothing(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup(CONTEXT))
    marker = tmp_path / "ran"
    assert worker.accept(assignment(f"touch {marker}; echo {{{{ params.tabel }}}}"))[0]
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code == 1 and "cannot render the command" in done.reason and "tabel" in done.reason
    assert "tabel" in log_text(store) and not marker.exists()
    worker.shutdown()


def test_execution_timeout_kills_the_whole_process_group_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "KILL_GRACE", 1.0)
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup({}, execution_timeout=0.5))
    pids = tmp_path / "pids"
    # A child that ignores SIGTERM, and a grandchild: both must be gone afterwards.
    assert worker.accept(assignment(f"(trap '' TERM; sleep 60) & sleep 60 & echo $! >> {pids}; "
                                    f"jobs -p >> {pids}; wait"))[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    assert done.exit_code != 0 and "execution_timeout of 0.5s reached" in done.reason
    assert "execution_timeout of 0.5s reached: sending SIGTERM to the process group" in log_text(store)
    leftover = []
    for pid in {int(p) for p in pids.read_text().split()}:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            leftover.append(pid)
    assert leftover == [], "processes of the attempt survived the timeout"
    wait_idle(worker)
    worker.shutdown()


def test_a_published_result_is_reported_and_a_bad_one_fails_the_attempt(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(assignment('echo \'{"rows": 3, "ok": true}\' > "$RAFTFLOW_RESULT_FILE"'))[0]
    assert reports.wait_for(c.TaskFinished).result == '{"rows": 3, "ok": true}'
    wait_idle(worker)
    reports.commands.clear()
    assert worker.accept(Assignment("r1", "t1", 2, "d", "bash", 'echo "not json" > "$RAFTFLOW_RESULT_FILE"', {}, ""))[0]
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code == 1 and done.result == "" and "is not JSON" in done.reason
    worker.shutdown()


def test_cancel_stops_the_attempts_of_a_run(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(assignment("echo started; sleep 60"))[0]
    deadline = time.monotonic() + 10
    while "started" not in log_text(store):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert worker.cancel("other-run", "run cancelled") == 0
    assert worker.cancel("r1", "an earlier attempt was cleared", {("t1", 0)}) == 0, "another attempt: untouched"
    assert worker.cancel("r1", "run r1 cancelled by the user", {("t1", 1)}) == 1
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code != 0 and "run r1 cancelled by the user" in done.reason
    assert "run r1 cancelled by the user: sending SIGTERM" in log_text(store)
    worker.shutdown()


PY_TASKS = '''
def count(ds, params, rows=1):
    print("counting for", ds, params["table"])
    return {"rows": rows * 2, "ds": ds}

def everything(**context):
    print(sorted(context)[:3], context["logical_date"].year)

def broken():
    raise ValueError("the input file is empty")

def opaque():
    return object()
'''


def python_assignment(attempt: int = 1) -> Assignment:
    return Assignment("r1", "t1", attempt, "d", "python", "", {}, "")


def python_task(python_callable: str, op_kwargs: dict | None = None) -> TaskSpec:
    return TaskSpec("t1", "python", "", python_callable=python_callable, op_kwargs=op_kwargs or {})


def run_attempts(tmp_path: Path, setups: dict[int, AttemptSetup],
                 assignment: Callable[[int], Assignment] = lambda n: python_assignment(n),
                 ) -> dict[int, tuple[c.TaskFinished, str]]:
    """Run attempt n of r1/t1 with setups[n], one after another, on one worker: each one's
    TaskFinished and log."""
    reports = Reports(True)
    store = LocalStore(tmp_path / "store")
    worker = Worker("n1", 2, store, tmp_path / "work", propose=reports.propose, lease_duration=30.0,
                    setup=lambda a: setups[a.attempt])
    worker.ready.set()
    outcomes = {}
    try:
        for attempt in setups:
            reports.commands.clear()
            assert worker.accept(assignment(attempt))[0]
            outcomes[attempt] = (reports.wait_for(c.TaskFinished),
                                 b"".join(store.read_log("r1", "t1", attempt)).decode())
            wait_idle(worker)
    finally:
        worker.shutdown()
    return outcomes


def test_a_python_task_calls_its_function_with_the_context_it_asks_for(tmp_path, monkeypatch):
    from datetime import datetime, timezone

    (tmp_path / "mytasks.py").write_text(PY_TASKS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    context = {"ds": "2026-01-01", "params": {"table": "orders"}, "run_id": "r1",
               "logical_date": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    setups = {1: AttemptSetup(context, None, python_task("mytasks:count", {"rows": 21})),
              2: AttemptSetup(context, None, python_task("mytasks:everything")),
              3: AttemptSetup(context, None, python_task("mytasks:broken")),
              4: AttemptSetup(context, None, python_task("mytasks:opaque")),
              5: AttemptSetup(context, None, python_task("nosuchmodule:f"))}
    outcomes = run_attempts(tmp_path, setups)
    done, log = outcomes[1]
    assert done.exit_code == 0 and json.loads(done.result) == {"rows": 42, "ds": "2026-01-01"}
    assert log == "counting for 2026-01-01 orders\n"
    done, log = outcomes[2]
    assert (done.exit_code, done.result, log) == (0, "", "['ds', 'logical_date', 'params'] 2026\n"), \
        "**kwargs gets the whole context, dates as datetimes"
    done, log = outcomes[3]
    assert done.exit_code == 1 and "ValueError: the input file is empty" in log and "Traceback" in log
    done, log = outcomes[4]
    assert done.exit_code == 1 and "returned a value that is not JSON" in log
    done, log = outcomes[5]
    assert done.exit_code == 1 and "cannot import nosuchmodule:f on this node" in log


PY_ENDINGS = '''
import sys
from raftflow import FailTask, SkipTask

class AirflowFailException(Exception):      # (as a module written for Airflow has it)
    pass

class AirflowSensorTimeout(AirflowFailException):
    pass

def skip():
    raise SkipTask("no new files today")

def fail_now():
    raise FailTask("the credentials are wrong")

def sensor_timeout():
    raise AirflowSensorTimeout("waited an hour")

def exits_99():
    sys.exit(99)

def exits_0():
    sys.exit(0)
'''


def test_a_python_callable_ends_its_task_skipped_or_failed_by_raising(tmp_path, monkeypatch):
    """SkipTask / FailTask (or Airflow's exceptions, by class name, subclasses too) give the
    runner's own exit codes; a callable's sys.exit() never does."""
    from raftflow.worker.pyrunner import EXIT_FAILED_NO_RETRY, EXIT_SKIPPED

    (tmp_path / "endings.py").write_text(PY_ENDINGS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    names = ["skip", "fail_now", "sensor_timeout", "exits_99", "exits_0"]
    setups = {i + 1: AttemptSetup({}, None, python_task(f"endings:{name}")) for i, name in enumerate(names)}
    outcomes = {names[n - 1]: (done.exit_code, log) for n, (done, log) in run_attempts(tmp_path, setups).items()}
    assert outcomes["skip"] == (EXIT_SKIPPED, "raftflow: endings:skip raised SkipTask: the task is skipped "
                                              "(no new files today)\n")
    code, log = outcomes["fail_now"]
    assert code == EXIT_FAILED_NO_RETRY and "FailTask: the credentials are wrong" in log
    code, log = outcomes["sensor_timeout"]
    assert code == EXIT_FAILED_NO_RETRY and "raised AirflowSensorTimeout: the task fails without retry" in log
    assert outcomes["exits_99"] == (1, "raftflow: endings:exits_99 called sys.exit(99)\n")
    assert outcomes["exits_0"][0] == 0


DAG_FILE_SOURCE = '''
from raftflow import DAG, PythonTask
print("the DAG file ran")

def rows(ds, limit):
    print("counting", limit, "rows for", ds)
    return {"rows": limit}

with DAG("d"):
    PythonTask("t1", python_callable=rows, op_kwargs={"limit": 3})
    PythonTask("lambda", python_callable=lambda: 1)
'''


def test_a_python_callable_of_the_dag_file_is_loaded_from_the_runs_dag_version(tmp_path):
    """The task's process runs the DAG file (its top-level code too, as Airflow's do) and
    calls the function the file gives the task; a file that no longer declares the task,
    or fails, fails the attempt saying so."""
    cases = {1: ("__dag_file__:rows", DAG_FILE_SOURCE),
             2: ("__dag_file__:rows", DAG_FILE_SOURCE.replace('"t1"', '"t2"')),
             3: ("__dag_file__:rows", "raise RuntimeError('no network here')\n"),
             4: ("__dag_file__:rows", "import sys\nsys.exit(99)\n")}
    setups = {n: AttemptSetup({"ds": "2026-01-01"}, None, python_task(name, {"limit": 3}), dag_source=source,
                              dag_filename="dags/infile.py") for n, (name, source) in cases.items()}
    outcomes = run_attempts(tmp_path, setups)
    done, log = outcomes[1]
    assert done.exit_code == 0 and json.loads(done.result) == {"rows": 3}
    assert log == "the DAG file ran\ncounting 3 rows for 2026-01-01\n"
    done, log = outcomes[2]
    assert done.exit_code == 1 and log.endswith("raftflow: the DAG file dags/infile.py no longer declares python "
                                                "task 't1' in DAG 'd'\n")
    done, log = outcomes[3]
    assert done.exit_code == 1 and 'File "dags/infile.py", line 1' in log
    assert log.endswith("raftflow: loading the DAG file dags/infile.py failed: RuntimeError: no network here\n")
    done, log = outcomes[4]
    assert done.exit_code == 1, "a DAG file's sys.exit(99) is a failure, not the runner's 'skipped'"


def test_a_python_callable_pushes_xcoms_that_the_result_carries(tmp_path, monkeypatch):
    (tmp_path / "pushers.py").write_text(
        "def push(ti):\n    ti.xcom_push('order_data', {'1001': 3})\n    ti.xcom_push('rows', 2)\n    return 'ok'\n"
        "def fails(ti):\n    ti.xcom_push('half', 1)\n    raise ValueError('boom')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    context = {"ti": {"try_number": 1, "task_id": "t1", "dag_id": "d", "run_id": "r1", "map_index": -1}}
    setups = {1: AttemptSetup(context, None, python_task("pushers:push")),
              2: AttemptSetup(context, None, python_task("pushers:fails"))}
    done = {n: finished for n, (finished, _log) in run_attempts(tmp_path, setups).items()}
    assert (done[1].exit_code, done[1].result) == (0, '"ok"')
    assert json.loads(done[1].xcoms) == {"order_data": {"1001": 3}, "rows": 2}
    assert done[2].exit_code == 1 and done[2].xcoms == "", "a failed attempt commits no XCom"


AIRFLOW_VARIABLES_DAG = '''
from airflow.sdk import DAG, Variable, task

LIMIT = Variable.get("limit", default_var="1")   # (top-level code runs again in the task's process)

with DAG("d", schedule=None):
    @task
    def t1():
        seen = int(Variable.get("seen", default_var=0)) + 1
        Variable.set("seen", seen)
        Variable.set("state", {"limit": LIMIT, "seen": seen}, serialize_json=True)
        return Variable.get("state", deserialize_json=True)

    t1()
'''

FAILING_AFTER_SET_DAG = '''
from airflow.sdk import DAG, Variable, task

with DAG("d", schedule=None):
    @task
    def t1():
        Variable.set("half_done", "yes")
        raise ValueError("fails after setting a variable")

    t1()
'''


def test_a_python_callable_reads_and_sets_variables_committed_with_its_outcome(tmp_path):
    """Airflow's Variable in the DAG file's callables (and at its top level, in the task's
    process): reads see the attempt's Variables, sets and their values go to the report,
    even from a callable that then failed."""
    context = {"var": {"value": {"limit": "5", "seen": "41"}, "json": {}}}
    setups = {1: AttemptSetup(context, None, python_task("__dag_file__:t1"), dag_source=AIRFLOW_VARIABLES_DAG,
                              dag_filename="dags/vars.py")}
    done, log = run_attempts(tmp_path, setups)[1]
    assert done.exit_code == 0, log
    assert json.loads(done.result) == {"limit": "5", "seen": 42}
    assert json.loads(done.variables) == {"seen": "42", "state": '{\n  "limit": "5",\n  "seen": 42\n}'}
    setups = {1: AttemptSetup(context, None, python_task("__dag_file__:t1"), dag_source=FAILING_AFTER_SET_DAG,
                              dag_filename="dags/vars.py")}
    done, log = run_attempts(tmp_path / "again", setups)[1]
    assert done.exit_code == 1 and "fails after setting a variable" in log
    assert json.loads(done.variables) == {"half_done": "yes"}


def test_a_bash_task_with_push_last_line_publishes_its_last_line_unless_it_wrote_a_result(tmp_path):
    spec = TaskSpec("t1", "bash", "", args={"push_last_line": True})
    commands = {1: "echo first; echo 'the last line'", 2: "echo x; echo '[1]' > $RAFTFLOW_RESULT_FILE", 3: "true",
                4: "echo nope; exit 3",
                5: "python3 -c \"print('{\\\"a\\\":' + '[' * 100000)\" > xcoms.json"}   # (deep: fails, never crashes)
    setups = {n: AttemptSetup({}, None, spec) for n in commands}
    done = {n: finished for n, (finished, _log) in run_attempts(
        tmp_path, setups, lambda n: Assignment("r1", "t1", n, "d", "bash", commands[n], {}, "")).items()}
    assert [(d.exit_code, d.result) for d in done.values()] == [(0, '"the last line"'), (0, "[1]"), (0, ""),
                                                                 (3, ""), (1, "")]
    assert "the pushed XComs are not JSON" in done[5].reason and "nested more than" in done[5].reason


def test_what_a_command_template_pushes_is_committed_with_the_result(tmp_path):
    context = {"ti": {"try_number": 1, "task_id": "t1", "dag_id": "d", "run_id": "r1", "map_index": -1}}
    setups = {1: AttemptSetup(context, None, TaskSpec("t1", "bash", ""))}
    command = "echo 'pushed {{ ti.xcom_push(key=\"manual\", value=\"v\") }}'"
    done, _log = run_attempts(tmp_path, setups, lambda n: Assignment("r1", "t1", n, "d", "bash", command, {}, ""))[1]
    assert done.exit_code == 0 and json.loads(done.xcoms) == {"manual": "v"}


# ---------------------------------------------------------------- bounds (issue 13)
def test_a_log_is_cut_at_the_limit_and_says_so_while_the_task_runs_on(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, log_limit=1000)
    assert worker.accept(assignment("head -c 300000 /dev/zero | tr '\\0' a; echo; echo the-end; exit 4"))[0]
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code == 4, "the task is not disturbed by the cut: its output is still read"
    assert done.log_tail.endswith("the-end\n"), "the tail is the output's, past the cut"
    text = log_text(store)
    assert text.startswith("a" * 1000 + "\nraftflow: the log is cut here")
    assert "task_log_limit of 1000 bytes" in text and len(text) < 1300 and "the-end" not in text
    worker.shutdown()


def test_the_store_caps_each_attempt_but_not_raftflow_notes(tmp_path):
    store = LocalStore(tmp_path / "store", log_limit=10)
    assert store.append_log("r1", "t1", 1, b"12345") is True
    assert store.append_log("r1", "t1", 1, b"67890") is True, "exactly at the limit: nothing cut yet"
    assert store.append_log("r1", "t1", 1, b"x") is False
    assert store.append_log("r1", "t1", 1, b"more") is False
    store.append_note("r1", "t1", 1, b"raftflow: stopped\n")
    assert store.append_log("r1", "t1", 2, b"a" * 15) is False, "each attempt has its own cap"
    first = b"".join(store.read_log("r1", "t1", 1))
    assert first.startswith(b"1234567890\nraftflow: the log is cut here") and first.endswith(b"raftflow: stopped\n")
    assert b"x" not in first.split(b"\n", 1)[0] and b"more" not in first
    assert b"".join(store.read_log("r1", "t1", 2)).startswith(b"a" * 10 + b"\nraftflow: the log is cut here")
    store.close()


def test_a_fifo_or_symlink_as_result_file_fails_the_attempt_without_hanging_the_worker(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(assignment('rm -f "$RAFTFLOW_RESULT_FILE"; mkfifo "$RAFTFLOW_RESULT_FILE"'))[0]
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code == 1 and "is not a regular file" in done.reason
    wait_idle(worker)
    target = tmp_path / "elsewhere.json"
    target.write_text('{"secret": 1}')
    reports.commands.clear()
    assert worker.accept(Assignment("r1", "t1", 2, "d", "bash", f'ln -sf {target} "$RAFTFLOW_RESULT_FILE"', {}, ""))[0]
    done = reports.wait_for(c.TaskFinished)
    assert done.exit_code == 1 and done.result == "" and "is a symbolic link" in done.reason
    worker.shutdown()


def test_a_result_or_reason_file_is_read_only_up_to_its_limit(tmp_path):
    import tracemalloc

    from raftflow.core.model import RESULT_LIMIT

    big = tmp_path / "result.json"
    big.write_bytes(b"[" + b"1," * (5 * 1024 * 1024) + b"1]")
    size = big.stat().st_size
    tracemalloc.start()
    try:
        published, problem = worker_module._read_result(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"reading a {size}-byte file took {peak} bytes"
    big.write_bytes(b"[" + b"1," * (5 * 1024 * 1024) + b"1]")
    told = worker_module._read_reason(big)
    assert (published, problem) == ("", f"the result in $RAFTFLOW_RESULT_FILE is {size} bytes; the limit is "
                                        f"{RESULT_LIMIT}")
    assert told == "[" + "1," * 499 + "1" and len(told) == 1000
    fifo = tmp_path / "reason"
    os.mkfifo(fifo)
    assert worker_module._read_reason(fifo) == "", "a FIFO with no writer neither blocks nor counts"


def test_a_setsid_child_holding_stdout_does_not_keep_a_timed_out_attempt_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "KILL_GRACE", 1.0)
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup({}, execution_timeout=0.5))
    escaped = tmp_path / "escaped"
    assert worker.accept(assignment(f"setsid sh -c 'echo $$ > {escaped}; exec sleep 30' & echo started; sleep 60"))[0]
    began = time.monotonic()
    try:
        done = reports.wait_for(c.TaskFinished, timeout=15)
        took = time.monotonic() - began
        assert "execution_timeout of 0.5s reached" in done.reason
        assert took < 5, f"the attempt outlived its timeout by {took:.1f}s"
        text = log_text(store)
        assert text.startswith("started\n") and "still holds the output open" in text
        wait_idle(worker)
    finally:
        if escaped.exists():
            os.kill(int(escaped.read_text()), 9)
        worker.shutdown()


def test_a_python_task_gets_a_context_of_any_size(tmp_path, monkeypatch):
    (tmp_path / "bigtasks.py").write_text("def measure(params, blob):\n"
                                          "    return {'conf': len(params['blob']), 'kwarg': len(blob)}\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    context = {"params": {"blob": "x" * 3_500_000}}
    worker, reports, store = make_worker(
        tmp_path, current=True, setup=AttemptSetup(context, None, python_task("bigtasks:measure",
                                                                              {"blob": "y" * 300_000})))
    assert worker.accept(python_assignment())[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    assert (done.exit_code, json.loads(done.result or "null")) == (0, {"conf": 3_500_000, "kwarg": 300_000}), \
        (done.reason, log_text(store))
    wait_idle(worker)
    assert list((tmp_path / "work").iterdir()) == [], "the attempt's directory is removed"
    worker.shutdown()


def test_a_template_that_allocates_without_bound_fails_outside_the_node(tmp_path):
    import resource

    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup(CONTEXT))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    marker = tmp_path / "ran"
    assert worker.accept(assignment(f"touch {marker}; echo {{{{ 'a' * 700000000 }}}}"))[0]
    done = reports.wait_for(c.TaskFinished, timeout=30)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    assert done.exit_code == 1 and "cannot render the command" in done.reason and not marker.exists()
    assert grew < 200 * 1024 * 1024, f"the node's process grew by {grew} bytes rendering a template"
    worker.shutdown()


NESTED = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_a_slow_template_is_stopped_by_execution_timeout(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup(CONTEXT, execution_timeout=1.0))
    began = time.monotonic()
    assert worker.accept(assignment(f"echo {NESTED}"))[0]
    done = reports.wait_for(c.TaskFinished, timeout=15)
    assert time.monotonic() - began < 5
    assert done.exit_code == 1 and "execution_timeout of 1s reached while rendering" in done.reason
    wait_idle(worker, timeout=2)
    worker.shutdown()


def test_a_slow_template_is_stopped_by_cancel_and_by_its_cpu_limit(tmp_path):
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup(CONTEXT))
    assert worker.accept(assignment(f"echo {NESTED}"))[0]
    reports.wait_for(c.TaskStarted)
    deadline = time.monotonic() + 10
    while worker.cancel("r1", "run r1 cancelled by the user", {("t1", 1)}) == 0:   # once the attempt is known
        assert time.monotonic() < deadline
        time.sleep(0.01)
    lost = reports.wait_for(c.LoseAttempt, timeout=5)
    assert "stopped before it started: run r1 cancelled by the user" in lost.reason
    wait_idle(worker, timeout=2)
    reports.commands.clear()
    worker.renderers.cpu_seconds = 1
    began = time.monotonic()
    assert worker.accept(Assignment("r1", "t1", 2, "d", "bash", f"echo {NESTED}", {}, ""))[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    assert done.exit_code == 1 and "more than the renderer's CPU limit" in done.reason
    assert time.monotonic() - began < 10
    worker.shutdown()


def test_attempt_directories_of_a_previous_process_are_removed_at_start(tmp_path):
    leftover = tmp_path / "work" / "tmpabc"
    leftover.mkdir(parents=True)
    (leftover / "python-context.json").write_text("{}")
    worker, reports, store = make_worker(tmp_path, current=True)
    assert list((tmp_path / "work").iterdir()) == []
    worker.shutdown()


def test_the_render_pool_reuses_a_renderer_retires_a_failed_one_and_refuses_once_closed(tmp_path):
    import pytest

    from raftflow.worker.render import RenderError
    from raftflow.worker.renderer import RenderInterrupted, RenderPool

    pool = RenderPool(tmp_path, dict(os.environ))
    pool.prestart()
    first = pool._idle[0].process.pid
    assert pool.render([("command", "echo {{ ds }}"), ("env value A", "plain")], CONTEXT, None, lambda: False) == \
        ["echo 2026-01-01", "plain"]
    assert [r.process.pid for r in pool._idle] == [first], "the pre-started renderer answered and was kept"
    with pytest.raises(RenderError, match="cannot render the command: UndefinedError"):
        pool.render([("command", "{{ nope }}")], CONTEXT, None, lambda: False)
    assert pool._idle == [], "a renderer that failed is not reused"
    pool.close()
    assert pool.render([("command", "true")], CONTEXT, None, lambda: False) == ["true"], "no template, no renderer"
    with pytest.raises(RenderInterrupted):
        pool.render([("command", "{{ ds }}")], CONTEXT, None, lambda: False)


def test_only_a_python_task_reports_variable_changes(tmp_path):
    """A bash task's file of the same name is its own business: the cluster's Variables are
    changed only through a python callable's Variable.set."""
    from raftflow.worker.taskvars import VARIABLES_FILE

    worker, reports, _store = make_worker(tmp_path, current=True)
    try:
        assert worker.accept(assignment(f"""echo '{{"api_key": "planted"}}' > {VARIABLES_FILE}"""))[0]
        done = reports.wait_for(c.TaskFinished)
    finally:
        worker.shutdown()
    assert (done.exit_code, done.variables) == (0, "")
