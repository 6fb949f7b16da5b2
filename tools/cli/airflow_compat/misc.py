"""Airflow's small helpers DAG files import: exceptions, `days_ago`, timezone helpers."""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any

import pendulum


class AirflowException(Exception):
    pass


class AirflowSkipException(AirflowException):
    pass


class AirflowFailException(AirflowException):
    pass


class AirflowSensorTimeout(AirflowException):
    pass


class AirflowTaskTimeout(AirflowException):
    pass


class AirflowNotFoundException(AirflowException):
    pass


class AirflowConfigException(AirflowException):
    pass


class DuplicateTaskIdFound(AirflowException):
    pass


class TaskDeferred(AirflowException):
    pass


EXCEPTIONS = {cls.__name__: cls for cls in (
    AirflowException, AirflowSkipException, AirflowFailException, AirflowSensorTimeout, AirflowTaskTimeout,
    AirflowNotFoundException, AirflowConfigException, DuplicateTaskIdFound, TaskDeferred)}

utc = pendulum.timezone("UTC")


def days_ago(n: int, hour: int = 0, minute: int = 0, second: int = 0, microsecond: int = 0) -> datetime:
    """Airflow 1.10/2.x's days_ago: midnight UTC (or the given time) n days before today.
    Beware, as in Airflow: a start_date that moves with every load."""
    today = datetime.now(timezone.utc).replace(hour=hour, minute=minute, second=second, microsecond=microsecond)
    return today - timedelta(days=n)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def make_aware(value: datetime, timezone: tzinfo | None = None) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone or utc)


def convert_to_utc(value: datetime) -> datetime:
    return make_aware(value).astimezone(utc)


def parse(text: str, timezone: Any = None) -> datetime:
    parsed = pendulum.parse(text, tz=timezone or utc)
    assert isinstance(parsed, datetime)
    return parsed


def datetime_(*args: Any, **kwargs: Any) -> datetime:
    """airflow.utils.timezone.datetime: a datetime, UTC unless tzinfo= is given."""
    kwargs.setdefault("tzinfo", utc)
    return datetime(*args, **kwargs)


def coerce_datetime(value: Any) -> Any:
    return make_aware(value) if isinstance(value, datetime) else value


TIMEZONE_NAMES = {"utc": utc, "utcnow": utcnow, "make_aware": make_aware, "convert_to_utc": convert_to_utc,
                  "parse": parse, "datetime": datetime_, "coerce_datetime": coerce_datetime, "time": time}
