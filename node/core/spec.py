"""DAG and task specifications: the declarative, validated form of a DAG file.

This module owns what a DAG *is* once it has left the user's Python file: plain
frozen values built from a JSON-able dict (what the CLI's loader produces and what
travels through Raft), validated with errors that name the culprit. Node processes
never import DAG files (ARCHITECTURE invariant 6); they only ever see these specs. (A
python task whose callable is defined in the DAG file runs the file in the task's own
process, from the run's DAG version: kinds/python.py.)

Pure: no I/O, no clock. `from_dict` raises `SpecError`; nothing else here raises.
"""

from __future__ import annotations

import hashlib
import math
import re
import zoneinfo
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from croniter import croniter

from ..kinds import KINDS, InvalidArgs, TaskKind
from .limits import CLIP_CHARS, JsonShapeError, check_json, check_text, clip
from .names import (
    CALLABLE_PATTERN,
    ID_PATTERN as ID_PATTERN,  # re-exported: the rule for names lives in names.py
    ID_RULE as ID_RULE,
)
from .params import ParamError, check_schemas
from .pickling import by_name

MAX_PARAMS_BYTES = 64 * 1024
DEFAULT_POOL = "default_pool"     # exists without being created, with DEFAULT_POOL_SLOTS slots
DEFAULT_POOL_SLOTS = 128
DEFAULT_QUEUE = "default"         # the queue every node serves unless configured otherwise
TRIGGER_RULES = ("all_success", "all_failed", "all_done", "one_success", "one_failed", "none_failed",
                 "none_skipped", "always", "none_failed_min_one_success", "all_skipped", "one_done",
                 "all_done_min_one_success")
# Airflow's older names for rules above: a spec may use them; they are stored as the rule they name.
TRIGGER_RULE_ALIASES = {"none_failed_or_skipped": "none_failed_min_one_success", "dummy": "always"}
CATCHUP_POLICIES = ("all", "latest", "none")
SCHEDULE_PRESETS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# Submitting a DAG costs every node O(tasks) in apply (validation, digest), on the Raft
# thread. Measured on 2 cores (3 nodes, one machine): 2,000 tasks committed in 0.5 s
# with no election and writes beside it under 0.5 s; 5,000 tasks took 1-1.7 s and
# caused elections. Lifting this needs a submit whose apply does not re-walk the tasks.
MAX_TASKS_PER_DAG = 2_000
MAX_PARAM_SCHEMAS_BYTES = 64 * 1024
DEFAULT_MAX_QUEUED_RUNS = 1000
# Instants a DAG may name (start_date, end_date, backfill ranges, logical dates): cron
# arithmetic needs room around them (a leap-day schedule's next tick can be 8 years
# on, a time zone a day off), and Python's datetime ends with year 9999.
MIN_YEAR, MAX_YEAR = 1000, 8999


class SpecError(ValueError):
    """A DAG or task spec is invalid; the message names the DAG/task and the fault."""


@by_name
@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: str
    kind: str
    command: str
    upstream: tuple[str, ...] = ()
    trigger_rule: str = "all_success"
    retries: int = 0
    retry_delay: float = 0.0
    priority_weight: int = 1
    env: tuple[tuple[str, str], ...] = ()
    # Attempts lost with their node (not the task's own failures) before the task fails.
    max_lost_attempts: int = 3
    # Seconds an attempt may run before its whole process tree is killed (a failure).
    execution_timeout: float | None = None
    # Retry delays double after each failure, with jitter, up to max_retry_delay.
    retry_exponential_backoff: bool = False
    max_retry_delay: float | None = None
    # Runs only while its pool has pool_slots free slots (pools set NAME SLOTS).
    pool: str = DEFAULT_POOL
    pool_slots: int = 1
    # Runs only on nodes that serve this queue (a node's `queues` setting).
    queue: str = DEFAULT_QUEUE
    # The fields of particular kinds (validated and used by the kind, raftflow/kinds/).
    # These four are attributes of their own because snapshots hold TaskSpecs pickled
    # with them (python: "package.module:function" and its keyword arguments; ssh: the
    # connection in the nodes' config, and whether the remote command gets a pty).
    python_callable: str = ""
    op_kwargs: dict[str, Any] = field(default_factory=dict)
    ssh_conn_id: str = ""
    get_pty: bool = False
    # The fields of every other kind: {field: value}; to_dict flattens them, so a spec's
    # JSON has one flat form whatever kind declared a field.
    args: dict[str, Any] = field(default_factory=dict)
    # Airflow's depends_on_past: the task may start only once its instance in the previous
    # run of the DAG (by logical date) succeeded or was skipped (the first run has none).
    depends_on_past: bool = False
    # Airflow's wait_for_downstream (implies depends_on_past): also the direct downstream
    # tasks of that previous instance have finished (succeeded or skipped).
    wait_for_downstream: bool = False
    # The TaskGroup path it was declared in ("outer.inner"; "" for none): for the UI and
    # `dags show`, no effect on scheduling.
    group: str = ""
    doc_md: str = ""     # its documentation (Markdown), shown by `dags show`
    # Airflow's on_execute/success/failure/retry_callback: event -> callable (as
    # python_callable names one), run as a callback instance of its own (core/callbacks.py).
    callbacks: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> Any:
        """The value of one of its kind's fields (raftflow/kinds/), wherever it is stored."""
        if name in _OWN_FIELDS:
            return getattr(self, name)
        if name in self.args:
            return self.args[name]
        return KINDS[self.kind].fields[name]   # a spec made before its kind had this field

    def retry_delay_after(self, failures: int, key: str) -> float:
        """Seconds before the next attempt, once `failures` attempts failed (>= 1).

        With backoff: retry_delay * 2**(failures-1), stretched by a jitter in [0, 1)
        of itself that is a hash of (key, failures) - deterministic, so every replica
        computes the same retry time, yet runs that failed together do not retry in
        lockstep - and capped at max_retry_delay."""
        if not self.retry_exponential_backoff:
            return self.retry_delay
        base = self.retry_delay * 2 ** min(failures - 1, 62)
        digest = hashlib.sha256(f"{key}\0{self.task_id}\0{failures}".encode()).digest()
        delay = base * (1 + int.from_bytes(digest[:8], "big") / 2 ** 64)
        return float(min(delay, self.max_retry_delay) if self.max_retry_delay is not None else delay)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form (what `_task_from_dict` reads). Nested values (env pairs
        aside) are the spec's own, not copies: callers only read or serialise them.
        (dataclasses.asdict deep-copies every leaf: 1.5 s for a 10,000-task DAG, in apply.)"""
        d = {name: getattr(self, name) for name in _TASK_SPEC_FIELDS}
        d["upstream"] = list(self.upstream)
        d["env"] = dict(self.env)
        d.update(d.pop("args"))
        for name, default in _LATER_TASK_FIELDS.items():   # (left out at their defaults: old specs digest the same)
            if d[name] == default:
                del d[name]
        return d

    @property
    def needs_past(self) -> bool:
        """Whether its previous run's instance must have finished well first."""
        return self.depends_on_past or self.wait_for_downstream



_TASK_SPEC_FIELDS = tuple(f.name for f in fields(TaskSpec))
# Task fields added after specs were first stored (#19), with their defaults.
_LATER_TASK_FIELDS = {"depends_on_past": False, "wait_for_downstream": False, "group": "", "doc_md": "",
                      "callbacks": {}}
MAX_DOC_BYTES = 64 * 1024      # a doc_md (DAG or task)
GROUP_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,199}(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,199}){0,15}")


@by_name
@dataclass(frozen=True, slots=True)
class DagSpec:
    dag_id: str
    tasks: tuple[TaskSpec, ...]
    schedule: str | None = None
    timezone: str = "UTC"
    start_date: str | None = None  # ISO-8601 UTC, normalised by from_dict
    end_date: str | None = None
    catchup: str = "latest"
    max_active_runs: int = 16
    # Task instances of this DAG assigned or running at once, across its runs.
    max_active_tasks: int = 16
    description: str = ""
    tags: tuple[str, ...] = ()
    is_paused_upon_creation: bool = False
    # Retention of finished runs (with their task logs); None keeps them all.
    keep_runs: int | None = None      # keep at most this many finished runs
    keep_days: float | None = None    # remove finished runs that ended longer ago
    # Template parameters (`{{ params.x }}`): defaults that a trigger's conf overrides.
    params: dict[str, Any] = field(default_factory=dict)
    # Seconds a run may take from its start before it is failed (unfinished tasks skipped).
    dagrun_timeout: float | None = None
    # JSON schemas of params ({name: schema}, core/params.py): the value a run sees
    # (its conf's, else the default) must satisfy them; a trigger that breaks one is refused.
    param_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Runs of this DAG that may wait (queued) at once; a trigger or backfill beyond is refused.
    max_queued_runs: int = DEFAULT_MAX_QUEUED_RUNS
    doc_md: str = ""     # the DAG's documentation (Markdown), shown by `dags show`
    # Airflow's DAG on_success_callback / on_failure_callback: event -> callable, run once
    # the run's tasks ended, before the run finishes (core/callbacks.py).
    callbacks: dict[str, str] = field(default_factory=dict)
    # Python modules of the DAG file's folder that it imports (path relative to the folder
    # -> source), found by the loader: a python task's process puts them on its path before
    # it runs the DAG file (worker/pyrunner.py), as the folder is on Airflow's.
    modules: dict[str, str] = field(default_factory=dict)
    task_index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def task(self, task_id: str) -> TaskSpec:
        """A task's spec; a callback instance's (core/callbacks.py) is derived from its owner's."""
        index = self.task_index.get(task_id)
        if index is not None:
            return self.tasks[index]
        from .callbacks import callback_spec  # (callbacks imports this module)

        found = callback_spec(self, task_id)
        if found is None:
            raise KeyError(task_id)
        return found

    def downstream(self, task_id: str) -> list[str]:
        return [t.task_id for t in self.tasks if task_id in t.upstream]

    def with_downstream(self, task_ids: list[str]) -> list[str]:
        """`task_ids` (once each, in order), then every task after them, breadth first:
        O(tasks + edges)."""
        adjacency, chosen = self.downstream_map(), list(dict.fromkeys(task_ids))
        seen, i = set(chosen), 0
        while i < len(chosen):
            for d in adjacency[chosen[i]]:
                if d not in seen:
                    seen.add(d)
                    chosen.append(d)
            i += 1
        return chosen

    def downstream_map(self) -> dict[str, list[str]]:
        """task_id -> its direct downstream task ids, in task order: O(tasks + edges).
        Build it once per walk (not per task: `downstream` scans every task)."""
        adjacency: dict[str, list[str]] = {t.task_id: [] for t in self.tasks}
        for t in self.tasks:
            for u in dict.fromkeys(t.upstream):
                adjacency[u].append(t.task_id)
        return adjacency

    @property
    def cron(self) -> str | None:
        """The schedule as a cron expression (presets expanded), or None if manual-only."""
        if self.schedule is None:
            return None
        return SCHEDULE_PRESETS.get(self.schedule, self.schedule)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form, one key per name in DAG_FIELDS (what from_dict reads)."""
        d = {name: getattr(self, name) for name in DAG_FIELDS}
        d["tags"] = list(self.tags)
        d["tasks"] = [t.to_dict() for t in self.tasks]
        for name in ("callbacks", "modules"):   # (left out when none: specs made before read and digest the same)
            if not d[name]:
                del d[name]
        return d

    @staticmethod
    def from_dict(raw: Any) -> "DagSpec":
        """Build and validate a spec; raises SpecError naming the DAG/task at fault."""
        if not isinstance(raw, dict):
            raise SpecError(f"a DAG spec must be a JSON object, got {type(raw).__name__}")
        if not all(isinstance(k, str) for k in raw):
            raise SpecError("a DAG spec's keys must be strings")
        dag_id = _check_id(raw.get("dag_id"), "dag_id")
        where = f"DAG {dag_id!r}"
        _reject_unknown(raw, frozenset(DAG_FIELDS), where)

        schedule = raw.get("schedule")
        tz_name = _opt_str(raw, "timezone", where) or "UTC"
        try:
            zoneinfo.ZoneInfo(tz_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise SpecError(f"{where}: unknown timezone {clip(tz_name)} "
                            "(use an IANA name such as 'Europe/Berlin')") from None
        if schedule is not None:
            if not isinstance(schedule, str) or not schedule.strip():
                raise SpecError(f"{where}: schedule must be a cron string, a preset such as '@daily', or None")
            schedule = schedule.strip()
            expr = SCHEDULE_PRESETS.get(schedule, schedule)
            if schedule.startswith("@") and schedule not in SCHEDULE_PRESETS:
                raise SpecError(f"{where}: unknown schedule preset {clip(schedule)}; "
                                f"known: {', '.join(SCHEDULE_PRESETS)}")
            if len(expr.split()) not in (5, 6) or not croniter.is_valid(expr):
                raise SpecError(f"{where}: schedule {clip(schedule)} is not a valid cron expression (5 or 6 fields)")
            if any(part.upper().startswith("R") or part.upper() == "H" for part in expr.split()):
                raise SpecError(f"{where}: schedule {clip(schedule)} uses a random field (R/H); replicas must agree "
                                "on every tick, so write the minute explicitly")
            try:
                croniter(expr, datetime(2000, 1, 1, tzinfo=zoneinfo.ZoneInfo(tz_name))).get_next(float)
            except (ValueError, OverflowError):
                raise SpecError(f"{where}: schedule {clip(schedule)} never fires (e.g. February 30th)") from None
        start_date = _opt_instant(raw, "start_date", where)
        end_date = _opt_instant(raw, "end_date", where)
        if start_date and end_date and end_date < start_date:
            raise SpecError(f"{where}: end_date {end_date} is before start_date {start_date}")
        catchup = raw.get("catchup", "latest")
        if catchup is True:
            catchup = "all"
        elif catchup is False:
            catchup = "none"
        if catchup not in CATCHUP_POLICIES:
            raise SpecError(f"{where}: catchup must be one of {', '.join(CATCHUP_POLICIES)}, got {clip(catchup)}")
        max_active_runs = _int(raw, "max_active_runs", 16, where, minimum=1)
        max_active_tasks = _int(raw, "max_active_tasks", 16, where, minimum=1)
        max_queued_runs = _int(raw, "max_queued_runs", DEFAULT_MAX_QUEUED_RUNS, where, minimum=1)
        keep_runs = raw.get("keep_runs")
        if keep_runs is not None:
            keep_runs = _int(raw, "keep_runs", 0, where, minimum=1)
        keep_days = raw.get("keep_days")
        if keep_days is not None and (not isinstance(keep_days, (int, float)) or isinstance(keep_days, bool)
                                      or not math.isfinite(keep_days) or keep_days <= 0):
            raise SpecError(f"{where}: keep_days must be a positive number of days, got {clip(keep_days)}")
        params = raw.get("params") or {}
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise SpecError(f"{where}: params must be a JSON object (a dict with string keys)")
        param_schemas = raw.get("param_schemas") or {}
        try:
            check_json(params, f"{where}: params", max_bytes=MAX_PARAMS_BYTES)
            check_json(param_schemas, f"{where}: param_schemas", max_bytes=MAX_PARAM_SCHEMAS_BYTES)
            check_schemas(param_schemas, params, schedule is not None, where)
        except (JsonShapeError, ParamError) as e:
            raise SpecError(str(e)) from None
        dagrun_timeout = _opt_seconds(raw, "dagrun_timeout", where)
        tags = raw.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise SpecError(f"{where}: tags must be a list of strings")

        raw_tasks = raw.get("tasks")
        if not isinstance(raw_tasks, list) or not raw_tasks:
            raise SpecError(f"{where}: a DAG needs at least one task")
        if len(raw_tasks) > MAX_TASKS_PER_DAG:
            raise SpecError(f"{where}: {len(raw_tasks)} tasks is more than the limit of {MAX_TASKS_PER_DAG}")
        tasks = tuple(_task_from_dict(t, where) for t in raw_tasks)
        index: dict[str, int] = {}
        for i, task in enumerate(tasks):
            if task.task_id in index:
                raise SpecError(f"{where}: duplicate task id {task.task_id!r}")
            index[task.task_id] = i
        for task in tasks:
            for up in task.upstream:
                if up not in index:
                    raise SpecError(f"{where}: task {task.task_id!r} depends on unknown task {clip(up)}")
                if up == task.task_id:
                    raise SpecError(f"{where}: task {task.task_id!r} depends on itself")
        cycle = _find_cycle(tasks)
        if cycle:
            raise SpecError(f"{where}: dependency cycle {' -> '.join(cycle)}")
        return DagSpec(
            dag_id=dag_id,
            tasks=tasks,
            schedule=schedule,
            timezone=tz_name,
            start_date=start_date,
            end_date=end_date,
            catchup=catchup,
            max_active_runs=max_active_runs,
            max_active_tasks=max_active_tasks,
            description=_opt_str(raw, "description", where) or "",
            tags=tuple(tags),
            is_paused_upon_creation=bool(raw.get("is_paused_upon_creation", False)),
            keep_runs=keep_runs,
            keep_days=float(keep_days) if keep_days is not None else None,
            params=params,
            dagrun_timeout=dagrun_timeout,
            param_schemas=param_schemas,
            max_queued_runs=max_queued_runs,
            doc_md=_doc(raw, where),
            callbacks=_callbacks(raw, DAG_EVENTS, where),
            modules=_modules(raw, where),
            task_index=index,
        )


def schedule_note(spec: DagSpec) -> str | None:
    """A word for `dags submit` when the schedule fires more often than once a minute (a
    6-field cron's last field is seconds, so `* * * * * *` fires every second): allowed,
    but every tick is a run that every node records, so say so. None otherwise."""
    if spec.cron is None or len(spec.cron.split()) != 6:
        return None
    it = croniter(spec.cron, datetime(2000, 1, 3, tzinfo=zoneinfo.ZoneInfo(spec.timezone)))
    ticks = [it.get_next(float) for _ in range(6)]
    gap = min(b - a for a, b in zip(ticks, ticks[1:]))
    if gap >= 60:
        return None
    return (f"DAG {spec.dag_id!r}: schedule {spec.schedule!r} fires as often as every {gap:g} s (a 6-field "
            "cron's last field is seconds): each tick is a run that every node records; fine if that is what "
            "you meant")


# The fields of a DAG spec's JSON form: DagSpec's fields (task_index is derived).
# to_dict writes them, from_dict accepts them, authoring.DAG.to_spec produces them.
DAG_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DagSpec) if f.name != "task_index")
# TaskSpec's attributes; the kind-specific ones among them are set only by their kind.
_OWN_FIELDS = frozenset(f.name for f in fields(TaskSpec) if f.name != "args")


def _task_fields() -> frozenset[str]:
    """The fields a task's JSON may have: TaskSpec's, and every registered kind's."""
    return _OWN_FIELDS | {f for k in KINDS.values() for f in k.fields}


def _kind_of(raw: dict[str, Any], here: str) -> TaskKind:
    """The task's kind, after the checks every kind shares: `command` is there exactly
    when the kind takes one, and no other kind's fields are set."""
    name = raw.get("kind", "bash")
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise SpecError(f"{here}: unknown task kind {clip(name)}; known: {', '.join(sorted(KINDS))}")
    command = raw.get("command")
    if not kind.takes_command and command:
        raise SpecError(f"{here}: {kind.command_refusal}")
    if kind.takes_command and (not isinstance(command, str) or not command.strip()):
        raise SpecError(f"{here}: this {name} task needs a non-empty command string")
    for other in KINDS.values():
        theirs = [f for f in other.fields if f not in kind.fields and raw.get(f)]   # (those set)
        if other is not kind and theirs:
            verb = "belong" if len(theirs) > 1 else "belongs"
            raise SpecError(f"{here}: {' and '.join(theirs)} {verb} to {other.name} tasks, not {name}")
    return kind


def _task_from_dict(raw: Any, where: str) -> TaskSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: each task must be a JSON object")
    task_id = raw.get("task_id")
    task_id = _check_id(task_id, f"{where}: task_id")
    here = f"{where}, task {task_id!r}"
    _reject_unknown(raw, _task_fields(), here)
    for key, value in raw.items():    # (op_kwargs, env, ...: before anything walks them)
        if isinstance(value, (dict, list)):
            try:
                check_json(value, f"{here}: {key}")
            except JsonShapeError as e:
                raise SpecError(str(e)) from None
    kind = _kind_of(raw, here)
    upstream = raw.get("upstream") or []
    if not isinstance(upstream, list) or not all(isinstance(u, str) for u in upstream):
        raise SpecError(f"{here}: upstream must be a list of task ids")
    trigger_rule = raw.get("trigger_rule", "all_success")
    if isinstance(trigger_rule, str):
        trigger_rule = TRIGGER_RULE_ALIASES.get(trigger_rule, trigger_rule)
    if trigger_rule not in TRIGGER_RULES:
        raise SpecError(f"{here}: unknown trigger_rule {clip(trigger_rule)}; known: {', '.join(TRIGGER_RULES)}")
    env = raw.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise SpecError(f"{here}: env must map strings to strings")
    bad_env = [k for k in env if k.startswith("RAFTFLOW_")]
    if bad_env:
        raise SpecError(f"{here}: env may not set {clip(bad_env[0])}: RAFTFLOW_* variables are set by the worker")
    try:
        kind_values = kind.parse(raw, env)
    except InvalidArgs as e:
        raise SpecError(f"{here}: {e}") from None
    retry_delay = raw.get("retry_delay", 0.0)
    if not isinstance(retry_delay, (int, float)) or isinstance(retry_delay, bool) or not math.isfinite(retry_delay) \
            or retry_delay < 0:
        raise SpecError(f"{here}: retry_delay must be a finite number of seconds >= 0, got {clip(retry_delay)}")
    return TaskSpec(
        task_id=task_id,
        kind=kind.name,
        command=raw.get("command") or "",
        upstream=tuple(dict.fromkeys(upstream)),
        trigger_rule=trigger_rule,
        retries=_int(raw, "retries", 0, here, minimum=0),
        retry_delay=float(retry_delay),
        priority_weight=_int(raw, "priority_weight", 1, here, minimum=1),
        max_lost_attempts=_int(raw, "max_lost_attempts", 3, here, minimum=1),
        env=tuple(sorted(env.items())),
        execution_timeout=_opt_seconds(raw, "execution_timeout", here),
        retry_exponential_backoff=_bool_field(raw, "retry_exponential_backoff", here),
        max_retry_delay=_opt_seconds(raw, "max_retry_delay", here),
        pool=_name(raw, "pool", DEFAULT_POOL, here),
        pool_slots=_int(raw, "pool_slots", 1, here, minimum=1),
        queue=_name(raw, "queue", DEFAULT_QUEUE, here),
        depends_on_past=_bool_field(raw, "depends_on_past", here) or _bool_field(raw, "wait_for_downstream", here),
        wait_for_downstream=_bool_field(raw, "wait_for_downstream", here),
        group=_group(raw, here),
        doc_md=_doc(raw, here),
        callbacks=_callbacks(raw, TASK_EVENTS, here),
        # (a field at its kind's default is left out: `arg` supplies it, and specs made
        # before the field existed read and digest the same)
        args={k: v for k, v in kind_values.items() if k not in _OWN_FIELDS and not _is_default(kind, k, v)},
        **{k: v for k, v in kind_values.items() if k in _OWN_FIELDS},
    )


TASK_EVENTS = ("execute", "success", "failure", "retry")   # Airflow's on_<event>_callback of a task
DAG_EVENTS = ("success", "failure")                        # ... and of a DAG


def _callbacks(raw: dict[str, Any], events: tuple[str, ...], where: str) -> dict[str, str]:
    """{event: callable} - "package.module:function" or "__dag_file__:NAME", as a python
    task's python_callable."""
    value = raw.get("callbacks") or {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: callbacks must be an object of event: callable")
    for event, target in value.items():
        if event not in events:
            raise SpecError(f"{where}: unknown callback event {clip(event)}; known: {', '.join(events)}")
        if not isinstance(target, str) or not CALLABLE_PATTERN.fullmatch(target):
            raise SpecError(f"{where}: the {event} callback must be 'package.module:function', got {clip(target)}")
    return dict(value)


MAX_MODULES = 64
MAX_MODULES_BYTES = 256 * 1024   # (kept with every version of the DAG: bounded like its source)
MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(/[A-Za-z_][A-Za-z0-9_]{0,99}){0,7}\.py")


def _modules(raw: dict[str, Any], where: str) -> dict[str, str]:
    """The DAG folder's modules the file imports: relative paths of .py files (no `..`,
    no absolute path) to their source, at most MAX_MODULES and MAX_MODULES_BYTES."""
    value = raw.get("modules") or {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: modules must be an object of relative path: source")
    if len(value) > MAX_MODULES:
        raise SpecError(f"{where}: {len(value)} modules of the DAG's folder; the limit is {MAX_MODULES}")
    total = 0
    for path, source in value.items():
        if not isinstance(path, str) or not MODULE_PATH.fullmatch(path):
            raise SpecError(f"{where}: module path {clip(path)} must be a relative path of a .py file "
                            "(letters, digits, _ and /)")
        try:
            total += len(check_text(source, f"{where}: module {path}", MAX_MODULES_BYTES).encode())
        except JsonShapeError as e:
            raise SpecError(str(e)) from None
    if total > MAX_MODULES_BYTES:
        raise SpecError(f"{where}: the DAG folder's modules it imports are {total} bytes; the limit is "
                        f"{MAX_MODULES_BYTES}")
    return dict(value)


def _doc(raw: dict[str, Any], where: str) -> str:
    value = raw.get("doc_md") or ""
    if not isinstance(value, str):
        raise SpecError(f"{where}: doc_md must be a string (Markdown)")
    if len(value.encode()) > MAX_DOC_BYTES:
        raise SpecError(f"{where}: doc_md is {len(value.encode())} bytes; the limit is {MAX_DOC_BYTES}")
    return value


def _group(raw: dict[str, Any], where: str) -> str:
    value = raw.get("group") or ""
    if not isinstance(value, str) or (value and not GROUP_PATTERN.fullmatch(value)):
        raise SpecError(f"{where}: group {clip(value)} is invalid: a TaskGroup path, group ids joined by '.' "
                        "(each 1 to 200 characters from A-Z a-z 0-9 _ -, at most 16 levels)")
    return value


def _is_default(kind: TaskKind, name: str, value: Any) -> bool:
    default = kind.fields.get(name, _NO_DEFAULT)
    return type(value) is type(default) and value == default


_NO_DEFAULT = object()


def _check_id(value: Any, what: str) -> str:
    """`value`, if it is a valid id; else SpecError saying which rule it breaks."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise SpecError(f"{what} {clip(value)} is invalid: use {ID_RULE}")
    return value


def _reject_unknown(raw: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        names = [u if len(u) <= CLIP_CHARS else clip(u) for u in unknown[:5]]
        raise SpecError(f"{where}: unknown field(s) {', '.join(names)}{', ...' if len(unknown) > 5 else ''}")


def _opt_str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise SpecError(f"{where}: {key} must be a string")
    return value


def _int(raw: dict[str, Any], key: str, default: int, where: str, minimum: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SpecError(f"{where}: {key} must be an integer >= {minimum}, got {clip(value)}")
    return value


def _name(raw: dict[str, Any], key: str, default: str, where: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise SpecError(f"{where}: {key} {clip(value)} is invalid: use {ID_RULE}")
    return value


def _bool_field(raw: dict[str, Any], key: str, where: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise SpecError(f"{where}: {key} must be true or false, got {clip(value)}")
    return value


def _opt_seconds(raw: dict[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{where}: {key} must be a positive number of seconds, got {clip(value)}")
    return float(value)


def _opt_instant(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"{where}: {key} must be an ISO-8601 date or datetime string")
    if len(value) > 64:
        raise SpecError(f"{where}: {key} {clip(value)} is not an ISO-8601 date or datetime")
    return normalise_instant(value, f"{where}: {key}")


def normalise_instant(value: str, what: str) -> str:
    """ISO-8601 text -> canonical UTC text. A value without an offset is taken as UTC.
    Years MIN_YEAR to MAX_YEAR only (cron arithmetic past them overflows)."""
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed = parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError, TypeError):
        raise SpecError(f"{what} {clip(value)} is not an ISO-8601 date or datetime in range") from None
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise SpecError(f"{what} {clip(value)} is out of range: use a year from {MIN_YEAR} to {MAX_YEAR}")
    return parsed.isoformat()


def _find_cycle(tasks: tuple[TaskSpec, ...]) -> list[str] | None:
    """Return one dependency cycle as a path (first id repeated at the end), or None."""
    upstream = {t.task_id: t.upstream for t in tasks}
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(upstream, WHITE)
    for root in upstream:
        if colour[root] != WHITE:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = GREY
        while stack:
            node, i = stack[-1]
            ups = upstream[node]
            if i < len(ups):
                stack[-1] = (node, i + 1)
                nxt = ups[i]
                if colour[nxt] == GREY:
                    cycle = path[path.index(nxt):] + [nxt]
                    return list(reversed(cycle))
                if colour[nxt] == WHITE:
                    colour[nxt] = GREY
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = BLACK
                stack.pop()
                path.pop()
    return None
