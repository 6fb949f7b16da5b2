"""The worker with the bash kind's Airflow fields (#19): the exit code a skip reports,
`cwd` (templated; relative to the attempt's scratch folder, or absolute; missing: the
attempt fails with the reason) and `append_env` against the clean environment."""

from __future__ import annotations

import os
from pathlib import Path

from core_support import dag_dict, task
from raftflow.core import commands as c
from raftflow.core.spec import DagSpec
from raftflow.worker.worker import Assignment, AttemptSetup
from worker_support import make_worker

CONTEXT = {"ds": "2026-01-01"}


def run(tmp_path: Path, command: str, env: dict[str, str] | None = None, **bash: object) -> tuple[c.TaskFinished, str]:
    spec = DagSpec.from_dict(dag_dict(tasks=[task("t1", command=command, env=env or {}, **bash)])).task("t1")
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup(CONTEXT, None, spec))
    try:
        assert worker.accept(Assignment("r1", "t1", 1, "d", "bash", command, env or {}, "")) == (True, "")
        done = reports.wait_for(c.TaskFinished)
        assert isinstance(done, c.TaskFinished)
        return done, b"".join(store.read_log("r1", "t1", 1)).decode()
    finally:
        worker.shutdown()


def test_a_skip_exit_code_is_reported_as_it_is(tmp_path: Path) -> None:
    done, _ = run(tmp_path, "exit 99", skip_on_exit_code=[99])
    assert done.exit_code == 99, "apply decides skipped from the exit code and the spec"


def test_cwd_relative_absolute_templated_and_missing(tmp_path: Path) -> None:
    target = tmp_path / "there-2026-01-01"
    target.mkdir()
    done, log = run(tmp_path / "a", "pwd", cwd=str(tmp_path / "there-{{ ds }}"))
    assert (done.exit_code, log) == (0, f"{target}\n")
    done, log = run(tmp_path / "b", "pwd", cwd=".")
    assert done.exit_code == 0 and Path(log.strip()).parent == tmp_path / "b" / "work", log
    done, log = run(tmp_path / "c", "echo ran", cwd=str(tmp_path / "missing"))
    assert done.exit_code != 0 and "ran" not in log
    assert f"cwd '{tmp_path / 'missing'}' is not a directory" in log


def test_append_env_false_replaces_the_base_environment_and_never_leaks_the_nodes(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    monkeypatch.setenv("NODE_SECRET", "hunter2")
    show = 'echo "path=${PATH-unset} home=${HOME-unset} x=$X secret=${NODE_SECRET-unset} id=$RAFTFLOW_TASK_ID"'
    done, log = run(tmp_path / "a", show, env={"X": "1"}, append_env=False)
    assert done.exit_code == 0
    assert "home=unset x=1 secret=unset id=t1" in log, log
    assert f"path={os.environ['PATH']}" not in log, "only the task's env (bash's own default PATH)"
    done, log = run(tmp_path / "b", show, env={"X": "1"}, append_env=True)
    assert f"path={os.environ['PATH']} " in log and "x=1 secret=unset" in log and "home=unset" not in log, log
    done, log = run(tmp_path / "c", show, append_env=False)
    assert f"path={os.environ['PATH']} " in log and "secret=unset" in log, "no env: the base, as Airflow inherits"
