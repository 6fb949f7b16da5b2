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

import re
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..api import views
from ..core.model import DagRecord
from ..core.state import State
from . import session
from .inputs import BadRequest, field, int_param, read_json, request_id

try:
    VERSION = package_version("raftflow")
except PackageNotFoundError:   # (running from a source tree that is not installed)
    VERSION = "0.0.0"

Json = dict[str, Any]
Endpoint = Callable[[Request], Awaitable[Response]]


def _answer(out: Json | Response) -> Response:
    return out if isinstance(out, Response) else JSONResponse(out)


def reads(rpc_name: str, handler: Callable[[Request], Json | Response]) -> Endpoint:
    """An endpoint that answers like the Client RPC `rpc_name` reads: `handler(request)`
    runs in the threadpool (it takes the replica lock) as the authorised caller."""
    def run(request: Request) -> Response:
        caller = session.require(request, rpc_name)
        with session.acting_as(caller):
            return _answer(handler(request))

    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(run, request)
    return endpoint


def writes(rpc_name: str, handler: Callable[[Request, Json], Json | Response]) -> Endpoint:
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
MAX_PAGE = 1000     # the most items one page of a listing holds (Airflow's default maximum too)
DAG_ORDERS = {"dag_id": False, "-dag_id": True}


def _iso_or_none(epoch: float | None) -> str | None:
    return views.iso(epoch) if epoch is not None else None


def dag_json(state: State, record: DagRecord) -> Json:
    """Airflow's DAGResponse for a DAG's latest version (caller holds the replica lock)."""
    shown = record.latest
    spec = shown.spec
    next_at = _iso_or_none(record.next_tick_at) if spec.schedule and not record.paused else None
    return {
        "dag_id": record.dag_id, "dag_display_name": record.dag_id,
        "is_paused": record.paused, "is_stale": False, "is_active": True,
        "last_parsed_time": views.iso(shown.submitted_at), "last_parse_duration": None, "last_expired": None,
        "bundle_name": None, "bundle_version": None,
        "relative_fileloc": shown.filename or None, "fileloc": shown.filename, "file_token": "",
        "description": spec.description or None,
        "timetable_summary": spec.schedule, "timetable_description": _schedule_text(spec.schedule, spec.timezone),
        "timetable_periodic": spec.schedule is not None, "timetable_partitioned": False,
        "is_backfillable": spec.schedule is not None,
        "tags": [{"name": tag, "dag_id": record.dag_id, "dag_display_name": record.dag_id} for tag in spec.tags],
        "max_active_tasks": spec.max_active_tasks, "max_active_runs": spec.max_active_runs,
        "max_consecutive_failed_dag_runs": 0, "has_task_concurrency_limits": False, "has_import_errors": False,
        "next_dagrun_logical_date": next_at, "next_dagrun_data_interval_start": next_at,
        "next_dagrun_data_interval_end": next_at, "next_dagrun_run_after": next_at,
        "owners": [], "allowed_run_types": None,
        # raftflow's own (Airflow clients ignore fields they do not know)
        "version": shown.version, "schedule": spec.schedule, "timezone": spec.timezone, "catchup": spec.catchup,
        "task_count": len(spec.tasks),
    }


def _schedule_text(schedule: str | None, timezone: str) -> str | None:
    return f"cron {schedule} ({timezone})" if schedule else "Never, external triggers only"


def _bool_param(request: Request, name: str) -> bool | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise BadRequest(f"query parameter {name} must be true or false, got {raw[:40]!r}")


def _pattern_matches(pattern: str | None) -> Callable[[str], bool]:
    """Airflow's dag_id_pattern is an SQL LIKE pattern matched anywhere, case-insensitive
    (% any run of characters, _ one character); plain text matches as a substring."""
    if not pattern:
        return lambda _dag_id: True
    regex = re.compile(".*".join(".".join(re.escape(part) for part in piece.split("_"))
                                 for piece in pattern.split("%")), re.IGNORECASE)
    return lambda dag_id: regex.search(dag_id) is not None


def list_dags(request: Request) -> Json:
    """GET /api/v2/dags: limit (default 100), offset, order_by (dag_id, -dag_id),
    dag_id_pattern, paused, tags (any of them)."""
    ctx = request.app.state.ctx
    limit = int_param(request, "limit", 100, 0, MAX_PAGE)
    offset = int_param(request, "offset", 0, 0, 2**31)
    order = request.query_params.get("order_by", "dag_id")
    if order not in DAG_ORDERS:
        raise BadRequest(f"order_by must be one of {', '.join(DAG_ORDERS)}, got {order[:40]!r}")
    matches = _pattern_matches(request.query_params.get("dag_id_pattern"))
    paused = _bool_param(request, "paused")
    tags = set(request.query_params.getlist("tags"))
    with ctx.ops.replica.lock:
        state = ctx.ops.replica.state
        chosen = [r for r in state.dags.values()
                  if matches(r.dag_id) and (paused is None or r.paused == paused)
                  and (not tags or tags.intersection(r.latest.spec.tags))]
        chosen.sort(key=lambda r: r.dag_id, reverse=DAG_ORDERS[order])
        page = [dag_json(state, r) for r in chosen[offset:offset + limit]]
    return {"dags": page, "total_entries": len(chosen)}


def get_dag(request: Request) -> Json:
    ctx = request.app.state.ctx
    with ctx.ops.replica.lock:
        return dag_json(ctx.ops.replica.state, ctx.ops.record(request.path_params["dag_id"]))


def patch_dag(request: Request, body: Json) -> Json:
    """PATCH /api/v2/dags/{dag_id} {"is_paused": bool}, with an optional update_mask
    (query, repeatable or comma-separated) that may name only is_paused."""
    dag_id = request.path_params["dag_id"]
    mask = [name for value in request.query_params.getlist("update_mask") for name in value.split(",") if name]
    unknown = [name for name in mask if name != "is_paused"]
    if unknown:
        raise BadRequest(f"update_mask may name only is_paused, got {', '.join(unknown)[:80]}")
    extra = sorted(set(body) - {"is_paused"})
    if extra and not mask:
        raise BadRequest(f"a DAG's only field that can be changed is is_paused; got {', '.join(extra)[:80]}")
    paused = field(body, "is_paused", bool, "the body")
    if paused is None:
        raise BadRequest('the body must give is_paused, e.g. {"is_paused": true}')
    ctx = request.app.state.ctx
    ctx.ops.set_paused(dag_id, paused, request_id=request_id(request))
    return get_dag(request)


def _threaded(handler: Callable[[Request], Response]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(handler, request)
    return endpoint


def routes(ctx: Any) -> list[BaseRoute]:
    return [
        Route("/api/v2/monitor/health", _threaded(health), methods=["GET"]),
        Route("/api/v2/version", version, methods=["GET"]),
        Route("/api/v2/raftflow/whoami", _threaded(whoami), methods=["GET"]),
        Route("/api/v2/dags", reads("ListDags", list_dags), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}", reads("GetDag", get_dag), methods=["GET"]),
        Route("/api/v2/dags/{dag_id}", writes("SetPaused", patch_dag), methods=["PATCH"]),
    ]
