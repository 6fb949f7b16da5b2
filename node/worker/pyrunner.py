"""Runs a python task's callable, in the attempt's own process.

The worker starts this module like a bash command (`python -m
raftflow.worker.pyrunner`: its own process group, output into the task log, killed
by execution_timeout and cancel). Nothing is pickled: the callable is named,
"package.module:function" (importable on the node), or "__dag_file__:NAME" (a function
of the DAG file): then RAFTFLOW_PY_DAG_FILE holds the run's DAG file, which this process
runs first (its top-level code runs again, as Airflow's task processes parse the file)
and takes the task's function from the DAG it declares.

Inputs (environment, set by kinds/python.py): RAFTFLOW_PY_CALLABLE;
RAFTFLOW_PY_CONTEXT_FILE, a file in the attempt's directory holding the template
context as JSON (dates as ISO-8601 text, turned back into datetimes here);
RAFTFLOW_PY_KWARGS_FILE, one holding the task's op_kwargs as JSON. Files, not
variables: a variable over 128 KiB makes the process fail to start. As Airflow's PythonOperator does,
the function gets op_kwargs plus every context value whose name it accepts (all of
them if it takes **kwargs). A return value other than None is the task's result:
written as JSON to $RAFTFLOW_RESULT_FILE (the worker checks the 64 KiB limit); the
Variables it set or deleted (worker/taskvars.py), whatever its end, to
RAFTFLOW_PY_VARIABLES_FILE. An
exception prints its traceback and exits 1, but SkipTask / AirflowSkipException exits
EXIT_SKIPPED and FailTask / AirflowFailException EXIT_FAILED_NO_RETRY (kinds/python.py:
skipped, failed at once); a sys.exit() of the callable exits 0 or 1, never one of those.
"""

from __future__ import annotations

import importlib
import inspect
import json
import linecache
import os
import subprocess
import sys
import traceback
import types
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from . import taskvars
from .xcom import with_task_instance

DATE_KEYS = ("logical_date", "data_interval_start", "data_interval_end")
# Exceptions that end the task skipped / failed without retry, known by class name (an
# exception's class or any base), so modules written for Airflow work without Airflow.
SKIP_EXCEPTIONS = frozenset({"SkipTask", "AirflowSkipException"})
FAIL_EXCEPTIONS = frozenset({"FailTask", "AirflowFailException"})
EXIT_SKIPPED = 99           # kinds/python.py reads these two
EXIT_FAILED_NO_RETRY = 98
DAG_FILE_MODULE = "__dag_file__"          # python_callable "__dag_file__:f": f of the run's DAG file
LOADED_AS = "__raftflow_dag_file__"       # the module the DAG file runs as (the CLI's loader's name)
# In op_args / op_kwargs, {RESULT_REF: [task_id, key, ...]} stands for that task's result in
# this run (indexed by the keys; None if it published none): a TaskFlow call's XComArg.
RESULT_REF = "__raftflow_result_of__"


def load_context(text: str) -> dict[str, Any]:
    context = json.loads(text)
    for key in DATE_KEYS:
        if isinstance(context.get(key), str):
            context[key] = datetime.fromisoformat(context[key])
    dag_run = context.get("dag_run")
    if isinstance(dag_run, dict) and isinstance(dag_run.get("logical_date"), str):
        dag_run["logical_date"] = datetime.fromisoformat(dag_run["logical_date"])
    return context


def arguments(function: Any, context: dict[str, Any], op_kwargs: dict[str, Any],
              positional: int = 0) -> dict[str, Any]:
    """The keyword arguments of a call with `positional` arguments before them: op_kwargs,
    plus every context value whose name the function takes as a keyword (all of them if
    it takes **kwargs), but none that a positional argument already gives."""
    params = list(inspect.signature(function).parameters.values())
    taken = {p.name for p in params[:positional]
             if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {**{k: v for k, v in context.items() if k not in taken}, **op_kwargs}
    names = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                   inspect.Parameter.KEYWORD_ONLY)} - taken
    return {**{k: v for k, v in context.items() if k in names}, **op_kwargs}


class Fields(dict[str, Any]):
    """A context dict that is also read by attribute (`dag_run.conf`, `task.task_id`), as
    a callable written for Airflow reads its context objects."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


OBJECTS = ("dag_run", "dag", "task")


def render_strings(value: Any, context: dict[str, Any]) -> Any:
    """`value` with every string in it rendered as a template with the context (Jinja
    is imported only for a string that is a template)."""
    if isinstance(value, str):
        if not any(marker in value for marker in ("{{", "{%", "{#")):
            return value
        from .render import render
        return render(value, context, "argument")
    if isinstance(value, dict):
        return {k: render_strings(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_strings(v, context) for v in value]
    return value


def resolve_results(value: Any, results: dict[str, Any]) -> Any:
    """`value` with each RESULT_REF replaced by the result it names (None where a task
    published none, or a key or index is not in it)."""
    if isinstance(value, dict):
        if set(value) == {RESULT_REF} and isinstance(value[RESULT_REF], list) and value[RESULT_REF]:
            task_id, *path = value[RESULT_REF]
            found: Any = results.get(task_id)
            for step in path:
                try:
                    found = found[step]
                except (KeyError, IndexError, TypeError):
                    return None
            return found
        return {k: resolve_results(v, results) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_results(v, results) for v in value]
    return value


def _share_context(context: dict[str, Any]) -> None:
    """Make the context what Airflow's get_current_context() returns, when the DAG file's
    Airflow layer is loaded in this process."""
    compat = sys.modules.get("raftflow_cli.airflow_compat.operators")
    if compat is not None:
        compat.RUNTIME_CONTEXT.update(context)


def _read(path: str | None, empty: str = "{}") -> str:
    """An input file the worker wrote (`empty` when none is named)."""
    if not path:
        return empty
    with open(path) as f:
        return f.read()


class CannotLoad(Exception):
    """The callable cannot be found: the message says why (it is the attempt's reason)."""


def callback_of(dag: Any, owner: str, event: str) -> Any:
    """The callback(s) the DAG file gives a task (`owner`) or the DAG (owner "") for the
    event: a callable, or a list of them (Airflow takes both)."""
    holder = dag if not owner else next((t for t in dag.tasks if t.task_id == owner), None)
    found = getattr(holder, f"on_{event}_callback", None) if holder is not None else None
    if not found:
        what = f"task {owner!r}" if owner else "the DAG"
        raise CannotLoad(f"the DAG file no longer gives {what} of DAG {dag.dag_id!r} an on_{event}_callback")
    return found


def from_dag_file(dag_id: str, task_id: str) -> Any:
    """The callable of task `task_id` of DAG `dag_id`, as the run's DAG file declares it:
    this process runs the file first as a module of its own (LOADED_AS, as the CLI's
    loader runs it; `import airflow` resolved by raftflow's Airflow layer when the file
    uses it), then takes the task's function from the DAG it built (`python_function`),
    so nested functions, lambdas and @task functions are found as Airflow finds them."""
    path = os.environ["RAFTFLOW_PY_DAG_FILE"]
    filename = os.environ.get("RAFTFLOW_PY_DAG_FILENAME") or path
    if os.environ.get("RAFTFLOW_PY_DAG_MODULES"):   # (the DAG folder's modules it imports: on the path first)
        folder = Path.cwd() / "dag-folder"
        with open(os.environ["RAFTFLOW_PY_DAG_MODULES"]) as f:
            for relative, text in json.load(f).items():   # (paths checked by the spec: relative, .py)
                target = folder / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        sys.path.insert(0, str(folder))
    with open(path) as f:
        source = f.read()
    from raftflow import authoring

    dag_lists: list[Callable[[], list[Any]]] = [authoring.created_dags]
    if "airflow" in source:   # (as the loader does, whatever the form of the import)
        from raftflow_cli import airflow_compat

        airflow_compat.install(Path(filename))
        dag_lists.append(airflow_compat.created_dags)
    module = types.ModuleType(LOADED_AS)
    module.__file__ = filename
    sys.modules[LOADED_AS] = module
    # (the file may not exist here under its name: tracebacks and inspect.getsource read the source from this)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the DAG file, by design
    except BaseException as e:  # noqa: BLE001 - even SystemExit: its code must not pass for the runner's own
        traceback.print_exc()
        raise CannotLoad(f"loading the DAG file {filename} failed: {type(e).__name__}: {e}") from None
    dag = next((d for created in dag_lists for d in created() if d.dag_id == dag_id), None)
    if dag is None:
        raise CannotLoad(f"the DAG file {filename} no longer declares DAG {dag_id!r}")
    if os.environ.get("RAFTFLOW_PY_CALLBACK"):
        return callback_of(dag, os.environ.get("RAFTFLOW_PY_CALLBACK_OF", ""), os.environ["RAFTFLOW_PY_CALLBACK"])
    task = next((t for t in dag.tasks if t.task_id == task_id), None)
    function = getattr(task, "python_function", None)
    if not callable(function):
        raise CannotLoad(f"the DAG file {filename} no longer declares python task {task_id!r} in DAG {dag_id!r}")
    return function


def main() -> int:
    target = os.environ["RAFTFLOW_PY_CALLABLE"]
    module_name, _, function_name = target.partition(":")
    context = load_context(_read(os.environ.get("RAFTFLOW_PY_CONTEXT_FILE")))
    taskvars.begin((context.get("var") or {}).get("value") or {})   # (before the DAG file runs: it may read them)
    try:
        if module_name == DAG_FILE_MODULE:
            function = from_dag_file(os.environ["RAFTFLOW_DAG_ID"], os.environ["RAFTFLOW_TASK_ID"])
        else:
            function = getattr(importlib.import_module(module_name), function_name)
    except CannotLoad as e:
        print(f"raftflow: {e}", file=sys.stderr)
        return 1
    except BaseException as e:  # noqa: BLE001 - ImportError, AttributeError, a module's SystemExit: never 98/99
        print(f"raftflow: cannot import {target} on this node: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    results = context.get("results") or {}
    ti = with_task_instance(context, can_push=True)
    try:   # (op_args and op_kwargs are templated, as Airflow's PythonOperator's are)
        op_kwargs = resolve_results(render_strings(json.loads(_read(os.environ.get("RAFTFLOW_PY_KWARGS_FILE"))),
                                                   context), results)
        op_args = resolve_results(render_strings(json.loads(_read(os.environ.get("RAFTFLOW_PY_ARGS_FILE"), "[]")),
                                                 context), results)
        if context.get("templates_dict") is not None:
            context["templates_dict"] = render_strings(context["templates_dict"], context)
    except Exception as e:  # noqa: BLE001 - render.RenderError: the template's fault, said in the log
        print(f"raftflow: {target}: {e}", file=sys.stderr)
        return 1
    for name in OBJECTS:   # (a callable reads dag_run.conf, task.task_id, ... as attributes)
        if isinstance(context.get(name), dict):
            context[name] = Fields(context[name])
    _share_context(context)
    if module_name == DAG_FILE_MODULE:   # (its log names the file the author knows, not raftflow's marker)
        target = f"{os.environ.get('RAFTFLOW_PY_DAG_FILENAME') or 'the DAG file'}:{function_name}"
    try:
        if os.environ.get("RAFTFLOW_PY_CALLBACK"):
            return _call_callbacks(target, function, context)
        kwargs = arguments(function, context, op_kwargs, len(op_args))
        if os.environ.get("RAFTFLOW_PY_VIRTUALENV") or os.environ.get("RAFTFLOW_PY_EXECUTABLE"):
            return _call_isolated(target, function, op_args, kwargs)
        if os.environ.get("RAFTFLOW_PY_BASH"):
            return _call_bash(target, function, op_args, kwargs, context, ti.pushed)
        return _call(target, function, op_args, kwargs, ti.pushed)
    finally:   # (what it set before it raised is set too, as Airflow's Variable.set is at once)
        changed = taskvars.changes()
        if changed:
            with open(os.environ["RAFTFLOW_PY_VARIABLES_FILE"], "w") as f:
                json.dump(changed, f, ensure_ascii=False)


def _call_callbacks(target: str, function: Any, context: dict[str, Any]) -> int:
    """A callback instance: each callback called with the context as its one argument,
    as Airflow calls them; what they return is dropped. Any that raises fails the
    instance (its traceback is the log); the others still run."""
    event = os.environ["RAFTFLOW_PY_CALLBACK"]
    owner = os.environ.get("RAFTFLOW_PY_CALLBACK_OF") or "the DAG"
    functions = list(function) if isinstance(function, (list, tuple)) else [function]
    failed = 0
    for one in functions:
        name = getattr(one, "__name__", repr(one))
        print(f"raftflow: calling on_{event}_callback {name} of {owner}", file=sys.stderr, flush=True)
        try:
            one(context)
        except BaseException:  # noqa: BLE001 - SystemExit too: a callback cannot end the runner's way
            traceback.print_exc()
            failed += 1
    if failed:
        print(f"raftflow: {failed} of {len(functions)} callback(s) of {owner} failed", file=sys.stderr)
    return 1 if failed else 0


def _call_isolated(target: str, function: Any, op_args: list[Any], kwargs: dict[str, Any]) -> int:
    """The callable in its virtual environment or external Python (worker/isolated.py)."""
    from . import isolated

    try:
        if os.environ.get("RAFTFLOW_PY_EXECUTABLE"):
            python = os.environ["RAFTFLOW_PY_EXECUTABLE"]
            if not os.access(python, os.X_OK):
                raise isolated.IsolationError(f"python_executable {python} is not an executable on this node")
        else:
            venv = json.loads(os.environ["RAFTFLOW_PY_VIRTUALENV"])
            python = str(isolated.ensure_venv(Path(os.environ["RAFTFLOW_PY_VENV_CACHE"]), venv["requirements"],
                                              venv["system_site_packages"], venv["python_version"]))
        code, value = isolated.run_isolated(python, function, op_args, kwargs, Path.cwd())
    except isolated.IsolationError as e:
        print(f"raftflow: {target}: {e}", file=sys.stderr)
        _leave_reason(str(e))
        return 1
    if code == 0 and value is not None:
        with open(os.environ["RAFTFLOW_RESULT_FILE"], "w") as f:
            json.dump(value, f)
    return code


def _call_bash(target: str, function: Any, op_args: list[Any], kwargs: dict[str, Any],
               context: dict[str, Any], pushed: dict[str, Any]) -> int:
    """@task.bash: the callable returns the command, rendered as a template, run by bash;
    its output is the log, its last line the result; exit 99 skips (as BashOperator)."""
    command_file = os.path.join(os.getcwd(), "bash-command.sh")
    with open(command_file, "w") as f:   # (the runner's own result file takes the command)
        code = _call(target, function, op_args, kwargs, pushed, result_to=f)
    if code != 0:
        return code
    with open(command_file) as f:
        text = f.read()
    command = json.loads(text) if text else None
    if not isinstance(command, str) or not command.strip():
        print(f"raftflow: {target} must return the bash command to run (a non-empty string), got {command!r:.80}",
              file=sys.stderr)
        return 1
    try:
        command = render_strings(command, context)
    except Exception as e:  # noqa: BLE001 - render.RenderError: the template's fault, said in the log
        print(f"raftflow: {target}: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    process = subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    assert process.stdout is not None
    last = b""
    for line in process.stdout:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        if line.strip():
            last = line
    code = process.wait()
    if code == 99:
        print(f"raftflow: the command of {target} exited 99: the task is skipped", file=sys.stderr)
        return EXIT_SKIPPED
    if code != 0:
        print(f"raftflow: the command of {target} exited {code}", file=sys.stderr)
        return 1
    if last:
        with open(os.environ["RAFTFLOW_RESULT_FILE"], "w") as f:
            json.dump(last.decode("utf-8", "replace").rstrip("\n"), f)
    return 0


def _leave_reason(reason: str) -> None:
    """The attempt's one-line reason, for the worker (its reason file)."""
    path = os.environ.get("RAFTFLOW_REASON_FILE")
    if path:
        with open(path, "w") as f:
            f.write(reason[:500])


def _call(target: str, function: Any, op_args: list[Any], kwargs: dict[str, Any], pushed: dict[str, Any],
          result_to: Any = None) -> int:
    """Call the callable; leave what it pushed and returned for the worker (the return
    value into `result_to` when given, a file open for writing); the exit code."""
    try:
        value = function(*op_args, **kwargs)
    except SystemExit as e:   # (its code must not pass for one of the runner's own)
        code = e.code if e.code is not None else 0
        print(f"raftflow: {target} called sys.exit({code!r})", file=sys.stderr)
        return 0 if code == 0 else 1
    except Exception as e:  # noqa: BLE001 - the task failed: its traceback is its log
        names = {cls.__name__ for cls in type(e).__mro__}
        if names & SKIP_EXCEPTIONS:
            print(f"raftflow: {target} raised {type(e).__name__}: the task is skipped"
                  + (f" ({e})" if str(e) else ""), file=sys.stderr)
            return EXIT_SKIPPED
        traceback.print_exc()
        if names & FAIL_EXCEPTIONS:
            print(f"raftflow: {target} raised {type(e).__name__}: the task fails without retry", file=sys.stderr)
            return EXIT_FAILED_NO_RETRY
        return 1
    if pushed:
        with open(os.environ["RAFTFLOW_PY_XCOM_FILE"], "w") as f:
            json.dump(pushed, f)
    if value is not None:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError) as e:
            print(f"raftflow: {target} returned a value that is not JSON ({e}); return plain data", file=sys.stderr)
            return 1
        if result_to is not None:
            result_to.write(text)
        else:
            with open(os.environ["RAFTFLOW_RESULT_FILE"], "w") as f:
                f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
