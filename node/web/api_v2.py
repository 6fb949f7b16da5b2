"""Airflow 3's REST API (`/api/v2/`) over this node's operations, and raftflow's extras
under `/api/v2/raftflow/`.

Paths, field names and status codes follow Airflow's so that its clients (the
`apache-airflow-client` package among them) work unchanged; docs/api.md lists what is
served and how it differs. Handlers only translate: each names the Client RPC it is
equivalent to (session.require checks that RPC's role), calls api/operations.py or
api/cluster.py as the caller (session.acting_as), and shapes the answer.

Who calls: app.build_app mounts `routes(ctx)`.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any, Awaitable, Callable

from google.protobuf.json_format import MessageToDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..api import cluster as cluster_api, errors
from ..core.limits import clip
from ..core.model import Role, Run, TaskInstance
from ..core.spec import DagSpec
from ..core.states import TASK_ACTIVE, RunState, TaskState
from . import airflow_json as aj, reads, session
from .inputs import BadRequest, field, int_param, read_json, request_id

try:
    VERSION = package_version("raftflow")
except PackageNotFoundError:   # (running from a source tree that is not installed)
    VERSION = "0.0.0"

Json = dict[str, Any]
Endpoint = Callable[[Request], Awaitable[Response]]


def _answer(out: Json | Response) -> Response:
    return out if isinstance(out, Response) else JSONResponse(out)


def reading(rpc_name: str, handler: Callable[[Request], Json | Response]) -> Endpoint:
    """An endpoint that answers like the Client RPC `rpc_name` reads: `handler(request)`
    runs in the threadpool (it takes the replica lock) as the authorised caller."""
    def run(request: Request) -> Response:
        caller = session.require(request, rpc_name)
        with session.acting_as(caller):
            return _answer(handler(request))

    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(run, request)
    return endpoint


def writing(rpc_name: str, handler: Callable[[Request, Json], Json | Response]) -> Endpoint:
    """An endpoint that writes like the Client RPC `rpc_name`: the caller is authorised
    (and a cookie write CSRF-checked) before the body is read; the body must be a JSON
    object (bounded: inputs.read_json); `handler(request, body)` runs in the threadpool
    as the caller."""
    async def endpoint(request: Request) -> Response:
        caller = await run_in_threadpool(session.require, request, rpc_name)
        body = await read_json(request)

        def run() -> Response:
            with session.acting_as(caller):
                return _answer(handler(request, body))
        return await run_in_threadpool(run)
    return endpoint


# ---------------------------------------------------------------- monitor, version, whoami
def health(request: Request) -> Response:
    """Airflow's health check (no token needed, like Airflow's and the gRPC health
    service): this node's replica stands for the metadatabase, the Raft leader for the
    scheduler. 200 while this node knows a leader with quorum, else 503 with the same body."""
    ctx = request.app.state.ctx
    status = ctx.ops.replica.status()
    ok = status.leader_id is not None and status.has_quorum
    healthy = "healthy" if ok else "unhealthy"
    body = {
        "metadatabase": {"status": healthy},
        "scheduler": {"status": healthy, "latest_scheduler_heartbeat": None},
        "triggerer": {"status": None, "latest_triggerer_heartbeat": None},
        "dag_processor": {"status": None, "latest_dag_processor_heartbeat": None},
        "raftflow": {"node": ctx.node_id, "role": status.role, "leader": status.leader_id,
                     "has_quorum": status.has_quorum, "term": status.term,
                     "commit_index": status.commit_index, "last_applied": status.last_applied},
    }
    return JSONResponse(body, status_code=200 if ok else 503)


async def version(request: Request) -> Response:
    """Airflow's version endpoint (no token needed, like Airflow's): raftflow's version."""
    return JSONResponse({"version": VERSION, "git_version": None})


def whoami(request: Request) -> Response:
    """The caller's token name and role, and the node that answers (for the UI)."""
    caller = session.caller_of(request)
    return JSONResponse({"name": caller.name, "role": caller.role.value, "node_id": request.app.state.ctx.node_id,
                         "by_cookie": session.by_cookie(request)})


# ---------------------------------------------------------------- DAGs
MAX_PAGE = 1000     # the most items one page of a listing holds
DAG_ORDERS = {"dag_id": False, "-dag_id": True}
RUN_ORDERS = {"id": False, "-id": True, "run_after": False, "-run_after": True}


def _ctx(request: Request) -> Any:
    return request.app.state.ctx


def _bool_param(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise BadRequest(f"query parameter {name} must be true or false, got {clip(raw)}")


def _pattern_matches(pattern: str | None) -> Callable[[str], bool]:
    """Airflow's dag_id_pattern: case-insensitive, matched anywhere, % any run of
    characters, _ one character, | between alternatives, ~ everything."""
    if not pattern or pattern == "~":
        return lambda _dag_id: True
    regex = re.compile("|".join(".*".join(".".join(re.escape(part) for part in piece.split("_"))
                                          for piece in alternative.split("%")) for alternative in pattern.split("|")),
                       re.IGNORECASE)
    return lambda dag_id: regex.search(dag_id) is not None


def _only_params(request: Request, known: frozenset[str]) -> None:
    """A listing refuses a filter it does not apply (a silently ignored filter answers
    the wrong list)."""
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise BadRequest(f"raftflow does not support the query parameter(s) {', '.join(unknown)[:200]} here; "
                         f"it takes {', '.join(sorted(known))} (docs/api.md)")


DAG_LIST_PARAMS = frozenset({"limit", "offset", "order_by", "dag_id_pattern", "paused", "tags", "tags_match_mode",
                             "exclude_stale", "only_active"})
RUN_LIST_PARAMS = frozenset({"limit", "offset", "order_by", "state", "cursor"})


def list_dags(request: Request) -> Json:
    """GET /api/v2/dags: limit (default 100), offset, order_by (dag_id, -dag_id),
    dag_id_pattern, paused, tags (any of them; tags_match_mode=all: every one)."""
    _only_params(request, DAG_LIST_PARAMS)
    ops = _ctx(request).ops
    limit = int_param(request, "limit", 100, 0, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, 2**31)
    order = request.query_params.get("order_by", "dag_id")
    if order not in DAG_ORDERS:
        raise BadRequest(f"order_by must be one of {', '.join(DAG_ORDERS)} (raftflow orders DAGs by id), "
                         f"got {clip(order)}")
    matches = _pattern_matches(request.query_params.get("dag_id_pattern"))
    paused = _bool_param(request, "paused")
    tags = set(request.query_params.getlist("tags"))
    mode = request.query_params.get("tags_match_mode", "any")
    if mode not in ("any", "all"):
        raise BadRequest(f"tags_match_mode must be any or all, got {clip(mode)}")
    tagged = (lambda have: tags <= set(have)) if mode == "all" else (lambda have: bool(tags.intersection(have)))
    with ops.replica.lock:
        chosen = [r for r in ops.replica.state.dags.values()
                  if matches(r.dag_id) and (paused is None or r.paused == paused)
                  and (not tags or tagged(r.latest.spec.tags))]
        chosen.sort(key=lambda r: r.dag_id, reverse=DAG_ORDERS[order])
        page = [aj.dag_json(r) for r in chosen[offset:offset + limit]]
    return {"dags": page, "total_entries": len(chosen)}


def get_dag(request: Request) -> Json:
    ops = _ctx(request).ops
    with ops.replica.lock:
        return aj.dag_json(ops.record(request.path_params["dag_id"]))


def get_dag_details(request: Request) -> Json:
    ops = _ctx(request).ops
    with ops.replica.lock:
        return aj.dag_details_json(ops.record(request.path_params["dag_id"]))


def patch_dag(request: Request, body: Json) -> Json:
    """PATCH /api/v2/dags/{dag_id} {"is_paused": bool}, with an optional update_mask
    (query, repeatable or comma-separated) that may name only is_paused."""
    mask = [name for value in request.query_params.getlist("update_mask") for name in value.split(",") if name]
    unknown = [name for name in mask if name != "is_paused"]
    if unknown:
        raise BadRequest(f"update_mask may name only is_paused, got {clip(', '.join(unknown))}")
    extra = sorted(set(body) - {"is_paused"})
    if extra and not mask:
        raise BadRequest(f"is_paused is the only field of a DAG that can be changed; got {clip(', '.join(extra))}")
    paused = field(body, "is_paused", bool, "the body")
    if paused is None:
        raise BadRequest('the body must give is_paused, e.g. {"is_paused": true}')
    _ctx(request).ops.set_paused(request.path_params["dag_id"], paused, request_id=request_id(request))
    return get_dag(request)


def get_dag_source(request: Request) -> Json:
    """GET /api/v2/dagSources/{dag_id}?version_number=N: the source text of a version
    (default: the latest)."""
    dag_id = request.path_params["dag_id"]
    number = int_param(request, "version_number", 0, 1, 2**31) if request.query_params.get("version_number") else 0
    detail = _ctx(request).ops.get_dag(dag_id, number, include_code=True)
    return {"dag_id": dag_id, "dag_display_name": dag_id, "version_number": detail.shown_version,
            "content": detail.source or None}


def list_dag_versions(request: Request) -> Json:
    ops = _ctx(request).ops
    dag_id = request.path_params["dag_id"]
    with ops.replica.lock:
        versions = [aj.version_json(dag_id, v) for v in ops.record(dag_id).versions]
    return {"dag_versions": versions, "total_entries": len(versions)}


# ---------------------------------------------------------------- DAG runs
def _run_states(request: Request) -> list[RunState]:
    out = []
    for value in request.query_params.getlist("state"):
        for name in filter(None, value.split(",")):
            try:
                out.append(RunState(name))
            except ValueError:
                raise BadRequest(f"state must be one of {', '.join(s.value for s in RunState)}, got "
                                 f"{clip(name)}") from None
    return out


def list_dag_runs(request: Request) -> Json:
    """GET /api/v2/dags/{dag_id}/dagRuns (dag_id ~: every DAG): limit (default 100),
    offset, order_by (id, run_after, either with -: creation order), state (repeatable).
    Airflow's keyset `cursor` is not used: every answer is a whole page by offset, and
    none has a next_cursor."""
    _only_params(request, RUN_LIST_PARAMS)
    if request.query_params.get("cursor"):
        raise BadRequest("raftflow pages runs by offset and never hands out a cursor; send offset instead")
    ops = _ctx(request).ops
    limit = int_param(request, "limit", 100, 0, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, 2**31)
    order = request.query_params.get("order_by", "id")
    if order not in RUN_ORDERS:
        raise BadRequest(f"order_by must be one of {', '.join(RUN_ORDERS)} (runs are listed in the order they were "
                         f"created), got {clip(order)}")
    page = reads.list_runs(ops, request.path_params["dag_id"], limit, offset, newest_first=RUN_ORDERS[order],
                           states=_run_states(request))
    versions = reads.versions_of(ops, page.runs)
    return {"dag_runs": [aj.run_json(run, versions.get((run.dag_id, run.dag_version))) for run in page.runs],
            "total_entries": page.total}


def get_dag_run(request: Request) -> Json:
    found = reads.run_of(_ctx(request).ops, request.path_params["dag_id"], request.path_params["dag_run_id"])
    return aj.run_json(_header(found.run), found.version)


def _header(run: Run) -> Run:
    return replace(run, tasks={})


def trigger_dag_run(request: Request, body: Json) -> Json:
    """POST /api/v2/dags/{dag_id}/dagRuns {conf, logical_date (null: now), dag_run_id}."""
    what = "the body"
    unsupported = sorted(k for k in ("data_interval_start", "data_interval_end", "run_after", "partition_key")
                         if body.get(k) is not None)
    if unsupported:
        raise BadRequest(f"raftflow does not take {', '.join(unsupported)} for a manual run (its data interval is "
                         "its logical date); leave them out")
    conf = field(body, "conf", dict, what, default={})
    logical_date = field(body, "logical_date", str, what, default="")
    run_id = field(body, "dag_run_id", str, what, default="")
    field(body, "note", str, what)
    if "/" in run_id:
        raise BadRequest("dag_run_id may not contain '/' (it is part of the run's URLs)")
    dag_id = request.path_params["dag_id"]
    ops = _ctx(request).ops
    out = ops.trigger(dag_id, json.dumps(conf), request_id=request_id(request), logical_date=logical_date,
                      run_id=run_id)
    found = reads.run_of(ops, dag_id, out.run_id)
    return aj.run_json(_header(found.run), found.version)


def patch_dag_run(request: Request, body: Json) -> Json:
    """PATCH /api/v2/dags/{dag_id}/dagRuns/{dag_run_id} {"state": "failed"}: cancel the run
    (raftflow cannot set a run's state otherwise)."""
    state = field(body, "state", str, "the body")
    if state != "failed":
        raise BadRequest('raftflow can only cancel a run: send {"state": "failed"} (its unfinished tasks are '
                         "skipped and running attempts killed)")
    dag_id, run_id = request.path_params["dag_id"], request.path_params["dag_run_id"]
    ops = _ctx(request).ops
    reads.run_of(ops, dag_id, run_id)
    ops.cancel_run(run_id, field(body, "note", str, "the body", default=""), request_id=request_id(request))
    return get_dag_run(request)


# ---------------------------------------------------------------- task instances, tasks
def list_task_instances(request: Request) -> Json:
    found = reads.run_of(_ctx(request).ops, request.path_params["dag_id"], request.path_params["dag_run_id"])
    run, spec = found.run, found.version.spec
    tis = [aj.task_instance_json(run, spec, run.tasks[t.task_id], found.version) for t in spec.tasks]
    return {"task_instances": tis, "total_entries": len(tis)}


def get_task_instance(request: Request) -> Json:
    found = reads.run_of(_ctx(request).ops, request.path_params["dag_id"], request.path_params["dag_run_id"])
    ti = _task_instance_of(found, request.path_params["task_id"])
    return aj.task_instance_json(found.run, found.version.spec, ti, found.version)


def _task_instance_of(found: reads.RunWithSpec, task_id: str) -> TaskInstance:
    ti = found.run.tasks.get(task_id)
    if ti is None:
        raise errors.NotFound(f"run {found.run.run_id!r} has no task {clip(task_id)}; it has: "
                              f"{clip(', '.join(found.run.tasks), 200)}")
    return ti


def patch_task_instance(request: Request, body: Json) -> Json:
    """PATCH .../taskInstances/{task_id} {"new_state": "success" | "failed"}: mark it."""
    new_state = field(body, "new_state", str, "the body")
    if new_state not in ("success", "failed"):
        raise BadRequest('send {"new_state": "success"} or {"new_state": "failed"}: raftflow marks a task '
                         "instance success or failed")
    if body.get("include_upstream") or body.get("include_downstream") or body.get("include_future") \
            or body.get("include_past"):
        raise BadRequest("raftflow marks one task instance at a time: leave out include_upstream, "
                         "include_downstream, include_future and include_past")
    ops = _ctx(request).ops
    dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "dag_run_id", "task_id"))
    _task_instance_of(reads.run_of(ops, dag_id, run_id), task_id)
    ops.mark_task(run_id, task_id, new_state, request_id=request_id(request))
    return get_task_instance(request)


def list_tasks(request: Request) -> Json:
    spec, _version = reads.spec_of(_ctx(request).ops, request.path_params["dag_id"])
    downstream = spec.downstream_map()
    tasks = [aj.task_json(spec, task, downstream[task.task_id]) for task in spec.tasks]
    return {"tasks": tasks, "total_entries": len(tasks)}


def get_task(request: Request) -> Json:
    spec, _version = reads.spec_of(_ctx(request).ops, request.path_params["dag_id"])
    task_id = request.path_params["task_id"]
    if task_id not in spec.task_index:
        raise errors.NotFound(f"DAG {spec.dag_id!r} has no task {clip(task_id)}")
    return aj.task_json(spec, spec.task(task_id), spec.downstream_map()[task_id])


# ---------------------------------------------------------------- logs
MAX_LOG_RESPONSE = 1024 * 1024          # bytes of log in one answer; the continuation token reads on
MAX_FULL_LOG_RESPONSE = 16 * 1024 * 1024   # with full_content=true


def get_log(request: Request) -> Response:
    """GET .../taskInstances/{task_id}/logs/{try_number}: the attempt's log, from whichever
    node ran it. JSON {"content": [{"event": LINE}...], "continuation_token"}, or the text
    itself when the client accepts text/plain (and not JSON). `token` (a continuation
    token) reads on from where an earlier answer stopped; one answer holds at most 1 MiB
    (16 MiB with full_content=true)."""
    ctx = _ctx(request)
    dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "dag_run_id", "task_id"))
    raw_try = request.path_params["try_number"]
    if not raw_try.isdigit() or not 1 <= int(raw_try) <= 10**6:
        raise BadRequest(f"try_number must be a positive integer (1 is the first attempt), got {clip(raw_try)}")
    attempt = int(raw_try)
    token = request.query_params.get("token") or "0"
    if not token.isdigit() or len(token) > 12:
        raise BadRequest(f"token must be a continuation_token from an earlier answer, got {clip(token)}")
    found = reads.run_of(ctx.ops, dag_id, run_id)
    ti = _task_instance_of(found, task_id)
    if not 1 <= attempt <= ti.attempt:
        raise errors.NotFound(f"{task_id} in {run_id} has " + (
            f"attempts (try numbers) 1 to {ti.attempt}, not {attempt}" if ti.attempt else
            f"not run yet (state {ti.state.value}): no try {attempt}"))
    limit = MAX_FULL_LOG_RESPONSE if _bool_param(request, "full_content") else MAX_LOG_RESPONSE
    data, next_chunk, node = bytearray(), int(token), ""
    chunks = ctx.task_log(run_id, task_id, attempt, int(token))
    if ctx.log_reads is not None:
        chunks = ctx.log_reads.serve(chunks)
    try:
        for chunk in chunks:
            node = chunk.node or node
            if chunk.data:
                data += chunk.data
                next_chunk = chunk.index + 1
            if len(data) >= limit:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()   # (stops a peer's stream we did not read to its end)
    text = data.decode("utf-8", "replace")
    finished = ti.attempt > attempt or ti.state.terminal
    headers = {"x-raftflow-log-node": node, "x-raftflow-continuation-token": str(next_chunk)}
    if _prefers_text(request):
        return PlainTextResponse(text, headers=headers)
    return JSONResponse({"content": [{"event": line} for line in text.splitlines()],
                         "continuation_token": str(next_chunk), "raftflow_node": node,
                         "raftflow_attempt_finished": finished}, headers=headers)


def _prefers_text(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/plain" in accept and "application/json" not in accept


# ---------------------------------------------------------------- clear
def clear_task_instances(request: Request, body: Json) -> Json:
    """POST /api/v2/dags/{dag_id}/clearTaskInstances: within one run (dag_run_id), the
    task_ids given (default: every task), with include_downstream / include_upstream,
    kept to the failed ones if only_failed (Airflow's default: true) or the running ones
    if only_running; dry_run (Airflow's default: true) only says which it would clear."""
    what = "the body"
    unsupported = [k for k in ("include_future", "include_past") if body.get(k)]
    unsupported += [k for k in ("start_date", "end_date") if body.get(k) is not None]
    if unsupported:
        raise BadRequest(f"raftflow clears within one run: {', '.join(unsupported)} cannot be used; give dag_run_id")
    run_id = field(body, "dag_run_id", str, what)
    if not run_id:
        raise BadRequest("raftflow clears task instances of one run: give dag_run_id")
    task_ids = [_task_id_of(item) for item in field(body, "task_ids", list, what, default=[])]
    downstream = field(body, "include_downstream", bool, what, default=False)
    upstream = field(body, "include_upstream", bool, what, default=False)
    only_failed = field(body, "only_failed", bool, what, default=True)
    only_running = field(body, "only_running", bool, what, default=False)
    dry_run = field(body, "dry_run", bool, what, default=True)
    field(body, "note", str, what)
    for flag in ("reset_dag_runs", "prevent_running_task", "run_on_latest_version"):
        field(body, flag, bool, what)
    ops = _ctx(request).ops
    found = reads.run_of(ops, request.path_params["dag_id"], run_id)
    spec = found.version.spec
    for task_id in task_ids:
        _task_instance_of(found, task_id)
        if task_id not in spec.task_index:
            raise BadRequest(f"{task_id} is a callback: it runs once per event; clear its task instead")
    chosen = _closure(spec, task_ids or [t.task_id for t in spec.tasks], downstream, upstream)
    if only_failed:
        chosen = [t for t in chosen if found.run.tasks[t].state in (TaskState.FAILED, TaskState.UPSTREAM_FAILED)]
    if only_running:
        chosen = [t for t in chosen if found.run.tasks[t].state in TASK_ACTIVE]
    if chosen and not dry_run:
        ops.clear_tasks(run_id, chosen, False, request_id=request_id(request))
        found = reads.run_of(ops, request.path_params["dag_id"], run_id)
    tis = [aj.task_instance_json(found.run, spec, found.run.tasks[t], found.version) for t in chosen]
    return {"task_instances": tis, "total_entries": len(tis)}


def _task_id_of(item: Any) -> str:
    """A task_ids item: a task id, or Airflow's [task_id, map_index] (map_index -1: raftflow maps no tasks)."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[1] in (-1, None):
        return item[0]
    raise BadRequest(f"each of task_ids must be a task id (or [task_id, -1]), got {clip(item)}")


def _closure(spec: DagSpec, task_ids: list[str], downstream: bool, upstream: bool) -> list[str]:
    """`task_ids` and, if asked, everything downstream / upstream of them, in DAG order."""
    chosen = set(task_ids)
    edges: list[dict[str, list[str]]] = []
    if downstream:
        edges.append(spec.downstream_map())
    if upstream:
        edges.append({t.task_id: list(t.upstream) for t in spec.tasks})
    for adjacency in edges:
        todo = list(task_ids)
        while todo:
            for nxt in adjacency[todo.pop()]:
                if nxt not in chosen:
                    chosen.add(nxt)
                    todo.append(nxt)
    return [t.task_id for t in spec.tasks if t.task_id in chosen]


# ---------------------------------------------------------------- raftflow's extras
def _message(message: Any) -> Json:
    out: Json = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return out


def cluster(request: Request) -> Json:
    """GET /api/v2/raftflow/cluster: what `raftflow cluster status --json` shows (PIDs,
    addresses and SSH details for admins only)."""
    caller = session.caller_of(request)
    status = cluster_api.visible_to(_ctx(request).cluster_status(), admin=caller.role is Role.ADMIN)
    return _message(status)


def nodes(request: Request) -> Json:
    """GET /api/v2/raftflow/nodes: each node's id, role, health and web URL."""
    status = _ctx(request).cluster_status()
    return {"leader": status.leader, "served_by": status.served_by, "nodes": [
        {"id": n.id, "role": n.role, "healthy": n.healthy, "ready": n.ready, "web_url": n.web_url, "error": n.error,
         "raft_term": n.raft_term, "commit_index": n.commit_index, "running_tasks": n.running_tasks,
         "slots": n.slots, "last_heartbeat_age": n.last_heartbeat_age} for n in status.nodes]}


def task_story(request: Request) -> Json:
    """GET /api/v2/raftflow/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/story."""
    ops = _ctx(request).ops
    dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "dag_run_id", "task_id"))
    _task_instance_of(reads.run_of(ops, dag_id, run_id), task_id)
    return _message(ops.task_story(run_id, task_id))


def pools(request: Request) -> Json:
    return _message(_ctx(request).ops.list_pools())


def _threaded(handler: Callable[[Request], Response]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(handler, request)
    return endpoint


RUNS = "/api/v2/dags/{dag_id}/dagRuns"
TI = RUNS + "/{dag_run_id}/taskInstances"


def routes(ctx: Any) -> list[BaseRoute]:
    return [
        Route("/api/v2/monitor/health", _threaded(health), methods=["GET"]),
        Route("/api/v2/version", version, methods=["GET"]),
        Route("/api/v2/raftflow/whoami", _threaded(whoami), methods=["GET"]),
        Route("/api/v2/raftflow/cluster", reading("ClusterStatus", cluster), methods=["GET"]),
        Route("/api/v2/raftflow/nodes", reading("ClusterStatus", nodes), methods=["GET"]),
        Route("/api/v2/raftflow/pools", reading("ListPools", pools), methods=["GET"]),
        Route("/api/v2/raftflow/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/story",
              reading("GetTaskStory", task_story), methods=["GET"]),
        Route("/api/v2/dags", reading("ListDags", list_dags), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}", reading("GetDag", get_dag), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}", writing("SetPaused", patch_dag), methods=["PATCH"]),
        Route("/api/v2/dags/{dag_id}/details", reading("GetDag", get_dag_details), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}/dagVersions", reading("GetDag", list_dag_versions), methods=["GET"]),
        Route("/api/v2/dagSources/{dag_id}", reading("GetDag", get_dag_source), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}/tasks", reading("GetDag", list_tasks), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}/tasks/{task_id}", reading("GetDag", get_task), methods=["GET"]),
        Route(RUNS, reading("ListRuns", list_dag_runs), methods=["GET"]),
        Route(RUNS, writing("TriggerDag", trigger_dag_run), methods=["POST"]),
        Route(f"{RUNS}/{{dag_run_id}}", reading("GetRun", get_dag_run), methods=["GET"]),
        Route(f"{RUNS}/{{dag_run_id}}", writing("CancelRun", patch_dag_run), methods=["PATCH"]),
        Route(TI, reading("GetRun", list_task_instances), methods=["GET"]),
        Route(f"{TI}/{{task_id}}", reading("GetRun", get_task_instance), methods=["GET"]),
        Route(f"{TI}/{{task_id}}", writing("MarkTask", patch_task_instance), methods=["PATCH"]),
        Route(f"{TI}/{{task_id}}/logs/{{try_number}}", reading("GetTaskLog", get_log), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}/clearTaskInstances", writing("ClearTasks", clear_task_instances),
              methods=["POST"]),
    ]
