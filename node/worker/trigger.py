"""Runs a trigger_dagrun attempt inside the node (kinds/trigger_dagrun.py says what it
does and why it needs no process). Called by the worker (worker.py) once the
attempt's start claim committed and its templates were rendered, on the attempt's own
thread; it returns like a process would: (exit code, reason), and writes what it did
to the task log.

Fenced like a process attempt: it looks at `stopped()` (cancel, execution_timeout,
lapsed lease, shutdown) at least every STOP_POLL seconds and returns at once; the
worker then reports the attempt as it would a killed process (a fence or shutdown:
LoseAttempt, and the next attempt finds the run this one created).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core import commands as c
from ..core.result import Code, Result
from ..core.schedule import iso
from ..core.spec import TaskSpec
from ..kinds.trigger_dagrun import CONF_PREFIX
from ..raft.replica import propose_until_decided

STOP_POLL = 0.1
RUN_ID_PREFIX = "triggered"


@dataclass(frozen=True, slots=True)
class Parent:
    """The attempt that triggers: its run, task and try (failures so far + 1)."""
    run_id: str
    task_id: str
    try_number: int


def derived_run_id(target: str, parent: Parent) -> str:
    """The triggered run's id when trigger_run_id is empty: the same for every attempt of
    one try (a lost attempt's successor finds its run), new for the next try."""
    digest = hashlib.sha256(f"{parent.run_id}\0{parent.task_id}\0{parent.try_number}".encode()).hexdigest()
    return f"{RUN_ID_PREFIX}__{target}__{digest[:20]}"


def trigger_and_wait(task: TaskSpec, rendered: Mapping[str, str], parent: Parent,
                     propose: Callable[[c.Command, float], Result], run_state: Callable[[str], tuple[str, str] | None],
                     say: Callable[[str], None], stopped: Callable[[], str], stopping: Any,
                     deadline: float | None) -> tuple[int, str]:
    """(0, '') on success, (1, reason) on failure; (1, why) when stopped: the worker
    turns a fence or shutdown into a lost attempt."""
    target = rendered.get("trigger_dag_id", task.arg("trigger_dag_id"))
    conf: dict[str, Any] = dict(task.arg("conf"))
    conf.update({k[len(CONF_PREFIX):]: v for k, v in rendered.items() if k.startswith(CONF_PREFIX)})
    run_id = rendered.get("trigger_run_id") or derived_run_id(target, parent)
    now = time.time()
    logical = rendered.get("logical_date") or iso(now)
    command = c.CreateRun(run_id=run_id, dag_id=target, logical_date=logical, data_interval_start=logical,
                          data_interval_end=logical, trigger="manual", conf=conf, at=now)
    decision = propose_until_decided(propose, command, stopping, first_delay=0.05, max_delay=0.5,
                                     give_up=stopped, stopped="the node is shutting down")
    result = decision.result
    if result is None:
        return 1, f"stopped before the trigger of {target} committed: {decision.gave_up or decision.last_error}"
    if result.code is Code.CONFLICT and "already exists" in result.reason:
        known = run_state(run_id)
        if known is None or known[0] != target:
            return 1, f"cannot trigger {target}: run id {run_id!r} is taken by DAG {known[0] if known else '?'}"
        say(f"raftflow: run {run_id} of {target} exists already (an earlier attempt of this try triggered it); "
            "not triggering again")
    elif not result.ok:
        return 1, f"cannot trigger {target}: {result.reason}"
    else:
        say(f"raftflow: triggered {target}: run {run_id}")
    if not task.arg("wait_for_completion"):
        return 0, ""
    allowed, failed = set(task.arg("allowed_states")), set(task.arg("failed_states"))
    poke = float(task.arg("poke_interval"))
    say(f"raftflow: waiting for run {run_id} to end in {sorted(allowed)} (poking every {poke:g}s)")
    next_look = 0.0
    while True:
        why = stopped()
        if why:
            return 1, why
        if deadline is not None and time.monotonic() >= deadline:
            return 1, f"execution_timeout reached while waiting for run {run_id}"
        if time.monotonic() >= next_look:
            next_look = time.monotonic() + poke
            known = run_state(run_id)
            state = known[1] if known is not None else "gone"
            if state in failed:
                say(f"raftflow: run {run_id} is {state}")
                return 1, f"triggered run {run_id} of {target} is {state} (failed_states)"
            if state in allowed:
                say(f"raftflow: run {run_id} is {state}")
                return 0, ""
            if state in ("success", "failed", "gone"):
                return 1, (f"triggered run {run_id} of {target} ended {state}, which is in neither "
                           f"allowed_states {sorted(allowed)} nor failed_states {sorted(failed)}")
        time.sleep(STOP_POLL)
