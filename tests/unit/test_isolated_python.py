"""Python callables in their own interpreter (worker/isolated.py): a virtual environment
built with pip from the package index for the task's requirements (once, under a lock,
then reused), or a Python the node has; run by `dags test`'s local run (real task
processes, real pip). Needs the package index, as the nodes do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raftflow.core.spec import DagSpec, SpecError
from raftflow.localrun import run_locally
from raftflow.worker.isolated import IsolationError, function_source
from raftflow_cli.loader import load_file

AIRFLOW = '''
import sys
import pendulum
from airflow.sdk import DAG, task
from airflow.exceptions import AirflowSkipException
from airflow.providers.standard.operators.python import ExternalPythonOperator, PythonVirtualenvOperator


def count(rows, ds=None):
    import sys
    import six
    print("six", six.__version__, "isolated:", sys.prefix != sys.base_prefix, "for", ds)
    return {"rows": rows * 2, "six": six.__version__}


def interpreter(name):
    import sys
    return f"{name} on {sys.version_info.major}.{sys.version_info.minor}"


with DAG("venvs", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    @task.virtualenv(requirements=["six==1.16.0"], system_site_packages=False)
    def plus_one(n):
        import six
        return n + 1

    @task.external_python(python=sys.executable)
    def times_ten(value):
        return value * 10

    @task.virtualenv(requirements=["six==1.16.0"], system_site_packages=False)
    def skips():
        class AirflowSkipException(Exception):
            pass
        raise AirflowSkipException("nothing today")

    @task.virtualenv(requirements=["no-such-package-for-raftflow-tests==9.9"], system_site_packages=False)
    def never():
        return 1

    PythonVirtualenvOperator(task_id="counted", python_callable=count, requirements=["six==1.16.0"],
                             system_site_packages=False, op_kwargs={"rows": 21})
    ExternalPythonOperator(task_id="external", python=sys.executable, python_callable=interpreter, op_args=["x"])
    times_ten(plus_one(1))
    skips()
    never()
'''


def test_callables_run_in_their_virtualenv_or_python_built_once_and_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "venvs.py"
    path.write_text(AIRFLOW)
    outcome = run_locally(load_file(path), "venvs")
    by_id = {t.task_id: t for t in outcome.tasks}
    states = {t: o.state for t, o in by_id.items()}
    assert states == {"plus_one": "success", "times_ten": "success", "skips": "skipped", "never": "failed",
                      "counted": "success", "external": "success"}, {t: o.log for t, o in by_id.items()}
    assert by_id["counted"].result == {"rows": 42, "six": "1.16.0"}
    assert "six 1.16.0 isolated: True for " in by_id["counted"].log
    assert (by_id["plus_one"].result, by_id["times_ten"].result) == (2, 20)
    assert by_id["external"].result == f"x on {sys.version_info.major}.{sys.version_info.minor}"
    assert "No matching distribution found for no-such-package-for-raftflow-tests==9.9" in by_id["never"].reason
    assert by_id["never"].reason.startswith("pip install failed (exit 1)")
    same = [by_id[t].log for t in ("plus_one", "skips", "counted")]
    assert sum(log.count("raftflow: building virtual environment") for log in same) == 1, same
    assert sum(log.count("raftflow: reusing virtual environment") for log in same) == 2, same
    venvs = sorted(p.name for p in (tmp_path / "cache" / "raftflow" / "venvs").iterdir() if p.is_dir())
    assert len(venvs) == 1, "the failed build left nothing behind"

    again = run_locally(load_file(path), "venvs")   # (a second run finds the environment built)
    logs = [t.log for t in again.tasks if t.task_id in ("plus_one", "counted")]
    assert all("reusing virtual environment" in log and "building" not in log for log in logs), logs


def test_the_source_sent_is_the_function_without_its_decorators() -> None:
    def decorate(f):
        return f

    @decorate
    def inner(a, b=2):
        return a + b

    assert function_source(inner) == "def inner(a, b=2):\n    return a + b"
    with pytest.raises(IsolationError, match="not a `def` function"):
        function_source(lambda: 1)


def _python_task(**fields) -> dict:
    return {"dag_id": "d", "tasks": [{"task_id": "t", "kind": "python", "python_callable": "__dag_file__:f",
                                      **fields}]}


@pytest.mark.parametrize("fields, error", [
    ({"virtualenv": {"requirements": ["--index-url=http://evil"]}}, "requirement specifiers such as"),
    ({"virtualenv": {"requirements": ["six"]}, "python_executable": "/usr/bin/python3"}, "not both"),
    ({"virtualenv": {"python_version": "2.7"}}, "python_version must be such as '3.11'"),
    ({"virtualenv": {"pip": True}}, "virtualenv must be an object of"),
    ({"python_executable": "python3"}, "the absolute path of a Python"),
    ({"python_callable": "mod:f", "python_executable": "/usr/bin/python3"}, "define it in the DAG file"),
])
def test_bad_isolation_fields_are_refused_with_the_reason(fields: dict, error: str) -> None:
    with pytest.raises(SpecError) as raised:
        DagSpec.from_dict(_python_task(**fields))
    assert error in str(raised.value)


BASH = '''
import pendulum
from airflow.sdk import DAG, task

with DAG("bashy", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    @task.bash
    def greet(name, ti=None):
        ti.xcom_push("who", name)
        return f"echo hello {name} on {{{{ ds }}}}; echo last line"

    @task.bash
    def skip():
        return "exit 99"

    @task.bash
    def fails():
        return "echo failing; exit 3"

    @task.bash
    def nothing():
        return None

    @task
    def show(text):
        return text

    show(greet("ops"))
    skip()
    fails()
    nothing()
'''


def test_task_bash_runs_the_command_its_function_returns(tmp_path: Path) -> None:
    """@task.bash: the returned string, rendered as a template, run by bash; its last
    line is the result; exit 99 skips; anything else but a command fails saying so."""
    path = tmp_path / "bashy.py"
    path.write_text(BASH)
    outcome = run_locally(load_file(path), "bashy", logical_date="2026-05-06")
    by_id = {t.task_id: t for t in outcome.tasks}
    assert {t: o.state for t, o in by_id.items()} == {"greet": "success", "skip": "skipped", "fails": "failed",
                                                      "nothing": "failed", "show": "success"}
    assert by_id["greet"].log == "hello ops on 2026-05-06\nlast line\n"
    assert (by_id["greet"].result, by_id["show"].result) == ("last line", "last line")
    assert by_id["greet"].xcoms == {"who": "ops"}
    assert "the command of" in by_id["fails"].log and "exited 3" in by_id["fails"].log
    assert "must return the bash command to run (a non-empty string), got None" in by_id["nothing"].log
