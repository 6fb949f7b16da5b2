"""The meta-path finder that makes `import airflow...` resolve to this layer.

MODULES lists every Airflow module path a DAG file may import (Airflow 1.10, 2.x and
3.x paths, `airflow.sdk`, the providers raftflow runs) and the names each offers.
Each is built as a fresh module object whose attributes come from this package; every
one is a package, and an attribute that names a listed submodule is imported on
access, so `import airflow` then `airflow.utils.dates.days_ago` works too. Any other
`airflow.*` path fails its import with a message naming it and what raftflow runs.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any, Sequence

from . import misc, models, operators

_DAG = ("DAG", "dag")
_BASE = ("BaseOperator", "chain", "cross_downstream")
_PY = ("PythonOperator", "BranchPythonOperator", "ShortCircuitOperator", "PythonVirtualenvOperator",
       "ExternalPythonOperator", "BranchExternalPythonOperator", "BranchPythonVirtualenvOperator",
       "get_current_context")
_SDK = _DAG + _BASE + ("task", "task_group", "TaskGroup", "Param", "ParamsDict", "Variable", "XComArg", "Label",
                       "TriggerRule", "CronTriggerTimetable", "setup", "teardown", "DagRunState",
                       "TaskInstanceState", "AirflowException", "AirflowSkipException", "AirflowFailException",
                       "Asset", "AssetAlias", "Metadata", "asset", "get_current_context")
_EXC = tuple(misc.EXCEPTIONS)

MODULES: dict[str, tuple[str, ...]] = {
    "airflow": _DAG + ("Dataset",),
    "airflow.datasets": ("Dataset",),
    "airflow.sdk": _SDK,
    "airflow.sdk.definitions": (),
    "airflow.sdk.definitions.dag": _DAG,
    "airflow.sdk.definitions.param": ("Param", "ParamsDict"),
    "airflow.sdk.definitions.taskgroup": ("TaskGroup",),
    "airflow.sdk.definitions.edges": ("Label",),
    "airflow.sdk.bases": (),
    "airflow.sdk.bases.operator": _BASE,
    "airflow.sdk.exceptions": _EXC,
    "airflow.models": _DAG + ("BaseOperator", "Param", "Variable", "XComArg"),
    "airflow.models.dag": _DAG,
    "airflow.models.baseoperator": _BASE,
    "airflow.models.param": ("Param", "ParamsDict"),
    "airflow.models.variable": ("Variable",),
    "airflow.models.xcom_arg": ("XComArg",),
    "airflow.decorators": ("dag", "task", "task_group", "setup", "teardown"),
    "airflow.operators": (),
    "airflow.operators.bash": ("BashOperator",),
    "airflow.operators.empty": ("EmptyOperator",),
    "airflow.operators.dummy": ("DummyOperator", "EmptyOperator"),
    "airflow.operators.python": _PY,
    "airflow.operators.trigger_dagrun": ("TriggerDagRunOperator",),
    "airflow.operators.branch": ("BaseBranchOperator",),
    "airflow.operators.latest_only": ("LatestOnlyOperator",),
    # Airflow 1.10's paths, still found in the wild
    "airflow.operators.bash_operator": ("BashOperator",),
    "airflow.operators.dummy_operator": ("DummyOperator",),
    "airflow.operators.python_operator": _PY,
    "airflow.operators.dagrun_operator": ("TriggerDagRunOperator",),
    "airflow.operators.latest_only_operator": ("LatestOnlyOperator",),
    "airflow.contrib": (),
    "airflow.contrib.operators": (),
    "airflow.contrib.operators.ssh_operator": ("SSHOperator",),
    "airflow.providers": (),
    "airflow.providers.standard": (),
    "airflow.providers.standard.operators": (),
    "airflow.providers.standard.operators.bash": ("BashOperator",),
    "airflow.providers.standard.operators.empty": ("EmptyOperator",),
    "airflow.providers.standard.operators.python": _PY,
    "airflow.providers.standard.operators.trigger_dagrun": ("TriggerDagRunOperator",),
    "airflow.providers.standard.operators.branch": ("BaseBranchOperator",),
    "airflow.providers.standard.operators.latest_only": ("LatestOnlyOperator",),
    "airflow.providers.ssh": (),
    "airflow.providers.ssh.operators": (),
    "airflow.providers.ssh.operators.ssh": ("SSHOperator",),
    "airflow.utils": (),
    "airflow.utils.dates": ("days_ago",),
    "airflow.utils.timezone": tuple(misc.TIMEZONE_NAMES),
    "airflow.utils.trigger_rule": ("TriggerRule",),
    "airflow.utils.task_group": ("TaskGroup",),
    "airflow.utils.edgemodifier": ("Label",),
    "airflow.utils.helpers": ("chain", "cross_downstream"),
    "airflow.utils.state": ("State", "DagRunState", "TaskInstanceState"),
    "airflow.exceptions": _EXC,
    "airflow.timetables": (),
    "airflow.timetables.trigger": ("CronTriggerTimetable",),
}


def _names() -> dict[str, Any]:
    names: dict[str, Any] = {}
    for module in (models, operators):
        names.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    names.update(misc.EXCEPTIONS)
    names["days_ago"] = misc.days_ago
    names["Dataset"] = operators.Asset
    return names


class AirflowFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `airflow` and every path in MODULES; refuses any other `airflow.*`."""

    def __init__(self) -> None:
        self.names = _names()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "airflow" and not fullname.startswith("airflow."):
            return None
        if fullname not in MODULES:
            what = ("a module of the example DAGs' own, not part of Airflow's API"
                    if fullname.startswith("airflow.example_dags") else
                    "raftflow runs the Bash, Empty, Python (virtualenv, external, branch, short circuit), "
                    "LatestOnly, SSH and TriggerDagRun operators, TaskFlow functions and operators of the file's "
                    "own; sensors and other providers' operators are not supported (README.md 'Airflow DAG "
                    "files' lists what is)")
            raise ModuleNotFoundError(f"No module named {fullname!r} in raftflow's Airflow layer: {what}",
                                      name=fullname)
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__path__ = []
        module.__dict__["__raftflow_compat__"] = True
        own = misc.TIMEZONE_NAMES if name == "airflow.utils.timezone" else self.names
        for attr in MODULES[name]:
            setattr(module, attr, own[attr])

        def submodule(attr: str) -> Any:
            child = f"{name}.{attr}"
            if child in MODULES:
                return importlib.import_module(child)
            raise AttributeError(f"module {name!r} (raftflow's Airflow layer) has no attribute {attr!r}")
        module.__getattr__ = submodule   # type: ignore[method-assign]


def install_finder() -> None:
    """Put the finder first on sys.meta_path (once), so it wins over any installed Airflow."""
    if not any(isinstance(f, AirflowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AirflowFinder())
