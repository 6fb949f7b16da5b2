"""Load DAG files into specs, each in a child process with a time limit.

Node processes never import DAG files (ARCHITECTURE invariant 6; a python task whose
callable is in the DAG file runs the file in its own task process: kinds/python.py): the CLI runs each file in
`python -m raftflow_cli.loader FILE`, which prints one JSON object:
    {"ok": true, "dags": [{"spec_json": ..., "source": ..., "filename": ...}, ...]}
    {"ok": false, "error": "dags/x.py: line 3: NameError: name 'y' is not defined"}
`load_paths` runs those children (in parallel) and raises LoadError, naming the file
and the fault, if any file fails: then nothing is submitted.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 30.0


class LoadError(Exception):
    pass


def dag_files(paths: list[str]) -> list[Path]:
    """Expand files and folders (recursively: *.py not starting with _ or .)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.py")
                           if not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts))
            if not found:
                raise LoadError(f"{raw}: no DAG files (*.py) in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise LoadError(f"{raw}: no such file or folder")
    return files


def inspect_file(path: Path, timeout: float = DEFAULT_TIMEOUT, python: str = sys.executable) -> dict[str, Any]:
    """Run the loader child on one file: {"ok", "dags", "report", "error"?}. Raises
    LoadError only when the child gave no result (timeout, crash)."""
    try:
        proc = subprocess.run([python, "-m", "raftflow_cli.loader", str(path)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise LoadError(f"{path}: did not finish loading within {timeout:.0f}s (does it block at import time, "
                        "e.g. on network or input?); raise the limit with --load-timeout") from None
    lines = proc.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise LoadError(f"{path}: the loader exited with {proc.returncode} without a result; "
                        f"stderr: {proc.stderr.strip()[-500:]}") from None
    return result


def load_file(path: Path, timeout: float = DEFAULT_TIMEOUT, python: str = sys.executable) -> list[dict[str, str]]:
    dags, _ = _load_file_with_report(path, timeout, python)
    return dags


def _load_file_with_report(path: Path, timeout: float = DEFAULT_TIMEOUT,
                           python: str = sys.executable) -> tuple[list[dict[str, str]], dict[str, Any]]:
    result = inspect_file(path, timeout, python)
    if not result.get("ok"):
        raise LoadError(result["error"])
    return result["dags"], result.get("report") or {}


def load_paths(paths: list[str], timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, str]]:
    return load_paths_with_reports(paths, timeout)[0]


def load_paths_with_reports(paths: list[str], timeout: float = DEFAULT_TIMEOUT
                            ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Every DAG of the files (what `dags submit` sends) and each file's report (what was
    ignored: `dags submit` warns of it). Raises LoadError naming every failed file."""
    files = dag_files(paths)
    explicit = {Path(p) for p in paths if Path(p).is_file()}
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        futures = [(f, pool.submit(_load_file_with_report, f, timeout)) for f in files]
        dags: list[dict[str, str]] = []
        reports: list[dict[str, Any]] = []
        errors = []
        for f, future in futures:
            try:
                found, report = future.result()
            except LoadError as e:
                errors.append(str(e))
                continue
            if not found and f in explicit:
                errors.append(f"{f}: defines no DAG (create one with `with DAG(...):`)")
            dags.extend(found)
            reports.append(report)
    if errors:
        raise LoadError("\n".join(errors))
    return dags, reports


def inspect_paths(paths: list[str], timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """`raftflow dags check`: each file's report, never raising for a file that fails
    (its errors are in its report). Raises LoadError only for a path that is not there."""
    files = dag_files(paths)
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        futures = [(f, pool.submit(inspect_file, f, timeout)) for f in files]
        reports = []
        for f, future in futures:
            try:
                result = future.result()
                report = result.get("report") or {"file": str(f), "dags": [], "refused": [], "errors": []}
                if not result.get("ok") and not report.get("errors"):
                    report["errors"] = [result.get("error", "failed")]
            except LoadError as e:
                report = {"file": str(f), "dags": [], "refused": [], "errors": [str(e)]}
            reports.append(report)
    return reports


def _load_in_this_process(path: Path) -> dict[str, Any]:
    """Run the DAG file, collect its DAGs (raftflow's and Airflow's), validate them.
    Runs in the child process. The result always holds the file's `report` (what
    `raftflow dags check` prints); `ok` is false if anything failed or was refused."""
    from raftflow import authoring
    from raftflow.core.spec import DagSpec, SpecError

    from . import airflow_compat
    from .airflow_compat._registry import UnsupportedFeature
    from .airflow_compat._schedule import ScheduleRefused

    source = path.read_text()
    resolved = path.resolve()
    sys.path.insert(0, str(resolved.parent))
    airflow_compat.install(resolved)     # `import airflow` resolves to raftflow's layer, in this process only
    errors: list[str] = []
    try:
        runpy.run_path(str(resolved), run_name="__raftflow_dag_file__")
    except BaseException as e:  # noqa: BLE001 - report any failure of user code, even SystemExit
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(resolved)]
        where = f" line {frames[-1].lineno}:" if frames else ""
        name = "not supported" if isinstance(e, UnsupportedFeature) else type(e).__name__
        errors.append(f"{path}:{where} {name}: {e}")
    report: dict[str, Any] = {"file": str(path), "dags": []}
    dags = []
    specs: list[Any] = []
    for dag in authoring.created_dags():
        report["dags"].append(_native_report(dag))
        specs.append(dag)
    for adag in airflow_compat.created_dags():
        for task in adag.tasks:
            task.check_late()
        report["dags"].append(adag.report())
        specs.append(adag)
    blocked = bool(errors or airflow_compat.file_refusals())
    modules = folder_modules(resolved)
    for dag in specs:
        try:
            raw = dag.to_spec()
        except ScheduleRefused as e:
            errors.append(f"{path}: line {dag.line}: schedule (DAG {dag.dag_id!r}): {e}")
            continue
        except Exception as e:  # noqa: BLE001 - a value of the file that has no spec form
            if not blocked:
                errors.append(f"{path}: DAG {dag.dag_id!r}: {type(e).__name__}: {e}")
            continue
        if blocked or airflow_compat.file_refusals():
            continue
        try:
            spec = DagSpec.from_dict(raw)
        except SpecError as e:
            errors.append(f"{path}: {e}")
            continue
        if modules:
            raw = {**spec.to_dict(), "modules": modules}
            try:
                spec = DagSpec.from_dict(raw)
            except SpecError as e:
                errors.append(f"{path}: {e}")
                continue
        dags.append({"spec_json": json.dumps(spec.to_dict(), sort_keys=True), "source": source,
                     "filename": str(path)})
    refusals = airflow_compat.file_refusals()
    report["refused"] = [r.to_dict() for r in refusals]
    errors = [r.text(str(path)) for r in refusals] + errors
    report["errors"] = errors
    if errors:
        return {"ok": False, "error": "\n".join(errors), "dags": [], "report": report}
    return {"ok": True, "dags": dags, "report": report}


def folder_modules(dag_file: Path) -> dict[str, str]:
    """The modules this process imported from files under the DAG file's folder (the file
    aside), by the name they were imported as: "pkg/mod.py" or "pkg/__init__.py" -> source.
    They travel in the spec (core/spec.py `modules`), and a python task's process, which
    runs the DAG file again on a node, finds them on its path under the same names."""
    from raftflow.core.spec import MODULE_PATH

    folder = dag_file.parent
    found: dict[str, str] = {}
    for module_name, module in list(sys.modules.items()):
        name = getattr(module, "__file__", None)
        if not name or not name.endswith(".py") or module_name.split(".")[0] in ("raftflow", "raftflow_cli"):
            continue   # (raftflow's own, when a DAG sits above its checkout, is on every node already)
        try:
            file = Path(name).resolve()
            relative = file.relative_to(folder)
        except (OSError, ValueError):
            continue
        if file == dag_file or any(part.startswith(".") or part in ("site-packages", "dist-packages")
                                   for part in relative.parts):
            continue
        path = module_name.replace(".", "/") + ("/__init__.py" if file.name == "__init__.py" else ".py")
        if not MODULE_PATH.fullmatch(path):
            continue   # (a name no import statement can give: loaded by path, not by import)
        try:
            found[path] = file.read_text()
        except (OSError, UnicodeDecodeError):
            continue
    return dict(sorted(found.items()))


def _native_report(dag: Any) -> dict[str, Any]:
    """A raftflow-API DAG in `dags check`'s form: nothing of it is ignored or refused."""
    return {"dag_id": dag.dag_id, "line": 0, "ignored": [], "notes": [],
            "tasks": [{"task_id": t.task_id, "operator": type(t).__name__, "kind": t.kind, "line": 0,
                       "ignored": [], "refused": []} for t in dag.tasks]}


def main() -> None:
    result = _load_in_this_process(Path(sys.argv[1]))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: user threads or atexit hooks must not hang us


if __name__ == "__main__":
    main()
