"""The trigger_dagrun kind (Airflow's TriggerDagRunOperator): triggers a run of
`trigger_dag_id` with `conf`, and with `wait_for_completion` waits for that run and
ends by its final state (`allowed_states` succeed it, `failed_states` fail it).

It runs no user code and starts no process: the worker runs it inside the node
(worker/trigger.py), fenced like any attempt (its start claim commits first; a cancel,
an execution_timeout or a lapsed lease stops it; a lost attempt runs again elsewhere).
It triggers through Raft as a client would (the CreateRun a `dags trigger` makes, with
the same checks in apply: the DAG exists, conf is a JSON object that satisfies its
params' schemas, max_queued_runs), proposed by the node. The triggered run's id is
`trigger_run_id` when given, else derived from (this run, this task, its try: the
failures so far + 1): an attempt run again after its node was lost derives the same
id, finds the run its predecessor created (CreateRun answers "already exists") and
waits for that one instead of triggering twice; a retry after a failure triggers anew,
as Airflow's does.

Fields: trigger_dag_id (a DAG id, templated), conf (JSON object; its top-level string
values are templates), wait_for_completion (default false), poke_interval (seconds
between looks at the triggered run, default 60, at least 0.1; the look is a read of
the node's own replica), logical_date and trigger_run_id (templates; "" for now and
for the derived id), allowed_states (default ["success"]) and failed_states (default
["failed"]), each a subset of the run states queued, running, success, failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.names import ID_PATTERN, ID_RULE
from .base import AttemptInput, CannotStart, InvalidArgs, Launch, TaskKind

if TYPE_CHECKING:
    from ..core.spec import TaskSpec

RUN_STATES = ("queued", "running", "success", "failed")
MIN_POKE_INTERVAL = 0.1
CONF_PREFIX = "conf."


def _is_template(text: str) -> bool:
    return any(marker in text for marker in ("{{", "{%", "{#"))


class TriggerDagRun(TaskKind):
    name: ClassVar[str] = "trigger_dagrun"
    takes_command: ClassVar[bool] = False
    command_refusal: ClassVar[str] = "a trigger_dagrun task triggers trigger_dag_id; it takes no command"
    fields: ClassVar[Mapping[str, Any]] = {
        "trigger_dag_id": "", "conf": {}, "wait_for_completion": False, "poke_interval": 60.0,
        "logical_date": "", "trigger_run_id": "", "allowed_states": ["success"], "failed_states": ["failed"],
    }
    in_node: ClassVar[bool] = True

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        dag_id = raw.get("trigger_dag_id", "")
        if not isinstance(dag_id, str) or not (ID_PATTERN.fullmatch(dag_id) or (dag_id and _is_template(dag_id))):
            raise InvalidArgs(f"trigger_dag_id must name a DAG ({ID_RULE}) or be a template, got {dag_id!r:.80}")
        conf = raw.get("conf") or {}
        if not isinstance(conf, dict):
            raise InvalidArgs(f"conf must be a JSON object, got {type(conf).__name__}")
        try:
            json.dumps(conf, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidArgs(f"conf must be plain JSON values ({e})") from None
        wait = raw.get("wait_for_completion", False)
        if not isinstance(wait, bool):
            raise InvalidArgs(f"wait_for_completion must be true or false, got {wait!r:.80}")
        poke = raw.get("poke_interval", 60.0)
        if not isinstance(poke, (int, float)) or isinstance(poke, bool) or not math.isfinite(poke) \
                or poke < MIN_POKE_INTERVAL:
            raise InvalidArgs(f"poke_interval must be a number of seconds >= {MIN_POKE_INTERVAL}, got {poke!r:.80}")
        values: dict[str, Any] = {"trigger_dag_id": dag_id, "conf": conf, "wait_for_completion": wait,
                                  "poke_interval": float(poke)}
        for name in ("logical_date", "trigger_run_id"):
            value = raw.get(name) or ""
            if not isinstance(value, str):
                raise InvalidArgs(f"{name} must be a string (a template, or empty), got {value!r:.80}")
            values[name] = value
        for name in ("allowed_states", "failed_states"):
            states = raw.get(name)
            states = list(self.fields[name]) if states is None else states
            if not isinstance(states, list) or not all(s in RUN_STATES for s in states):
                raise InvalidArgs(f"{name} must be a list of run states ({', '.join(RUN_STATES)}), "
                                  f"got {states!r:.80}")
            values[name] = list(dict.fromkeys(states))
        if set(values["allowed_states"]) & set(values["failed_states"]):
            raise InvalidArgs("allowed_states and failed_states must not share a state")
        return values

    def templates(self, task: TaskSpec) -> dict[str, str]:
        out = {name: task.arg(name) for name in ("trigger_dag_id", "logical_date", "trigger_run_id")}
        out.update({f"{CONF_PREFIX}{k}": v for k, v in task.arg("conf").items() if isinstance(v, str)})
        return {k: v for k, v in out.items() if v}

    def launch(self, attempt: AttemptInput) -> Launch:
        raise CannotStart("a trigger_dagrun task runs inside the node (worker/trigger.py), not as a process")


KIND = TriggerDagRun()
