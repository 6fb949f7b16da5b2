"""schedule.py: cron ticks in the DAG's timezone, on UTC epoch seconds."""

from __future__ import annotations

from core_support import HOUR, MINUTE, T0, dag_dict, epoch, task
from raftflow.core.schedule import first_tick_after, iso, latest_tick_at_or_before, next_tick_after, previous_tick
from raftflow.core.spec import DagSpec


def spec(schedule: str | None, tz: str = "UTC", **kw) -> DagSpec:
    return DagSpec.from_dict(dag_dict(tasks=[task("a")], schedule=schedule, timezone=tz, **kw))


BERLIN_3AM = spec("0 3 * * *", "Europe/Berlin")
EVERY_5 = spec("*/5 * * * *")


def test_berlin_3am_is_2am_utc_in_winter():
    assert iso(first_tick_after(BERLIN_3AM, epoch("2024-01-10T00:00:00"))) == "2024-01-10T02:00:00+00:00"


def test_berlin_3am_is_1am_utc_in_summer():
    assert iso(first_tick_after(BERLIN_3AM, epoch("2024-07-10T00:00:00"))) == "2024-07-10T01:00:00+00:00"


def test_berlin_daily_across_the_spring_change_is_23_hours():
    tick = first_tick_after(BERLIN_3AM, epoch("2024-03-30T00:00:00"))
    assert iso(tick) == "2024-03-30T02:00:00+00:00"
    assert iso(next_tick_after(BERLIN_3AM, tick)) == "2024-03-31T01:00:00+00:00"
    assert previous_tick(BERLIN_3AM, next_tick_after(BERLIN_3AM, tick)) == tick


def test_first_tick_at_or_after():
    assert first_tick_after(EVERY_5, T0) == T0                      # exactly on a tick: that tick
    assert first_tick_after(EVERY_5, T0 + 0.5) == T0 + 5 * MINUTE
    assert first_tick_after(EVERY_5, T0 - 1) == T0


def test_next_tick_is_strictly_after():
    assert next_tick_after(EVERY_5, T0) == T0 + 5 * MINUTE
    assert next_tick_after(EVERY_5, T0 + 299) == T0 + 5 * MINUTE


def test_latest_tick_at_or_before():
    assert latest_tick_at_or_before(EVERY_5, T0) == T0
    assert latest_tick_at_or_before(EVERY_5, T0 + 299.9) == T0
    assert latest_tick_at_or_before(EVERY_5, T0 - 0.5) == T0 - 5 * MINUTE


def test_previous_tick_is_the_data_interval_start():
    assert previous_tick(EVERY_5, T0) == T0 - 5 * MINUTE
    assert previous_tick(spec("@daily"), epoch("2024-01-10")) == epoch("2024-01-09")


def test_end_date_bounds_the_ticks():
    bounded = spec("*/5 * * * *", end_date="2024-01-10T12:05:00")
    assert next_tick_after(bounded, T0) == T0 + 5 * MINUTE    # the end date itself is included
    assert next_tick_after(bounded, T0 + 5 * MINUTE) is None
    assert first_tick_after(bounded, T0 + HOUR) is None


def test_manual_only_dags_have_no_ticks():
    manual = spec(None)
    assert first_tick_after(manual, T0) is None
    assert next_tick_after(manual, T0) is None
    assert latest_tick_at_or_before(manual, T0) is None


def test_six_field_cron_has_seconds():
    every_30s = spec("* * * * * */30")
    assert next_tick_after(every_30s, T0) == T0 + 30


def test_iso_is_utc_with_offset():
    assert iso(T0) == "2024-01-10T12:00:00+00:00"
    assert iso(T0 + 0.25) == "2024-01-10T12:00:00.250000+00:00"


def test_daily_schedule_fires_once_on_the_autumn_change():
    daily = spec("30 2 * * *", "Europe/Berlin")
    tick = first_tick_after(daily, epoch("2024-10-26T12:00:00"))
    following = next_tick_after(daily, tick)
    assert following - tick >= 23 * HOUR, (iso(tick), iso(following))
