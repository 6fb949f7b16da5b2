"""Builders and the World helper shared by the pure-core unit tests (imported by name;
fixtures live in conftest.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from raftflow.core import commands as c
from raftflow.core.model import Run, TaskInstance
from raftflow.core.planner import NodeInfo, plan
from raftflow.core.result import Code, Result
from raftflow.core.state import State
from raftflow.core.states import TaskState


def epoch(text: str) -> float:
    """ISO-8601 -> epoch seconds; a value without an offset is UTC."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()


# A fixed instant (a Wednesday, mid-day UTC, winter) all tests measure time from.
T0 = epoch("2024-01-10T12:00:00")
MINUTE = 60.0
HOUR = 3600.0


def task(task_id: str, upstream: Iterable[str] = (), command: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"task_id": task_id, "kind": "bash", "command": command or f"echo {task_id}",
            "upstream": list(upstream), **kw}


def dag_dict(dag_id: str = "d", tasks: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"dag_id": dag_id, "tasks": tasks if tasks is not None else [task("a")], **kw}


def diamond(dag_id: str = "diamond", **kw: Any) -> dict[str, Any]:
    """a and b in parallel, c after both."""
    return dag_dict(dag_id, [task("a"), task("b"), task("c", upstream=["a", "b"])], **kw)


def fingerprint(state: State) -> str:
    """The state's digest: every replicated field (the `applied` change counter is not one)."""
    return state.digest()


def nodes(*names: str, slots: int = 2, healthy: bool = True) -> list[NodeInfo]:
    return [NodeInfo(name, healthy, slots) for name in names]


def of_type(cmds: Iterable[c.Command], cls: type[c.Command]) -> list[Any]:
    return [cmd for cmd in cmds if isinstance(cmd, cls)]


class World:
    """One replica's State plus the drivers around it, for readable tests."""

    def __init__(self) -> None:
        self.state = State()

    # ---------------------------------------------------------------- apply
    def apply(self, cmd: c.Command, expect: Code | None = Code.OK) -> Result:
        """Apply one command; check its code, that a rejection changed nothing,
        and that the state's indexes still agree with its data."""
        before = fingerprint(self.state)
        result = self.state.apply(cmd)
        if expect is not None:
            assert result.code is expect, (cmd, result)
        if not result.ok:
            assert fingerprint(self.state) == before, f"rejected {cmd!r} changed the state"
        self.state.validate()
        return result

    def submit(self, spec: dict[str, Any], at: float = T0, source: str = "# dag source",
               expect: Code | None = Code.OK) -> Result:
        return self.apply(c.SubmitDag(spec, source, f"{spec.get('dag_id')}.py", at), expect)

    def trigger(self, run_id: str, dag_id: str = "d", at: float = T0, conf: Any = None,
                expect: Code | None = Code.OK, logical_date: str | None = None) -> Result:
        when = logical_date or iso(at)
        return self.apply(c.CreateRun(run_id, dag_id, when, when, when, "manual",
                                      {} if conf is None else conf, at), expect)

    def set_paused(self, dag_id: str, paused: bool, at: float = T0) -> Result:
        return self.apply(c.SetPaused(dag_id, paused, at))

    def tick(self, now: float, node_list: list[NodeInfo] | None = None, all_ok: bool = True) -> list[c.Command]:
        """What the leader does each loop: plan, then propose the plan as one Batch."""
        cmds = plan(self.state, now, node_list or [])
        if cmds:
            result = self.apply(c.Batch(tuple(cmds)))
            if all_ok:
                bad = [(cmd, r) for cmd, r in zip(cmds, result.value) if not r.ok]
                assert not bad, bad
        return cmds

    # ------------------------------------------------------- worker reports
    def start(self, run_id: str, task_id: str, at: float = T0, expect: Code | None = Code.OK) -> Result:
        ti = self.ti(run_id, task_id)
        return self.apply(c.TaskStarted(run_id, task_id, ti.attempt, ti.node, at), expect)

    def finish(self, run_id: str, task_id: str, exit_code: int = 0, at: float = T0,
               attempt: int | None = None, node: str | None = None,
               expect: Code | None = Code.OK, log_tail: str = "") -> Result:
        """Report a result as a worker does: its start claim first (if the attempt is the
        current, unstarted one), then the result. Stale reports go through as given."""
        ti = self.ti(run_id, task_id)
        attempt = ti.attempt if attempt is None else attempt
        node = ti.node if node is None else node
        if ti.state is TaskState.ASSIGNED and (attempt, node) == (ti.attempt, ti.node):
            self.apply(c.TaskStarted(run_id, task_id, attempt, node, at - 1.0))
        return self.apply(c.TaskFinished(run_id, task_id, attempt, node, exit_code, at - 1.0, at, log_tail, "", at),
                          expect)

    def run_task(self, run_id: str, task_id: str, exit_code: int = 0, at: float = T0) -> None:
        """Start and finish the current attempt of an assigned task."""
        self.start(run_id, task_id, at)
        self.finish(run_id, task_id, exit_code, at + 1.0)

    # -------------------------------------------------------------- reading
    def run(self, run_id: str) -> Run:
        return self.state.run(run_id)

    def ti(self, run_id: str, task_id: str) -> TaskInstance:
        return self.state.run(run_id).tasks[task_id]

    def task_states(self, run_id: str) -> dict[str, TaskState]:
        return {tid: ti.state for tid, ti in self.run(run_id).tasks.items()}

    def queue_and_assign(self, run_id: str, task_id: str, node: str = "n1", at: float = T0) -> None:
        """Hand-drive one task from PENDING to ASSIGNED (the run must be RUNNING)."""
        self.apply(c.QueueTask(run_id, task_id, at))
        self.apply(c.AssignTask(run_id, task_id, node, self.ti(run_id, task_id).attempt + 1, at))
