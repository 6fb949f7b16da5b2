"""Run ids: the one place their formats are written (`{trigger}__{dag_id}__{logical date}`).

Pure. Used by the planner (scheduled runs), the API operations (manual runs) and
State.apply (backfilled runs). A run id names its DAG because run ids are unique
across the cluster; a scheduled or backfilled run's id derives only from
(dag_id, logical date), so proposing the same run twice creates it once
(ARCHITECTURE invariant 5), and a backfill skips a date a scheduled run already has.
"""

from __future__ import annotations


def scheduled_run_id(dag_id: str, logical_date_iso: str) -> str:
    """A cron tick's run (planner)."""
    return f"scheduled__{dag_id}__{logical_date_iso}"


def backfill_run_id(dag_id: str, logical_date_iso: str) -> str:
    """A run created by `dags backfill` for a past tick."""
    return f"backfill__{dag_id}__{logical_date_iso}"


def manual_run_id(dag_id: str, logical_date_iso: str) -> str:
    """A run triggered by hand; its logical date is the time of the trigger."""
    return f"manual__{dag_id}__{logical_date_iso}"
