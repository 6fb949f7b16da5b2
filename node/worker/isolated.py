"""A python task's callable run by another interpreter: a virtual environment built for
its requirements (Airflow's PythonVirtualenvOperator / @task.virtualenv) or a Python
the node has (ExternalPythonOperator / @task.external_python). Called by the runner
(worker/pyrunner.py) in the attempt's own process, which found the callable in the DAG
file and prepared its arguments.

Virtual environments: one per (requirements, system_site_packages, python_version),
under the node's venv cache (named by a digest of the three), built on first use with
`python -m venv` and pip from the package index the node reaches, and reused. An
exclusive lock file per environment (flock) makes a second attempt wait for the first
one's build, so the same environment is never built twice at once; a build that failed
leaves nothing behind and fails the attempt with pip's last words. A `.ready` file
marks a finished build: an environment without one (a build killed midway) is built
again.

The callable crosses over as source, never pickled: its function definition from the
DAG file with its decorators removed (so it must be self-contained: imports inside the
function, as Airflow asks), with its arguments and the JSON-serialisable part of the
context (dates as ISO-8601 text) in a JSON file. Its return value comes back as JSON.
SkipTask / AirflowSkipException and FailTask / AirflowFailException keep their
meanings (by class name, as in the runner).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

READY = ".ready"
PIP_TAIL = 2000   # characters of pip's output kept as the reason of a failed build


class IsolationError(Exception):
    """The environment cannot be made or the callable cannot be sent: the attempt's reason."""


def function_source(function: Any) -> str:
    """The function's definition as text, without decorators, dedented (a function defined
    inside a `with DAG` block or another function is sent all the same)."""
    try:
        text = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as e:
        raise IsolationError(f"the source of {getattr(function, '__name__', function)!r} cannot be found ({e}): "
                             "define it with `def` in the DAG file") from None
    tree = ast.parse(text)
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise IsolationError(f"{getattr(function, '__name__', function)!r} is not a `def` function (a lambda "
                             "cannot run in another interpreter)")
    node.decorator_list = []
    return ast.unparse(node)


def venv_key(requirements: list[str], system_site_packages: bool, python_version: str | None,
             base: str = "") -> str:
    """The environment's name: its requirements, site packages, version and the interpreter
    it is made from (its real path and its file's time: an upgraded Python gets a new one)."""
    real = os.path.realpath(base) if base else ""
    try:
        stamp = os.stat(real).st_mtime_ns if real else 0
    except OSError:
        stamp = 0
    text = json.dumps([sorted(requirements), system_site_packages, python_version or "", real, stamp])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def base_interpreter(python_version: str | None) -> str:
    """The interpreter a venv is made from: python_version's (`python3.11` on PATH), or
    the one running raftflow."""
    if not python_version or python_version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    found = shutil.which(f"python{python_version}")
    if found is None:
        raise IsolationError(f"python_version {python_version!r}: this node has no python{python_version} on its "
                             "PATH (install it, or leave python_version out to use the node's Python "
                             f"{sys.version_info.major}.{sys.version_info.minor})")
    return found


def ensure_venv(cache: Path, requirements: list[str], system_site_packages: bool,
                python_version: str | None) -> Path:
    """The environment's interpreter, built first if it is not there (under its lock)."""
    base = base_interpreter(python_version)
    cache.mkdir(parents=True, exist_ok=True)
    key = venv_key(requirements, system_site_packages, python_version, base)
    root = cache / key
    python = root / "bin" / "python"
    label = ', '.join(requirements) or 'no requirements'
    if (root / READY).exists():   # (built: no lock, so attempts starting together never queue on it)
        print(f"raftflow: reusing virtual environment {key} ({label})", flush=True)
        return python
    with open(cache / f"{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"raftflow: another attempt is building virtual environment {key}: waiting for it", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (root / READY).exists():
                print(f"raftflow: reusing virtual environment {key} ({label})", flush=True)
            else:
                _build(root, base, requirements, system_site_packages)
            return python
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(root: Path, base: str, requirements: list[str], system_site_packages: bool) -> None:
    shutil.rmtree(root, ignore_errors=True)   # (a build killed midway: no .ready)
    print(f"raftflow: building virtual environment {root.name} with {base}: "
          f"{', '.join(requirements) or 'no requirements'}", flush=True)
    venv = [base, "-m", "venv", *(["--system-site-packages"] if system_site_packages else []), str(root)]
    _step(venv, "python -m venv", root)
    if requirements:
        _step([str(root / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", *requirements], "pip install", root)
    (root / READY).write_text(json.dumps({"requirements": requirements,
                                          "system_site_packages": system_site_packages}))


def _step(argv: list[str], what: str, root: Path) -> None:
    # (without the node's paths: pip would take their packages as installed, and leave them out)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", env=env)
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        tail = proc.stdout.strip()[-PIP_TAIL:]
        lines = [line for line in tail.splitlines() if line.strip()]
        last = [line for line in lines if line.startswith("ERROR")][-3:] or lines[-3:]   # (pip's own verdict first)
        raise IsolationError(f"{what} failed (exit {proc.returncode}): {' | '.join(last) or 'no output'}")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def serialisable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that JSON can carry (the context's objects, such as `ti`, stay
    behind, as Airflow leaves them out of a virtualenv's context); dates as ISO-8601 text."""
    out = {}
    for name, value in kwargs.items():
        try:
            json.dumps(value, default=_plain)
        except (TypeError, ValueError):
            continue
        out[name] = value
    return out


# Run by the other interpreter (any Python 3): no raftflow there. argv: input file, result file.
SCRIPT = r'''
import json, sys, traceback
with open(sys.argv[1]) as f:
    given = json.load(f)
scope = {"__name__": "__raftflow_isolated__"}
exec(compile(given["source"], given["filename"], "exec"), scope)
function = scope[given["name"]]
try:
    value = function(*given["args"], **given["kwargs"])
except SystemExit as e:
    code = 0 if e.code in (None, 0) else 1
    print("raftflow: the callable called sys.exit(%r)" % (e.code,), file=sys.stderr)
    sys.exit(code)
except Exception as e:
    names = {cls.__name__ for cls in type(e).__mro__}
    if names & {"SkipTask", "AirflowSkipException"}:
        print("raftflow: the callable raised %s: the task is skipped" % type(e).__name__, file=sys.stderr)
        sys.exit(99)
    traceback.print_exc()
    sys.exit(98 if names & {"FailTask", "AirflowFailException"} else 1)
if value is not None:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError) as e:
        print("raftflow: the callable returned a value that is not JSON (%s); return plain data" % e, file=sys.stderr)
        sys.exit(1)
    with open(sys.argv[2], "w") as f:
        f.write(text)
'''


def run_isolated(python: str, function: Any, args: list[Any], kwargs: dict[str, Any], workdir: Path) -> tuple[int, Any]:
    """Call the function in `python` (its output goes to this process's, the task log):
    (exit code - the runner's own codes kept -, the returned value or None)."""
    source = function_source(function)
    given = {"source": source, "filename": f"<{function.__name__} sent to {python}>", "name": function.__name__,
             "args": json.loads(json.dumps(args, default=_plain)),
             "kwargs": json.loads(json.dumps(serialisable(kwargs), default=_plain))}
    script, given_file, result_file = workdir / "isolated.py", workdir / "isolated-input.json", \
        workdir / "isolated-result.json"
    script.write_text(SCRIPT)
    given_file.write_text(json.dumps(given))
    sys.stdout.flush()
    sys.stderr.flush()
    code = subprocess.call([python, str(script), str(given_file), str(result_file)], stdin=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if code != 0 or not result_file.exists():
        return code, None
    return 0, json.loads(result_file.read_text())
