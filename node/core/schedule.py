"""Cron arithmetic for DAG schedules, in the DAG's timezone, on UTC epoch seconds.

Pure: callers pass every instant in; nothing here reads the clock. A run's logical
date is its tick instant; its data interval is (previous tick, tick).
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timezone

from croniter import croniter

from .spec import DagSpec


def _iter(spec: DagSpec, start: float) -> croniter:
    tz = zoneinfo.ZoneInfo(spec.timezone)
    return croniter(spec.cron, datetime.fromtimestamp(start, tz))


def _bounded(spec: DagSpec, tick: float) -> float | None:
    if spec.end_date is not None and tick > datetime.fromisoformat(spec.end_date).timestamp():
        return None
    return tick


def first_tick_after(spec: DagSpec, since: float) -> float | None:
    """The first tick at or after `since` (None if manual-only or past end_date)."""
    if spec.cron is None:
        return None
    it = _iter(spec, since - 1e-3)  # croniter's next is strictly after its start
    return _bounded(spec, it.get_next(float))


def next_tick_after(spec: DagSpec, tick: float) -> float | None:
    """The first tick strictly after `tick`."""
    if spec.cron is None:
        return None
    return _bounded(spec, _iter(spec, tick).get_next(float))


def latest_tick_at_or_before(spec: DagSpec, now: float) -> float | None:
    if spec.cron is None:
        return None
    return _iter(spec, now + 1e-3).get_prev(float)


def previous_tick(spec: DagSpec, tick: float) -> float:
    """The tick before `tick`: the start of its data interval."""
    return _iter(spec, tick).get_prev(float)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()
