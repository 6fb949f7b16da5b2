"""Airflow DAG files, loaded unchanged: raftflow's compatibility layer for `airflow`.

Owns what an Airflow DAG file may import (`airflow`, `airflow.models`, `airflow.sdk`,
`airflow.operators.*`, `airflow.providers.*`, the 1.10 paths, ...) and how each thing
it declares becomes a raftflow DAG spec (core/spec.py's JSON form), with a report of
the arguments accepted but not acted on and of what cannot be honoured.

Only the CLI's loader child (raftflow_cli.loader, one process per DAG file) and the
process of a python task whose callable is defined in the DAG file
(raftflow.worker.pyrunner) call `install(dag_file)`: it puts a meta-path finder first
on sys.meta_path, so `airflow` and its submodules resolve here in that process alone.
This package is never installed as a top-level `airflow`, and node processes never
import it.
"""

from __future__ import annotations

from pathlib import Path

from . import _registry
from ._finder import AirflowFinder, install_finder
from ._registry import Refusal, created_dags, file_refusals


def install(dag_file: Path) -> None:
    """Make `import airflow...` resolve to this layer in this process, for `dag_file`
    (whose folder is where template files such as `run.sh` are looked up)."""
    _registry.begin_file(dag_file)
    install_finder()


__all__ = ["AirflowFinder", "Refusal", "created_dags", "file_refusals", "install"]
