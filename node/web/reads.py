"""Reads the web server needs beyond api/operations.py: pages of a long run history, a
run with its DAG version, both taken under the replica lock for as little as possible.

A listing takes, under the lock, the ids it shows (O(page); a filter by state looks at
every run of the DAG, a finished one decoded once and then remembered by its archive
record) and each run's header as it stands: an active run's fields are copied,
a finished run's archive record is taken still encoded and decoded after the lock is
released (as Operations.list_runs does); a run pruned in between is left out.

Who calls: api_v2.py, and the pages (web-ui) for the grid and the run lists.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from ..api import errors
from ..api.operations import Operations
from ..core.archive import decode_record
from ..core.codec import run_header_from_dict
from ..core.limits import clip
from ..core.model import DagVersion, Run
from ..core.spec import DagSpec
from ..core.states import RunState

ALL_DAGS = "~"      # Airflow's "every DAG" in a path
ACTIVE_STATES = frozenset({RunState.QUEUED, RunState.RUNNING})
# A filter by state reads the runs' states this many at a time, letting apply in between.
HEADER_BATCH = 500

Pending = Run | bytes    # a header copied under the lock, or an archive record to decode outside it


@dataclass(frozen=True, slots=True)
class RunPage:
    runs: list[Run]          # headers (no task instances), in the order asked
    total: int               # runs matching the filter, over every page


def _header(pending: Pending) -> Run:
    if isinstance(pending, bytes):
        return run_header_from_dict(decode_record(pending)[0])
    return pending


def _take(ops: Operations, run_ids: Iterable[str]) -> list[Pending]:
    """Caller holds the lock."""
    state = ops.replica.state
    out: list[Pending] = []
    for run_id in run_ids:
        run = state.active.get(run_id)
        if run is not None:
            out.append(replace(run, tasks={}))
        elif run_id in state.run_index:
            record = state.archive.get(run_id)
            if record is not None:
                out.append(record)
    return out


def run_ids_of(ops: Operations, dag_id: str) -> list[str]:
    """Every run id of a DAG (or of all, ALL_DAGS), oldest first; NotFound for an unknown DAG."""
    with ops.replica.lock:
        state = ops.replica.state
        if dag_id == ALL_DAGS:
            return list(state.run_index)
        ops.record(dag_id)
        return list(state.runs_by_dag.get(dag_id, {}))


def list_runs(ops: Operations, dag_id: str, limit: int, offset: int, newest_first: bool = False,
              states: Sequence[RunState] = ()) -> RunPage:
    """A page of a DAG's runs (ALL_DAGS: every DAG's) in creation order (newest first if
    asked), optionally only those in `states`."""
    if not states:
        with ops.replica.lock:
            state = ops.replica.state
            if dag_id == ALL_DAGS:
                ids: dict[str, Any] = state.run_index
            else:
                ops.record(dag_id)
                ids = state.runs_by_dag.get(dag_id, {})
            total = len(ids)
            ordered = reversed(ids) if newest_first else iter(ids)
            pending = _take(ops, itertools.islice(ordered, offset, offset + limit))
        return RunPage([_header(p) for p in pending], total)
    wanted = set(states)
    run_ids = run_ids_of(ops, dag_id)
    if newest_first:
        run_ids.reverse()
    if wanted <= ACTIVE_STATES:     # only active runs can be queued or running: no archive read
        with ops.replica.lock:
            active = ops.replica.state.active
            matching = [r for r in run_ids if r in active and active[r].state in wanted]
            pending = _take(ops, matching[offset:offset + limit])
        return RunPage([_header(p) for p in pending], len(matching))
    state_of = _states_of(ops, run_ids)
    matching = [run_id for run_id in run_ids if state_of.get(run_id) in wanted]
    with ops.replica.lock:
        pending = _take(ops, matching[offset:offset + limit])
    return RunPage([_header(p) for p in pending], len(matching))


# A finished run's state by its archive record's term (a sha256 of the record: the same
# record, the same term, on every node; a run reopened and finished again gets a new
# one). A filter by state decodes each finished run once, then answers from here.
# Bounded: emptied when it reaches MAX_CACHED_STATES.
_FINISHED_STATE: dict[int, RunState] = {}
MAX_CACHED_STATES = 200_000


def _states_of(ops: Operations, run_ids: Sequence[str]) -> dict[str, RunState]:
    """Each run's state (a run pruned meanwhile is left out): active runs from memory,
    finished ones from the cache or by decoding their record outside the lock, in
    batches of HEADER_BATCH so that apply is not held up."""
    out: dict[str, RunState] = {}
    for start in range(0, len(run_ids), HEADER_BATCH):
        undecoded: list[tuple[str, bytes]] = []
        with ops.replica.lock:
            state = ops.replica.state
            for run_id in run_ids[start:start + HEADER_BATCH]:
                run = state.active.get(run_id)
                if run is not None:
                    out[run_id] = run.state
                    continue
                term = state.archive_terms.get(run_id)
                known = _FINISHED_STATE.get(term) if term is not None else None
                if known is not None:
                    out[run_id] = known
                elif run_id in state.run_index:
                    record = state.archive.get(run_id)
                    if record is not None:
                        undecoded.append((run_id, record))
        for run_id, record in undecoded:
            data, term = decode_record(record)
            out[run_id] = RunState(data["state"])
            if len(_FINISHED_STATE) >= MAX_CACHED_STATES:
                _FINISHED_STATE.clear()
            _FINISHED_STATE[term] = out[run_id]
    return out


@dataclass(frozen=True, slots=True)
class RunWithSpec:
    run: Run                 # with its task instances
    version: DagVersion      # the DAG version it runs


def run_of(ops: Operations, dag_id: str, run_id: str) -> RunWithSpec:
    """A run of `dag_id` (ALL_DAGS: of any DAG) with its DAG version, else NotFound."""
    with ops.replica.lock:
        state = ops.replica.state
        if dag_id != ALL_DAGS:
            ops.record(dag_id)
        run = state.run(run_id)
        if run is None or (dag_id != ALL_DAGS and run.dag_id != dag_id):
            where = f"DAG {dag_id!r}" if dag_id != ALL_DAGS else "any DAG"
            raise errors.NotFound(f"{where} has no run {clip(run_id)}; GET /api/v2/dags/{dag_id}/dagRuns lists them")
        return RunWithSpec(run, state.dags[run.dag_id].versions[run.dag_version - 1])


def versions_of(ops: Operations, runs: Iterable[Run]) -> dict[tuple[str, int], DagVersion]:
    """The DAG version of each run (a run whose DAG is gone is left out)."""
    wanted = {(r.dag_id, r.dag_version) for r in runs}
    with ops.replica.lock:
        dags = ops.replica.state.dags
        return {(dag_id, v): dags[dag_id].versions[v - 1] for dag_id, v in wanted
                if dag_id in dags and 1 <= v <= len(dags[dag_id].versions)}


def spec_of(ops: Operations, dag_id: str) -> tuple[DagSpec, DagVersion]:
    """The latest version of a DAG, else NotFound."""
    with ops.replica.lock:
        latest = ops.record(dag_id).latest
        return latest.spec, latest
