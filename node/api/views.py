"""Read-only projections of replicated state into client API messages.

Callers hold the replica lock, except for `summary_of`, which decodes what
`pending_summary` took under it; nothing here mutates state. Times are ISO-8601 UTC.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TypeAlias, Union

from ..core import callbacks
from ..core.archive import decode_record
from ..core.codec import run_header_from_dict
from ..core.model import DagRecord, Run, StoryEvent
from ..core.pools import pool_usage
from ..core.spec import DEFAULT_POOL
from ..core.state import State
from ..proto import client_pb2


def iso(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def pools(state: State) -> list[client_pb2.PoolInfo]:
    """Every pool (the default one included), with slots in use and tasks queued: O(active)."""
    usage = pool_usage(state)
    names = sorted({DEFAULT_POOL, *state.pools, *usage.used, *usage.queued})
    return [client_pb2.PoolInfo(name=n, slots=state.pool_slots(n) or 0, used=usage.used.get(n, 0),
                                queued=usage.queued.get(n, 0))
            for n in names]


def story_event(event: StoryEvent) -> client_pb2.StoryEvent:
    return client_pb2.StoryEvent(
        index=event.index, at=iso(event.at), command=event.command, node=event.node or "", attempt=event.attempt,
        proposer=event.proposer, before=event.before.value, after=event.after.value, reason=event.reason)


def last_run(state: State, dag_id: str) -> Run | None:
    run_id = state.last_run_id(dag_id)
    return state.run(run_id) if run_id else None


# A run's summary as taken under the lock: built already (an active run), its archive
# record still encoded (a finished run: decoded by `summary_of`, outside the lock), or
# None (no such run).
PendingSummary: TypeAlias = Union[client_pb2.RunSummary, bytes, None]


def pending_summary(state: State, run_id: str) -> PendingSummary:
    """Under the lock, O(1) plus one archive read: no decode."""
    run = state.active.get(run_id)
    if run is not None:
        return run_summary(run)
    return state.archive.get(run_id) if run_id in state.run_index else None


def summary_of(pending: PendingSummary) -> client_pb2.RunSummary | None:
    """Outside the lock: the summary, decoding an archive record if need be."""
    if isinstance(pending, bytes):
        return run_summary(run_header_from_dict(decode_record(pending)[0]))
    return pending


def dag_summary(state: State, record: DagRecord, version: int = 0,
                with_last_run: bool = True) -> client_pb2.DagSummary:
    """`with_last_run=False` leaves last_run_id/state empty: a listing fills them in
    outside the lock (see Operations.list_dags)."""
    shown = record.versions[version - 1] if version else record.latest
    spec = shown.spec
    latest_run = last_run(state, record.dag_id) if with_last_run else None
    return client_pb2.DagSummary(
        dag_id=record.dag_id, version=shown.version, schedule=spec.schedule or "", timezone=spec.timezone,
        paused=record.paused, task_count=len(spec.tasks),
        next_run_at=iso(record.next_tick_at) if spec.schedule and not record.paused else "",
        last_run_id=latest_run.run_id if latest_run else "",
        last_run_state=latest_run.state.value if latest_run else "",
        filename=shown.filename, description=spec.description, tags=list(spec.tags), catchup=spec.catchup,
    )


def run_summary(run: Run) -> client_pb2.RunSummary:
    return client_pb2.RunSummary(
        run_id=run.run_id, dag_id=run.dag_id, state=run.state.value, trigger=run.trigger,
        logical_date=run.logical_date, created_at=iso(run.created_at), started_at=iso(run.started_at),
        ended_at=iso(run.ended_at), dag_version=run.dag_version, triggered_by=run.triggered_by,
    )


def run_detail(state: State, run: Run) -> client_pb2.RunDetail:
    spec = state.dag_spec(run)
    tasks = []
    # The tasks, then the run's callback instances (core/callbacks.py): kind "callback",
    # their owner task as their one upstream.
    shown = [(task.task_id, list(task.upstream), task.kind) for task in spec.tasks]
    for callback in callbacks.callback_instances(run, spec):
        parsed = callbacks.parse_id(callback.task_id)
        shown.append((callback.task_id, [parsed[0]] if parsed and parsed[0] else [], "callback"))
    for task_id, upstream, task_kind in shown:
        ti = run.tasks[task_id]
        info = client_pb2.TaskInstanceInfo(
            task_id=ti.task_id, state=ti.state.value, attempt=ti.attempt, node=ti.node or "",
            queued_at=iso(ti.queued_at), started_at=iso(ti.started_at), ended_at=iso(ti.ended_at),
            log_tail=ti.log_tail, reason=ti.reason, upstream=upstream,
            result_json=ti.result or "", kind=task_kind,
            xcoms_json=json.dumps({k: json.loads(v) for k, v in ti.xcoms.items()}) if ti.xcoms else "",
        )
        if ti.exit_code is not None:
            info.exit_code = ti.exit_code
        tasks.append(info)
    return client_pb2.RunDetail(
        run=run_summary(run), data_interval_start=run.data_interval_start,
        data_interval_end=run.data_interval_end, conf_json=json.dumps(run.conf, sort_keys=True), tasks=tasks,
    )
