"""Run ids: the one place their formats are written (`{trigger}__{dag_id}__{logical date}`).

Pure. Used by the planner (scheduled runs), the API operations and `dags test` (manual
runs: `manual_run`) and
State.apply (backfilled runs). A run id names its DAG because run ids are unique
across the cluster; a scheduled or backfilled run's id derives only from
(dag_id, logical date), so proposing the same run twice creates it once
(ARCHITECTURE invariant 5), and a backfill skips a date a scheduled run already has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .commands import CreateRun
    from .spec import DagSpec


def scheduled_run_id(dag_id: str, logical_date_iso: str) -> str:
    """A cron tick's run (planner)."""
    return f"scheduled__{dag_id}__{logical_date_iso}"


def backfill_run_id(dag_id: str, logical_date_iso: str) -> str:
    """A run created by `dags backfill` for a past tick."""
    return f"backfill__{dag_id}__{logical_date_iso}"


def manual_run_id(dag_id: str, logical_date_iso: str) -> str:
    """A run triggered by hand; its logical date is the time of the trigger."""
    return f"manual__{dag_id}__{logical_date_iso}"


def manual_run(spec: DagSpec, conf: dict[str, Any], logical_date: str, now: float, run_id: str = "") -> CreateRun:
    """The CreateRun of a manual run of `spec` (the API's trigger, `dags test`): `conf` a
    JSON object (checks.conf_error passed) that must fit the DAG's params, `logical_date`
    ISO-8601 ("" for `now`), `run_id` (checked) or "" for manual__DAG__DATE. Raises
    ValueError saying what is wrong."""
    from .commands import CreateRun
    from .params import conf_error as param_conf_error
    from .schedule import iso
    from .spec import normalise_instant

    error = param_conf_error(spec.param_schemas, spec.params, conf)
    if error:
        raise ValueError(f"DAG {spec.dag_id!r}: {error}")
    logical = normalise_instant(logical_date, "logical_date") if logical_date else iso(now)
    return CreateRun(run_id=run_id or manual_run_id(spec.dag_id, logical), dag_id=spec.dag_id, logical_date=logical,
                     data_interval_start=logical, data_interval_end=logical, trigger="manual", conf=conf, at=now)
