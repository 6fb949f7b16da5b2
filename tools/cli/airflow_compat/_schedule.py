"""Airflow's schedules and dates in raftflow's terms: pure functions, no registry.

raftflow schedules by cron (5 fields, or 6 with seconds) in a named time zone, or
manually (None). `map_schedule` turns what an Airflow DAG may give (None, a cron
string, a preset, "@once", a timedelta, a CronTriggerTimetable) into that, or raises
ScheduleRefused saying why it cannot be expressed and what to write instead.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any

# Airflow's presets that raftflow's spec does not know by name; the rest pass through.
EXTRA_PRESETS = {"@quarterly": "0 0 1 */3 *"}
PASSING_PRESETS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")


class ScheduleRefused(ValueError):
    """The schedule cannot be expressed in raftflow; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Schedule:
    cron: str | None              # what the spec's `schedule` gets (None: manual runs only)
    timezone: str                 # the zone the cron is read in
    end_date: datetime | None = None   # set by @once: the single tick is the last
    note: str = ""                # how it was mapped, when that is worth saying


def zone_name(tz: tzinfo | None) -> str | None:
    """The IANA name of a datetime's zone ("UTC" for naive or UTC), or None when it
    has no name raftflow could use (a fixed offset of minutes, a custom tzinfo)."""
    if tz is None:
        return "UTC"
    for attr in ("key", "name", "zone"):
        name = getattr(tz, attr, None)
        if isinstance(name, str) and name:
            try:
                zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
            return name
    offset = tz.utcoffset(None) if not isinstance(tz, zoneinfo.ZoneInfo) else None
    if offset is not None:
        if offset == timedelta(0):
            return "UTC"
        hours, rest = divmod(offset, timedelta(hours=1))
        if not rest and -14 <= hours <= 12:
            return f"Etc/GMT{-hours:+d}"   # POSIX sign: Etc/GMT-2 is UTC+2
    return None


def as_datetime(value: Any, what: str) -> datetime | None:
    """A DAG's start_date/end_date (datetime, pendulum DateTime, date, ISO text) as a
    datetime; naive values are UTC (Airflow's default_timezone)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    if isinstance(value, str):
        try:
            return as_datetime(datetime.fromisoformat(value), what)
        except ValueError:
            raise ScheduleRefused(f"{what} {value!r} is not an ISO-8601 date or datetime") from None
    raise ScheduleRefused(f"{what} must be a datetime (or pendulum.datetime), got {type(value).__name__}")


def map_schedule(value: Any, start: datetime | None, tz: str) -> Schedule:
    """`value` is what the DAG got as schedule/schedule_interval; `start` its start_date
    (aware), `tz` the zone named by it."""
    if value is None:
        return Schedule(None, tz)
    if isinstance(value, str):
        text = value.strip()
        if text == "@once":
            return _once(start, tz)
        if text == "@continuous":
            raise ScheduleRefused("schedule '@continuous' (a new run as soon as the last ends) has no raftflow "
                                  "form: use a cron schedule, e.g. '* * * * *'")
        if text in EXTRA_PRESETS:
            return Schedule(EXTRA_PRESETS[text], tz, note=f"{text} is cron {EXTRA_PRESETS[text]!r}")
        return Schedule(text, tz)
    if isinstance(value, timedelta):
        return _every(value, start)
    cron = getattr(value, "_raftflow_cron", None)
    if isinstance(cron, tuple):
        expression, zone = cron
        return Schedule(expression, zone or tz)
    kind = type(value).__name__
    if isinstance(value, (list, tuple)) or "Asset" in kind or "Dataset" in kind:
        raise ScheduleRefused(f"a data-aware schedule ({kind}: runs when assets are updated) has no raftflow "
                              "form: use a cron schedule, or trigger the DAG from the producer with "
                              "TriggerDagRunOperator")
    raise ScheduleRefused(f"schedule {kind} is a custom timetable, which raftflow cannot run (it schedules by "
                          "cron): give a cron string, a preset, a timedelta or None")


def _once(start: datetime | None, tz: str) -> Schedule:
    """One run, at start_date: a cron that fires at that instant once a year, ended there."""
    if start is None:
        raise ScheduleRefused("schedule '@once' needs a start_date (its single run is at start_date)")
    local = start.astimezone(zoneinfo.ZoneInfo(tz))
    fields = f"{local.minute} {local.hour} {local.day} {local.month} *"
    if local.second:
        fields += f" {local.second}"
    return Schedule(fields, tz, end_date=start,
                    note=f"@once is cron {fields!r} in {tz} with end_date = start_date: one run, at start_date")


def _every(delta: timedelta, start: datetime | None) -> Schedule:
    """A timedelta schedule (runs at start_date + k * delta) as a UTC cron, when the
    delta divides a day, an hour or is a week; else refused."""
    seconds = delta.total_seconds()
    if start is None:
        raise ScheduleRefused(f"schedule {delta!r} needs a start_date (runs are start_date + k * interval)")
    s = start.astimezone(timezone.utc)
    if seconds <= 0 or seconds != int(seconds):
        raise ScheduleRefused(f"schedule {delta!r} must be a positive whole number of seconds")
    secs = int(seconds)
    how = f"{delta!r} from start_date {s.isoformat()}"
    if s.second or s.microsecond:
        raise ScheduleRefused(f"schedule {how}: start_date has seconds; raftflow's interval schedules are anchored "
                              "to the minute: round start_date to a minute")
    if secs % 60:
        raise ScheduleRefused(f"schedule {how}: an interval under a minute or not a whole number of minutes has "
                              "no cron form: use a whole number of minutes that divides an hour")
    minutes = secs // 60
    if minutes < 60:
        if 60 % minutes:
            raise ScheduleRefused(f"schedule {how}: {minutes} minutes does not divide an hour, so no cron "
                                  "expresses it: use an interval that does (e.g. 15 or 20 minutes) or a cron")
        cron = f"{','.join(str((s.minute + k * minutes) % 60) for k in range(60 // minutes))} * * * *"
        cron = _sorted_first_field(cron)
    elif minutes % 60 == 0 and minutes // 60 < 24:
        hours = minutes // 60
        if 24 % hours:
            raise ScheduleRefused(f"schedule {how}: {hours} hours does not divide a day, so no cron expresses it: "
                                  "use an interval that does (e.g. 4, 6, 8 or 12 hours) or a cron")
        hour_list = sorted((s.hour + k * hours) % 24 for k in range(24 // hours))
        cron = f"{s.minute} {','.join(map(str, hour_list))} * * *"
    elif minutes == 24 * 60:
        cron = f"{s.minute} {s.hour} * * *"
    elif minutes == 7 * 24 * 60:
        cron = f"{s.minute} {s.hour} * * {s.isoweekday() % 7}"
    else:
        raise ScheduleRefused(f"schedule {how}: only intervals that divide an hour or a day, a day, or a week "
                              "have a cron form: write a cron expression instead")
    return Schedule(cron, "UTC", note=f"{how} is cron {cron!r} (UTC)")


def _sorted_first_field(cron: str) -> str:
    first, rest = cron.split(" ", 1)
    return f"{','.join(str(m) for m in sorted(int(x) for x in first.split(',')))} {rest}"


def seconds(value: Any, what: str) -> float | None:
    """A duration Airflow gives as timedelta (or a number of seconds) as seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ScheduleRefused(f"{what} must be a timedelta or a number of seconds, got {type(value).__name__}")
