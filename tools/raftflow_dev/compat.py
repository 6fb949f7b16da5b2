"""tools/compat: raftflow's Airflow compatibility, measured on Airflow's own example DAGs.

Takes airflow/example_dags/ out of the apache-airflow-core wheel (`pip download
--no-deps` into a cache folder outside the repo; never installed, nothing copied
into the repo), runs `raftflow dags check` on every file, then runs the DAGs of the
files that load on a real local cluster (LocalCluster), triggering each once and
comparing every task's final state with Airflow's for that file (EXPECTED, from the
file's own code and documentation: every task `success` unless EXPECTED says otherwise,
as for a failing example or a branch). Prints a table (file,
loads or refused and why, ran with Airflow's states or how not) and the counts.

`--examples DIR` measures a folder of DAG files instead (no network).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from raftflow.core.states import RunState
from raftflow_cli.loader import inspect_file

from .local import LocalCluster

PACKAGE = "apache-airflow-core"
EXAMPLES = "airflow/example_dags/"
RUN_TIMEOUT = 180.0
TERMINAL = tuple(s.value for s in RunState if s.terminal)

def _minute_parity_branch(run: dict[str, Any]) -> dict[str, str]:
    """example_branch_python_dop_operator_3: `should_run` follows empty_task_1 when the
    logical date's minute is even, else empty_task_2; the other is skipped."""
    minute = datetime.fromisoformat(run["logical_date"]).minute
    return {"empty_task_2" if minute % 2 == 0 else "empty_task_1": "skipped"}


# Airflow's final states where they are not all `success` (file -> dag_id -> task -> state,
# or a function of the finished run giving them), from each example's own code and docs.
EXPECTED: dict[str, dict[str, dict[str, str] | Callable[[dict[str, Any]], dict[str, str]]]] = {
    # "A task that always fails to generate error_detail."
    "example_failed_dag.py": {"example_failed_dag": {"fail_task": "failed"}},
    # branch_1 follows true_1: false_1 is skipped, and with it everything after it up to
    # join_1 (join_2 is none_failed_min_one_success with every upstream skipped).
    "example_nested_branch_dag.py": {"example_nested_branch_dag": {
        t: "skipped" for t in ("false_1", "branch_2", "true_2", "false_2", "join_2", "false_3")}},
    "example_branch_python_dop_operator_3.py": {"example_branch_dop_operator_v3": _minute_parity_branch},
    # EmptySkipOperator raises AirflowSkipException; an all_success join after it is skipped
    # (and what follows it), a one_success join runs.
    "example_skip_dag.py": {"example_skip_dag": {"skip_operator_1": "skipped", "all_success": "skipped",
                                                 "final_1": "skipped", "skip_operator_2": "skipped"}},
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "raftflow" / "airflow"


def fetch_examples(cache: Path, version: str | None, refresh: bool) -> tuple[Path, str]:
    """The example_dags folder of the wheel (downloaded once into `cache`), and its version."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("apache_airflow_core-*.whl"))
    if version:
        wheels = [w for w in wheels if w.name.startswith(f"apache_airflow_core-{version}-")]
    if refresh or not wheels:
        spec = f"{PACKAGE}=={version}" if version else PACKAGE
        print(f"downloading {spec} (pip download --no-deps) into {cache}", file=sys.stderr)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               "-d", str(cache), spec], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"tools/compat: pip download {spec} failed (network?):\n{done.stderr[-2000:]}")
        wheels = sorted(cache.glob("apache_airflow_core-*.whl"), key=lambda p: p.stat().st_mtime)
        if version:
            wheels = [w for w in wheels if w.name.startswith(f"apache_airflow_core-{version}-")]
    wheel = wheels[-1]
    found_version = wheel.name.split("-")[1]
    target = cache / f"examples-{found_version}"
    if not (target / EXAMPLES).is_dir():
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(EXAMPLES):
                    z.extract(name, target)
    return target / EXAMPLES, found_version


@dataclass
class FileResult:
    path: Path
    loads: bool = False
    reason: str = ""                       # why it is refused (first error, shortened)
    dags: list[dict[str, str]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    ran: str = ""                          # "" not run; "airflow's states"; else what differed
    matches: bool = False


def _reason(errors: list[str], path: Path) -> str:
    first = errors[0] if errors else "failed"
    first = first.replace(f"{path}: ", "").replace(str(path), path.name)
    if "raftflow has no form for it" in first:   # (a decorator: the list of those that run would fill the table)
        feature = first.split(" (DAG")[0].split(": ", 1)[-1]
        return f"{feature}: raftflow has no form for it"
    return first if len(first) <= 140 else first[:137] + "..."


def check(files: list[Path]) -> list[FileResult]:
    results = []
    for path in files:
        result = inspect_file(path, timeout=60)
        report = result.get("report") or {}
        out = FileResult(path, loads=bool(result.get("ok")), dags=result.get("dags", []), report=report)
        if not out.loads:
            out.reason = _reason(report.get("errors") or [result.get("error", "")], path)
        elif not out.dags:
            out.loads, out.reason = False, "defines no DAG"
        results.append(out)
    return results


def run(results: list[FileResult], data_dir: Path, nodes: int) -> None:
    """Submit the files that load, trigger each of their DAGs once, compare final states."""
    loaded = [r for r in results if r.loads]
    if not loaded:
        return
    cluster = LocalCluster(data_dir, nodes=nodes)
    cluster.start()
    try:
        cluster.wait_ready(60)
        client = cluster.client()
        try:
            for result in loaded:
                _run_file(client, result)
        finally:
            client.close()
    finally:
        cluster.stop()


def _run_file(client: Any, result: FileResult) -> None:
    try:
        client.submit(result.dags)
    except Exception as e:  # noqa: BLE001 - the table says why
        result.ran = f"submit refused: {e}"
        return
    differences = []
    for dag in result.dags:
        dag_id = json.loads(dag["spec_json"])["dag_id"]
        client.set_paused(dag_id, False)
        try:
            run_id = client.trigger(dag_id)["run_id"]
        except Exception as e:  # noqa: BLE001
            differences.append(f"{dag_id}: trigger refused: {e}")
            continue
        deadline = time.monotonic() + RUN_TIMEOUT
        final: dict[str, Any] = {}
        while time.monotonic() < deadline:
            final = client.get_run(run_id)
            if final["state"] in TERMINAL:
                break
            time.sleep(0.5)
        client.set_paused(dag_id, True)
        if final.get("state") not in TERMINAL:
            waiting = ", ".join(f"{t['task_id']} {t['state']}" + (f" ({t['reason'][:80]})" if t.get("reason") else "")
                                for t in final.get("tasks", []) if t["state"] != "success")
            differences.append(f"{dag_id}: run not finished within {RUN_TIMEOUT:.0f}s: {waiting}")
            continue
        expected_states = EXPECTED.get(result.path.name, {}).get(dag_id, {})
        want = expected_states(final) if callable(expected_states) else expected_states
        for task in final["tasks"]:
            expected = want.get(task["task_id"], "success")
            if task["state"] != expected:
                differences.append(f"{dag_id}.{task['task_id']}: {task['state']} (Airflow: {expected})")
    result.matches = not differences
    result.ran = "Airflow's states" if result.matches else "; ".join(differences)


def print_table(results: list[FileResult], version: str) -> None:
    rows = [[r.path.name, "loads" if r.loads else "refused",
             r.ran or ("-" if not r.loads else "not run"), r.reason or "-"] for r in results]
    headers = ["FILE", "CHECK", "RUN", "REASON"]
    widths = [max(len(str(x[i])) for x in rows + [headers]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "  REASON")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
    loads = sum(r.loads for r in results)
    runs = sum(r.matches for r in results)
    print(f"\napache-airflow-core {version}: {len(results)} example DAG files; {loads} load unchanged; "
          f"{runs} run with Airflow's final states; {len(results) - loads} refused (reasons above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/compat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", help=f"the {PACKAGE} version (default: the newest)")
    parser.add_argument("--cache-dir", type=Path, default=cache_dir(),
                        help="where the wheel and its examples are kept (default: ~/.cache/raftflow/airflow)")
    parser.add_argument("--refresh", action="store_true", help="download the wheel again")
    parser.add_argument("--examples", type=Path, help="measure this folder of DAG files instead (no download)")
    parser.add_argument("--check-only", action="store_true", help="check the files; run nothing")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object with every file's result")
    args = parser.parse_args(argv)
    if args.examples:
        folder, version = args.examples, "(local folder)"
    else:
        folder, version = fetch_examples(args.cache_dir, args.version, args.refresh)
    files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
    results = check(files)
    if not args.check_only:
        with tempfile.TemporaryDirectory(prefix="raftflow-compat-") as tmp:
            run(results, Path(tmp), args.nodes)
    if args.json:
        print(json.dumps({"version": version, "files": [
            {"file": r.path.name, "loads": r.loads, "reason": r.reason, "ran": r.ran, "matches": r.matches}
            for r in results]}, indent=2))
    else:
        print_table(results, version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
