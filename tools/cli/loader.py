"""Load DAG files into specs, each in a child process with a time limit.

Nodes never import DAG files (ARCHITECTURE invariant 6): the CLI runs each file in
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


def load_file(path: Path, timeout: float = DEFAULT_TIMEOUT, python: str = sys.executable) -> list[dict[str, str]]:
    try:
        proc = subprocess.run([python, "-m", "raftflow_cli.loader", str(path)], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        raise LoadError(f"{path}: did not finish loading within {timeout:.0f}s (does it block at import time, "
                        "e.g. on network or input?); raise the limit with --load-timeout") from None
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise LoadError(f"{path}: the loader exited with {proc.returncode} without a result; "
                        f"stderr: {proc.stderr.strip()[-500:]}") from None
    if not result.get("ok"):
        raise LoadError(result["error"])
    return result["dags"]


def load_paths(paths: list[str], timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, str]]:
    files = dag_files(paths)
    explicit = {Path(p) for p in paths if Path(p).is_file()}
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        futures = [(f, pool.submit(load_file, f, timeout)) for f in files]
        dags: list[dict[str, str]] = []
        errors = []
        for f, future in futures:
            try:
                found = future.result()
            except LoadError as e:
                errors.append(str(e))
                continue
            if not found and f in explicit:
                errors.append(f"{f}: defines no DAG (create one with `with DAG(...):`)")
            dags.extend(found)
    if errors:
        raise LoadError("\n".join(errors))
    return dags


def _load_in_this_process(path: Path) -> dict:
    """Run the DAG file, collect its DAGs, validate them. Runs in the child process."""
    from raftflow import authoring
    from raftflow.core.spec import DagSpec, SpecError

    source = path.read_text()
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        runpy.run_path(str(path), run_name="__raftflow_dag_file__")
    except BaseException as e:  # noqa: BLE001 - report any failure of user code, even SystemExit
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f" line {frames[-1].lineno}:" if frames else ""
        return {"ok": False, "error": f"{path}:{where} {type(e).__name__}: {e}"}
    dags = []
    for dag in authoring.created_dags():
        try:
            spec = DagSpec.from_dict(dag.to_spec())
        except SpecError as e:
            return {"ok": False, "error": f"{path}: {e}"}
        dags.append({"spec_json": json.dumps(spec.to_dict(), sort_keys=True), "source": source,
                     "filename": str(path)})
    return {"ok": True, "dags": dags}


def main() -> None:
    result = _load_in_this_process(Path(sys.argv[1]))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: user threads or atexit hooks must not hang us


if __name__ == "__main__":
    main()
