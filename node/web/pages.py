"""The web UI's pages and the small JSON endpoints their script calls.

Owns: every HTML page (server-rendered with Jinja2 from templates/, autoescaped) at
the stable URLs of issue #15 (/login, /dags, /dags/ID/{graph,grid,code,details},
/dags/ID/runs/RUN, /dags/ID/runs/RUN/tasks/TASK, /cluster), and the endpoints
under /ui/ that static/raftflow.js calls: the writes behind the pages' buttons
(trigger, pause, cancel, clear, mark) and a task log's next chunks.

Who calls: app.py's `build_app` mounts `routes(ctx)`. Everything here reads and
writes through `ctx.ops` (api/operations.py) and the context's callables, so every
check, limit and message is the gRPC API's own; `session.require` authorises each
request by the equivalent Client RPC's role (api/auth.py's REQUIRED_ROLE), and
writes run `session.acting_as` the caller (so runs and stories name the token).

Live updates: a page marks the parts that change with `data-live="NAME"`; the script
re-fetches the page's own URL every 0.75 s and swaps those parts in place
(no reload). Buttons a role may not use are not rendered; the server refuses the
request anyway. Errors: unknown DAG/run/task is a 404 page naming it, bad input a
400 saying what was wrong; an unexpected failure is logged and shown as a 500 page
without its traceback.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Sequence
from urllib.parse import quote, urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ..api import errors
from ..api.auth import Caller
from ..api.cluster import visible_to
from ..core.model import Role
from ..core.states import TASK_TERMINAL, RunState, TaskState
from ..proto import client_pb2
from . import reads, session  # (session.py imports this module for login_page: its names are read at call time)
from .inputs import BadRequest, read_json

if TYPE_CHECKING:
    from .app import WebContext

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
DAGS_PER_PAGE = 50          # rows of the DAG list (filtered first, then paged)
RUNS_PER_PAGE = 25          # grid columns, and the run choices of a graph
LAST_RUNS = 5               # coloured marks of a DAG's last runs in the list
TIMELINE_STORIES = 200      # a run of at most this many tasks shows every attempt (one story read per task)
LOG_BYTES_PER_POLL = 256 * 1024   # a log poll answers at most this much (the next poll continues)
# A task page follows its log while the task is in none of these; a run page offers cancel
# while the run is in none of these.
TASK_ENDED = frozenset(s.value for s in TASK_TERMINAL)
RUN_ENDED = frozenset(s.value for s in RunState if s.terminal)
# Airflow's state colours (its UI's legend), so our users' eyes find what they know
# (static/raftflow.css has the same; a unit test checks every task state has one).
STATE_COLOURS: dict[str, str] = {
    TaskState.SUCCESS.value: "#008000", TaskState.FAILED.value: "#ff0000", TaskState.RUNNING.value: "#32cd32",
    TaskState.QUEUED.value: "#808080", TaskState.ASSIGNED.value: "#a9a9a9", TaskState.PENDING.value: "#d3d3d3",
    TaskState.UP_FOR_RETRY.value: "#ffd700", TaskState.UPSTREAM_FAILED.value: "#ffa500",
    TaskState.SKIPPED.value: "#ff69b4",
}


class Tab(str, Enum):
    """The tabs of a DAG's page."""
    GRAPH = "graph"
    GRID = "grid"
    CODE = "code"
    DETAILS = "details"


# ------------------------------------------------------------------ formatting
def _parse_iso(text: str) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def when(text: str) -> str:
    """An ISO-8601 instant as 'YYYY-MM-DD HH:MM:SS' UTC ('' stays '')."""
    parsed = _parse_iso(text)
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if parsed else text


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def seconds_between(start: str, end: str, now: float) -> float | None:
    """From `start` to `end` (to `now` if it has not ended); None if it did not start."""
    begun = _parse_iso(start)
    if begun is None:
        return None
    ended = _parse_iso(end)
    return (ended.timestamp() if ended else now) - begun.timestamp()


def path(*parts: str) -> str:
    """A URL path from raw segments, each percent-encoded (ids may hold ':' and '+')."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


def _environment() -> jinja2.Environment:
    """The pages' Jinja2 environment: autoescaped (user text such as a DAG's description
    is always escaped), strict about undefined names."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, duration=duration)
    env.globals.update(path=path, colours=STATE_COLOURS, urlencode=urlencode)
    return env


ENV = _environment()


def login_page(message: str, next_path: str) -> str:
    """The login form (field `name="token"`), saying why the last try failed ("" for
    none); session.py serves it for failed logins, this module for GET /login."""
    return ENV.get_template("login.html").render(caller=None, node_id="", next_url=session.local_path(next_path),
                                                 error=message, can_operate=False)


# ------------------------------------------------------------------ page data
@dataclass(frozen=True, slots=True)
class Pager:
    """One page of `total` items, `size` a page; page numbers from 1."""
    page: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    def window(self, items: Sequence[Any]) -> Sequence[Any]:
        return items[self.offset:self.offset + self.size]


def page_number(request: Request) -> int:
    raw = request.query_params.get("page", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"page must be a whole number from 1, not {raw[:40]!r}")
    return int(raw)


def pager(request: Request, size: int, total: int) -> Pager:
    page = page_number(request)
    last = max(1, math.ceil(total / size))
    if page > last:
        raise errors.NotFound(f"there are {last} page(s), not {page}")
    return Pager(page, size, total)


@dataclass(frozen=True, slots=True)
class Span:
    """One attempt of a task on the timeline."""
    task_id: str
    attempt: int
    node: str
    state: str            # how it ended, or "running"
    start: float
    end: float | None     # None: still running


def attempt_spans(ti: client_pb2.TaskInstanceInfo,
                  story: Sequence[client_pb2.StoryEvent] | None) -> list[Span]:
    """Every attempt of the task that started, read from its story (each move into
    `running` opens one, the attempt's next move out of it closes it); without a story
    (a run too large to read every task's), the current attempt from the task instance."""
    if story is None:
        begun, ended = _parse_iso(ti.started_at), _parse_iso(ti.ended_at)
        if begun is None:
            return []
        return [Span(ti.task_id, ti.attempt, ti.node, ti.state, begun.timestamp(),
                     ended.timestamp() if ended else None)]
    spans: list[Span] = []
    running: dict[int, tuple[float, str]] = {}
    for event in story:
        at = _parse_iso(event.at)
        if at is None:
            continue
        if event.after == TaskState.RUNNING.value:
            running[event.attempt] = (at.timestamp(), event.node)
        elif event.before == TaskState.RUNNING.value and event.attempt in running:
            start, node = running.pop(event.attempt)
            spans.append(Span(ti.task_id, event.attempt, node, event.after, start, at.timestamp()))
    if ti.attempt in running and ti.state == TaskState.RUNNING.value:
        start, node = running[ti.attempt]
        spans.append(Span(ti.task_id, ti.attempt, node, ti.state, start, None))
    # (an attempt whose end fell out of the story's last entries is left out)
    return spans


@dataclass(frozen=True, slots=True)
class GanttBar:
    span: Span
    left: float      # percent of the timeline
    width: float


def gantt(spans: Sequence[Span], now: float) -> tuple[list[GanttBar], float]:
    """The spans as bars on one timeline (a running one to `now`), in order of start,
    and the timeline's length in seconds."""
    if not spans:
        return [], 0.0
    first = min(s.start for s in spans)
    total = max(max(now if s.end is None else s.end for s in spans) - first, 1e-3)
    return [GanttBar(s, 100 * (s.start - first) / total,
                     max(100 * ((now if s.end is None else s.end) - s.start) / total, 0.5))
            for s in sorted(spans, key=lambda s: (s.start, s.task_id))], total


# ------------------------------------------------------------------ the pages
class Pages:
    """The handlers, over one node's WebContext."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.ops = ctx.ops
        self.env = ENV

    # -------------------------------------------------------------- rendering
    def render(self, request: Request, template: str, caller: Caller | None, http_status: int = 200,
               **values: Any) -> HTMLResponse:
        role = caller.role if caller is not None else None
        html = self.env.get_template(template).render(
            request=request, caller=caller, node_id=self.ctx.node_id,
            can_operate=role is not None and role.allows(Role.OPERATOR), **values)
        return HTMLResponse(html, status_code=http_status, headers={"Cache-Control": "no-store"})

    def error_page(self, request: Request, status: int, title: str, message: str,
                   caller: Caller | None = None) -> HTMLResponse:
        return self.render(request, "error.html", caller, http_status=status, title=title, message=message)

    def page(self, handler: Callable[[Request, Caller], Response], rpc: str) -> Callable[[Request],
                                                                                            Awaitable[Response]]:
        """A page endpoint: authorised as `rpc`, run off the event loop (reads take the
        replica lock), every failure turned into a page a person can act on."""
        async def endpoint(request: Request) -> Response:
            try:
                caller = session.require(request, rpc)
            except session.Unauthenticated:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
            except session.Forbidden as e:
                return self.error_page(request, 403, "Not allowed", e.message)
            try:
                return await run_in_threadpool(handler, request, caller)
            except errors.NotFound as e:
                return self.error_page(request, 404, "Not found", e.message, caller)
            except BadRequest as e:
                return self.error_page(request, e.status, "Bad request", e.message, caller)
            except errors.ServiceError as e:
                status = _status(e)
                title = "Bad request" if status == 400 else "Not available now" if status >= 500 else "Refused"
                return self.error_page(request, status, title, e.message, caller)
            except Exception:
                log.exception("page %s failed", request.url.path)
                return self.error_page(request, 500, "Internal error",
                                       f"node {self.ctx.node_id} failed to build this page; its log has the details",
                                       caller)
        return endpoint

    def json_endpoint(self, handler: Callable[[Request, Caller, dict[str, Any]], dict[str, Any]],
                      rpc: str) -> Callable[[Request], Awaitable[Response]]:
        """An endpoint of the pages' script: authorised as `rpc`; a write's body is a JSON
        object and it runs as the caller; the answer is JSON, an error {"detail": why}
        with the REST API's status for it."""
        async def endpoint(request: Request) -> Response:
            try:
                caller = session.require(request, rpc)
                body = {} if request.method in session.SAFE_METHODS else await read_json(request)
                with session.acting_as(caller):
                    answer = await run_in_threadpool(handler, request, caller, body)
                return JSONResponse(answer, headers={"Cache-Control": "no-store"})
            except session.Unauthenticated as e:
                return _json_error(401, e.message)
            except session.Forbidden as e:
                return _json_error(403, e.message)
            except BadRequest as e:
                return _json_error(e.status, e.message)
            except errors.ServiceError as e:
                return _json_error(_status(e), e.message)
            except Exception:
                log.exception("%s %s failed", request.method, request.url.path)
                return _json_error(500, f"node {self.ctx.node_id} failed; its log has the details")
        return endpoint

    # -------------------------------------------------------------- lookups
    def run_of(self, dag_id: str, run_id: str) -> client_pb2.RunDetail:
        """The run, if it is one of this DAG's (NotFound otherwise)."""
        self.ops.get_dag(dag_id)   # NotFound naming the DAG first
        detail = self.ops.get_run(run_id)
        if detail.run.dag_id != dag_id:
            raise errors.NotFound(f"run {run_id!r} is a run of {detail.run.dag_id!r}, not of {dag_id!r}")
        return detail

    def chosen_run(self, request: Request, dag_id: str) -> client_pb2.RunDetail | None:
        """`?run_id=` (which must be this DAG's), else the DAG's latest run, else None."""
        run_id = request.query_params.get("run_id", "")
        if run_id:
            return self.run_of(dag_id, run_id)
        latest = self.ops.list_runs(dag_id, 1).runs
        return self.ops.get_run(latest[0].run_id) if latest else None

    def dag_header(self, dag_id: str) -> client_pb2.DagDetail:
        return self.ops.get_dag(dag_id)

    # -------------------------------------------------------------- handlers
    def dags(self, request: Request, caller: Caller) -> Response:
        query = request.query_params.get("q", "").strip()
        listing = self.ops.list_dags()
        needle = query.lower()
        matching = [d for d in listing.dags if needle in d.dag_id.lower()
                    or any(needle in t.lower() for t in d.tags)] if needle else list(listing.dags)
        pages = pager(request, DAGS_PER_PAGE, len(matching))
        rows = []
        for dag in pages.window(matching):
            try:
                recent = list(reversed(self.ops.list_runs(dag.dag_id, LAST_RUNS).runs))
            except errors.NotFound:   # deleted meanwhile
                continue
            rows.append((dag, recent))
        return self.render(request, "dags.html", caller, rows=rows, query=query, pages=pages,
                           total=len(listing.dags), meta=listing.meta)

    def graph(self, request: Request, caller: Caller) -> Response:
        dag_id = request.path_params["dag_id"]
        dag = self.dag_header(dag_id)
        run = self.chosen_run(request, dag_id)
        shown = self.ops.get_dag(dag_id, run.run.dag_version) if run is not None and run.run.dag_version else dag
        spec = json.loads(shown.spec_json)
        instances = {ti.task_id: ti for ti in run.tasks} if run is not None else {}
        tasks = [{"id": t["task_id"], "kind": t["kind"], "upstream": list(t["upstream"]),
                  "state": instances[t["task_id"]].state if t["task_id"] in instances else "",
                  "reason": instances[t["task_id"]].reason if t["task_id"] in instances else ""}
                 for t in spec["tasks"]]
        recent = self.ops.list_runs(dag_id, RUNS_PER_PAGE).runs
        return self.render(request, "dag_graph.html", caller, tab=Tab.GRAPH, dag=dag, run=run, tasks=tasks,
                           recent=recent, shown_version=shown.shown_version)

    def grid(self, request: Request, caller: Caller) -> Response:
        dag_id = request.path_params["dag_id"]
        dag = self.dag_header(dag_id)
        listed = reads.list_runs(self.ops, dag_id, RUNS_PER_PAGE, (page_number(request) - 1) * RUNS_PER_PAGE,
                                 newest_first=True)
        pages = pager(request, RUNS_PER_PAGE, listed.total)
        runs = []
        for header in reversed(listed.runs):   # oldest left, newest right, as Airflow's grid
            try:
                runs.append(self.ops.get_run(header.run_id))
            except errors.NotFound:            # pruned by retention meanwhile
                continue
        task_ids = [t["task_id"] for t in json.loads(dag.spec_json)["tasks"]]
        for run in runs:                       # tasks only older versions had, after the current ones
            task_ids.extend(t.task_id for t in run.tasks if t.task_id not in task_ids)
        cells = {(run.run.run_id, ti.task_id): ti for run in runs for ti in run.tasks}
        return self.render(request, "dag_grid.html", caller, tab=Tab.GRID, dag=dag, runs=runs, task_ids=task_ids,
                           cells=cells, pages=pages)

    def code(self, request: Request, caller: Caller) -> Response:
        dag_id = request.path_params["dag_id"]
        dag = self.dag_header(dag_id)
        raw = request.query_params.get("version", "")
        if raw and not raw.isdigit():
            raise BadRequest(f"version must be a whole number, not {raw[:40]!r}")
        shown = self.ops.get_dag(dag_id, int(raw or 0), include_code=True)
        versions = list(range(dag.summary.version, 0, -1))
        return self.render(request, "dag_code.html", caller, tab=Tab.CODE, dag=dag, shown=shown, versions=versions)

    def details(self, request: Request, caller: Caller) -> Response:
        dag_id = request.path_params["dag_id"]
        dag = self.dag_header(dag_id)
        spec = json.loads(dag.spec_json)
        return self.render(request, "dag_details.html", caller, tab=Tab.DETAILS, dag=dag, spec=spec,
                           pretty=lambda v: json.dumps(v, indent=2, sort_keys=True))

    def run(self, request: Request, caller: Caller) -> Response:
        dag_id, run_id = request.path_params["dag_id"], request.path_params["run_id"]
        dag = self.dag_header(dag_id)
        run = self.run_of(dag_id, run_id)
        now = datetime.now(timezone.utc).timestamp()
        stories = ({ti.task_id: list(self.ops.task_story(run_id, ti.task_id).events) for ti in run.tasks}
                   if len(run.tasks) <= TIMELINE_STORIES else {})
        bars, span = gantt([s for ti in run.tasks for s in attempt_spans(ti, stories.get(ti.task_id))], now)
        return self.render(request, "run.html", caller, dag=dag, run=run, bars=bars, span=span, now=now,
                           every_attempt=bool(stories) or not run.tasks,
                           seconds_between=seconds_between, active=run.run.state not in RUN_ENDED)

    def task(self, request: Request, caller: Caller) -> Response:
        dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "run_id", "task_id"))
        dag = self.dag_header(dag_id)
        run = self.run_of(dag_id, run_id)
        ti = next((t for t in run.tasks if t.task_id == task_id), None)
        if ti is None:
            raise errors.NotFound(f"run {run_id!r} has no task {task_id!r}; it has: "
                                  + ", ".join(t.task_id for t in run.tasks))
        raw = request.query_params.get("attempt", "")
        if raw and (not raw.isdigit() or not 1 <= int(raw) <= max(ti.attempt, 1)):
            raise errors.NotFound(f"{task_id} has attempts 1 to {ti.attempt}, not {raw[:20]!r}")
        attempt = int(raw or ti.attempt)   # (the log of the page without ?attempt= follows the latest)
        attempts = [self.ops.log_location(run_id, task_id, n) for n in range(1, ti.attempt + 1)]
        story = self.ops.task_story(run_id, task_id)
        now = datetime.now(timezone.utc).timestamp()
        return self.render(request, "task.html", caller, dag=dag, run=run, ti=ti, attempt=attempt, latest=not raw,
                           attempts=attempts, story=story, seconds_between=seconds_between, now=now,
                           following=ti.state not in TASK_ENDED)

    def cluster(self, request: Request, caller: Caller) -> Response:
        status = visible_to(self.ctx.cluster_status(), caller.role == Role.ADMIN)
        pools = self.ops.list_pools()
        return self.render(request, "cluster.html", caller, status=status, pools=pools)

    # -------------------------------------------------------------- JSON
    def task_log(self, request: Request, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """GET ?attempt=N (0: the latest) &from=CHUNK: the log's next piece (`log_chunks`)."""
        numbers = []
        for name in ("attempt", "from"):
            raw = request.query_params.get(name, "0")
            if not raw.isdigit():
                raise BadRequest(f"{name} must be a whole number, not {raw[:40]!r}")
            numbers.append(int(raw))
        dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "run_id", "task_id"))
        self.run_of(dag_id, run_id)
        return self.log_chunks(run_id, task_id, *numbers)

    def log_chunks(self, run_id: str, task_id: str, attempt: int, first: int) -> dict[str, Any]:
        """An attempt's log (0: the latest) from chunk `first` on, at most about
        LOG_BYTES_PER_POLL: {"text", "next", "node", "attempt"}; the script polls again
        from `next` (so a running task's log follows)."""
        parts: list[bytes] = []
        size, following, node, shown = 0, first, "", attempt
        chunks: Iterator[client_pb2.LogChunk] = iter(self.ctx.task_log(run_id, task_id, attempt, first))
        if self.ctx.log_reads is not None:   # (the node's bound on log reads at once: Exhausted, 429, past it)
            chunks = self.ctx.log_reads.serve(chunks)
        try:
            for chunk in chunks:
                node, shown = chunk.node or node, chunk.attempt or shown
                if chunk.data:
                    parts.append(chunk.data)
                    size += len(chunk.data)
                    following = chunk.index + 1
                if size >= LOG_BYTES_PER_POLL:
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return {"text": b"".join(parts).decode("utf-8", "replace"), "next": following, "node": node,
                "attempt": shown}

    def trigger(self, request: Request, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        dag_id = request.path_params["dag_id"]
        conf = body.get("conf", "")
        if not isinstance(conf, str):
            raise BadRequest("conf must be the text of a JSON object, e.g. {\"key\": \"value\"}")
        answer = self.ops.trigger(dag_id, conf.strip())
        return {"run_id": answer.run_id, "dag_paused": answer.dag_paused,
                "url": path("dags", dag_id, "runs", answer.run_id)}

    def set_paused(self, request: Request, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        paused = body.get("paused")
        if not isinstance(paused, bool):
            raise BadRequest("paused must be true or false")
        self.ops.set_paused(request.path_params["dag_id"], paused)
        return {"paused": paused}

    def cancel(self, request: Request, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        dag_id, run_id = request.path_params["dag_id"], request.path_params["run_id"]
        self.run_of(dag_id, run_id)
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise BadRequest("reason must be text")
        answer = self.ops.cancel_run(run_id, reason)
        return {"stopped_attempts": answer.stopped_attempts}

    def clear(self, request: Request, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "run_id", "task_id"))
        self.run_of(dag_id, run_id)
        downstream = body.get("downstream", False)
        if not isinstance(downstream, bool):
            raise BadRequest("downstream must be true or false")
        answer = self.ops.clear_tasks(run_id, [task_id], downstream)
        return {"cleared": list(answer.cleared), "stopped_attempts": answer.stopped_attempts}

    def mark(self, request: Request, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        dag_id, run_id, task_id = (request.path_params[k] for k in ("dag_id", "run_id", "task_id"))
        self.run_of(dag_id, run_id)
        state = body.get("state")
        if state not in ("success", "failed"):
            raise BadRequest("state must be \"success\" or \"failed\"")
        answer = self.ops.mark_task(run_id, task_id, state)
        return {"stopped_attempts": answer.stopped_attempts}


def _status(error: errors.ServiceError) -> int:
    from .app import STATUS  # (app.py imports this module: the one table, read at call time)
    return STATUS.get(type(error), 500)


def _json_error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def routes(ctx: WebContext) -> list[BaseRoute]:
    """The pages and the /ui/ endpoints, for app.py to mount."""
    ui = Pages(ctx)

    async def root(request: Request) -> Response:
        return RedirectResponse("/dags", status_code=307)

    async def login(request: Request) -> Response:
        html = login_page("", request.query_params.get("next", ""))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def dag_root(request: Request) -> Response:
        return RedirectResponse(path("dags", request.path_params["dag_id"], Tab.GRAPH.value), status_code=307)

    # A run id may hold "/" (Airflow's REST API lets a client choose it): the path
    # convertor takes it, and each task route comes before its run route.
    dag = "/dags/{dag_id}"
    run = dag + "/runs/{run_id:path}"
    task = run + "/tasks/{task_id}"
    return [
        Route("/", root, methods=["GET"]),
        Route("/login", login, methods=["GET"]),
        Route("/dags", ui.page(ui.dags, "ListDags"), methods=["GET"]),
        Route(dag, dag_root, methods=["GET"]),
        Route(dag + "/graph", ui.page(ui.graph, "GetDag"), methods=["GET"]),
        Route(dag + "/grid", ui.page(ui.grid, "ListRuns"), methods=["GET"]),
        Route(dag + "/code", ui.page(ui.code, "GetDag"), methods=["GET"]),
        Route(dag + "/details", ui.page(ui.details, "GetDag"), methods=["GET"]),
        Route(task, ui.page(ui.task, "GetRun"), methods=["GET"]),
        Route(run, ui.page(ui.run, "GetRun"), methods=["GET"]),
        Route("/cluster", ui.page(ui.cluster, "ClusterStatus"), methods=["GET"]),
        Route("/ui" + dag + "/trigger", ui.json_endpoint(ui.trigger, "TriggerDag"), methods=["POST"]),
        Route("/ui" + dag + "/paused", ui.json_endpoint(ui.set_paused, "SetPaused"), methods=["POST"]),
        Route("/ui" + run + "/cancel", ui.json_endpoint(ui.cancel, "CancelRun"), methods=["POST"]),
        Route("/ui" + task + "/clear", ui.json_endpoint(ui.clear, "ClearTasks"), methods=["POST"]),
        Route("/ui" + task + "/mark", ui.json_endpoint(ui.mark, "MarkTask"), methods=["POST"]),
        Route("/ui" + task + "/log", ui.json_endpoint(ui.task_log, "GetTaskLog"), methods=["GET"]),
    ]
