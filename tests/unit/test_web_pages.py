"""The web UI's pages (node/web/pages.py) on the replica twin, through Starlette's
TestClient: every page renders with the issue's test hooks; unknown DAGs, runs and tasks
are 404 pages naming them; buttons a role may not use are not rendered and the server
refuses the request anyway, changing nothing; user text is escaped; a bad conf is refused
with the reason; no traceback ever reaches the browser; the grid and the DAG list page."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from core_support import T0, dag_dict, task
from raftflow.api.operations import DagFile
from raftflow.core import commands as c
from raftflow.web import pages
from raftflow.web.app import MAX_LOG_READS
from web_support import WebWorld, dag_file

HOSTILE = '<script>alert("owned")</script>'


@pytest.fixture
def world(tmp_path: Path) -> WebWorld:
    return WebWorld(tmp_path)


def _run(world: WebWorld) -> str:
    return world.ops.trigger("d").run_id


def _url(*parts: str) -> str:
    return pages.path(*parts)


def test_every_page_renders_for_a_viewer_with_the_test_hooks(world: WebWorld) -> None:
    run_id = _run(world)
    viewer = world.client("viewer")
    dags = viewer.get("/dags")
    assert dags.status_code == 200 and 'data-dag-id="d"' in dags.text
    graph = viewer.get("/dags/d/graph")
    assert graph.status_code == 200
    spec = json.loads(re.search(r'<script type="application/json" id="graph-spec">(.*?)</script>', graph.text,
                                re.S).group(1))
    assert [(t["id"], t["upstream"], t["state"]) for t in spec] == [("a", [], "pending"), ("b", ["a"], "pending")]
    assert f'data-run-id="{run_id}"' in graph.text
    grid = viewer.get("/dags/d/grid")
    assert f'data-run-id="{run_id}" data-task-id="a" data-state="pending"' in grid.text
    code = viewer.get("/dags/d/code")
    assert "# the source of d" in code.text and 'data-version="1"' in code.text
    assert viewer.get("/dags/d/details").status_code == 200
    run = viewer.get(_url("dags", "d", "runs", run_id))
    assert run.status_code == 200 and 'data-task-id="b" data-state="pending"' in run.text
    ti = viewer.get(_url("dags", "d", "runs", run_id, "tasks", "b"))
    assert ti.status_code == 200 and "Not run yet." in ti.text
    cluster = viewer.get("/cluster")
    assert cluster.status_code == 200
    assert 'data-node-id="n1"' in cluster.text and 'data-pool="default_pool"' in cluster.text
    assert viewer.get("/").headers["location"] == "/dags"


def test_the_graph_shows_the_chosen_run_and_without_one_the_latest(world: WebWorld) -> None:
    first = _run(world)
    world.ops.clock = lambda: T0 + 60
    second = _run(world)
    viewer = world.client("viewer")
    assert f'class="run-bar" data-run-id="{second}"' in viewer.get("/dags/d/graph").text
    chosen = viewer.get("/dags/d/graph", params={"run_id": first}).text
    assert f'class="run-bar" data-run-id="{first}"' in chosen


@pytest.mark.parametrize("path, says", [
    ("/dags/nope/graph", "no DAG 'nope'"),
    ("/dags/nope/grid", "no DAG 'nope'"),
    ("/dags/nope/code", "no DAG 'nope'"),
    ("/dags/d/graph?run_id=missing", "no run 'missing'"),
    ("/dags/d/runs/missing", "no run 'missing'"),
    ("/dags/d/code?version=7", "versions 1 to 1, not 7"),
])
def test_unknown_things_are_404_pages_naming_them(world: WebWorld, path: str, says: str) -> None:
    response = world.client("viewer").get(path)
    assert response.status_code == 404
    assert "Not found" in response.text and says in response.text.replace("&#39;", "'")


def test_an_unknown_task_and_a_run_of_another_dag_are_404(tmp_path: Path) -> None:
    world = WebWorld(tmp_path, dag_file("d"), dag_file("e", filename="e.py"))
    run_id = _run(world)
    viewer = world.client("viewer")
    missing = viewer.get(_url("dags", "d", "runs", run_id, "tasks", "zz"))
    assert missing.status_code == 404 and "has no task" in missing.text and "it has: a, b" in missing.text
    other = viewer.get(_url("dags", "e", "runs", run_id))
    assert other.status_code == 404 and "is a run of" in other.text
    assert viewer.get(_url("dags", "d", "runs", run_id, "tasks", "a"), params={"attempt": "3"}).status_code == 404


@pytest.mark.parametrize("path", ["/dags?page=0", "/dags?page=x", "/dags/d/grid?page=-1", "/dags/d/code?version=v"])
def test_bad_query_values_are_400_saying_what_was_wrong(world: WebWorld, path: str) -> None:
    response = world.client("viewer").get(path)
    assert response.status_code == 400
    assert "whole number" in response.text


def test_buttons_a_role_may_not_use_are_not_shown(world: WebWorld) -> None:
    run_id = _run(world)
    pages_of_a_role = ["/dags", "/dags/d/graph", "/dags/d/grid", "/dags/d/code", "/dags/d/details",
                       _url("dags", "d", "runs", run_id), _url("dags", "d", "runs", run_id, "tasks", "a")]
    for path in pages_of_a_role:
        shown = world.client("viewer").get(path).text
        assert "data-action=\"trigger\"" not in shown and "data-action=\"pause\"" not in shown, path
        assert "data-action=\"cancel\"" not in shown and "data-action=\"clear\"" not in shown, path
        assert "data-action=\"mark\"" not in shown, path
    operator = world.client("operator")
    assert 'data-action="trigger" data-dag-id="d"' in operator.get("/dags").text
    assert 'data-action="pause"' in operator.get("/dags").text
    assert 'data-action="trigger"' in operator.get("/dags/d/graph").text
    assert 'data-action="cancel"' in operator.get(_url("dags", "d", "runs", run_id)).text
    task_page = operator.get(_url("dags", "d", "runs", run_id, "tasks", "a")).text
    assert 'data-action="clear"' in task_page and 'data-action="mark" data-state="failed"' in task_page


@pytest.mark.parametrize("endpoint, body", [
    ("/ui/dags/d/trigger", {"conf": ""}),
    ("/ui/dags/d/paused", {"paused": True}),
    ("RUN/cancel", {}),
    ("RUN/tasks/a/clear", {"downstream": True}),
    ("RUN/tasks/a/mark", {"state": "success"}),
])
def test_a_viewer_write_is_refused_403_and_changes_nothing(world: WebWorld, endpoint: str,
                                                           body: dict[str, object]) -> None:
    run_id = _run(world)
    url = endpoint.replace("RUN", _url("ui", "dags", "d", "runs", run_id))
    before = world.log_size()
    for client in (world.client("viewer"), world.browser("viewer")):
        response = client.post(url, json=body, headers={"x-raftflow-csrf": "1"})
        assert response.status_code == 403, response.text
        assert "needs role operator" in response.json()["detail"]
    assert world.log_size() == before


def test_operator_writes_are_proposed_as_the_token(world: WebWorld) -> None:
    operator = world.browser("operator")
    answer = operator.post("/ui/dags/d/trigger", json={"conf": '{"x": 1}'}, headers={"x-raftflow-csrf": "1"})
    assert answer.status_code == 200, answer.text
    run_id = answer.json()["run_id"]
    assert answer.json()["url"] == _url("dags", "d", "runs", run_id)
    assert world.ops.get_run(run_id).conf_json == '{"x": 1}'
    assert world.proposers_of(c.CreateRun)[-1] == "token:operator"
    cleared = operator.post(_url("ui", "dags", "d", "runs", run_id, "tasks", "a", "clear"), json={"downstream": True},
                            headers={"x-raftflow-csrf": "1"})
    assert cleared.status_code == 200 and cleared.json()["cleared"] == ["a", "b"]
    paused = operator.post("/ui/dags/d/paused", json={"paused": True}, headers={"x-raftflow-csrf": "1"})
    assert paused.json() == {"paused": True} and 'data-paused="true"' in operator.get("/dags").text
    marked = operator.post(_url("ui", "dags", "d", "runs", run_id, "tasks", "a", "mark"), json={"state": "failed"},
                           headers={"x-raftflow-csrf": "1"})
    assert marked.status_code == 200, marked.text
    assert world.ops.get_run(run_id).tasks[0].state == "failed"


def test_a_cookie_write_without_the_csrf_header_is_refused(world: WebWorld) -> None:
    before = world.log_size()
    response = world.browser("operator").post("/ui/dags/d/trigger", json={"conf": ""},
                                              headers={"origin": "https://evil.example"})
    assert response.status_code == 403 and "cross-site" in response.json()["detail"]
    assert world.log_size() == before


@pytest.mark.parametrize("body, says", [
    ({"conf": "[1, 2]"}, "JSON object"),
    ({"conf": '{"a": '}, "not valid JSON"),
    ({"conf": 5}, "conf must be the text of a JSON object"),
])
def test_a_bad_conf_is_refused_with_the_reason_and_nothing_is_proposed(world: WebWorld, body: dict[str, object],
                                                                       says: str) -> None:
    before = world.log_size()
    response = world.client("operator").post("/ui/dags/d/trigger", json=body)
    assert response.status_code == 400
    assert says in response.json()["detail"]
    assert world.log_size() == before


def test_malformed_action_bodies_are_400(world: WebWorld) -> None:
    operator = world.client("operator")
    assert operator.post("/ui/dags/d/trigger", content=b"[1]").status_code == 400
    assert operator.post("/ui/dags/d/trigger", content=b"{nope").status_code == 400
    assert "paused must be true or false" in operator.post("/ui/dags/d/paused", json={"paused": "yes"}).text
    run_id = _run(world)
    mark = operator.post(_url("ui", "dags", "d", "runs", run_id, "tasks", "a", "mark"), json={"state": "running"})
    assert mark.status_code == 400 and "success" in mark.json()["detail"]
    assert operator.post("/ui/dags/zz/trigger", json={}).status_code == 404


def test_user_text_is_escaped(tmp_path: Path) -> None:
    spec = dag_dict("hostile", [task("a")], description=HOSTILE, tags=["<b>tag</b>"])
    world = WebWorld(tmp_path, DagFile("h.py", json.dumps(spec), f"# {HOSTILE}\n"))
    viewer = world.client("viewer")
    for path in ("/dags", "/dags/hostile/graph", "/dags/hostile/details", "/dags/hostile/code",
                 f"/dags?q={quote(HOSTILE)}"):
        text = viewer.get(path).text
        assert "<script>alert" not in text and "<b>tag</b>" not in text, path
        assert "&lt;script&gt;" in text or "&lt;b&gt;" in text, path


def test_no_session_redirects_to_the_login_page_and_back(world: WebWorld) -> None:
    anonymous = world.client()
    response = anonymous.get("/dags/d/grid?page=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fdags%2Fd%2Fgrid%3Fpage%3D1"
    login = anonymous.get(response.headers["location"])
    assert login.status_code == 200 and 'name="token"' in login.text
    assert 'name="next" value="/dags/d/grid?page=1"' in login.text
    assert 'value="/dags"' in anonymous.get("/login?next=https://evil.example/").text
    failed = anonymous.post("/login", data={"token": "wrong", "next": "/dags"}, headers={"origin": "http://testserver"})
    assert failed.status_code == 401 and 'name="token"' in failed.text and 'role="alert"' in failed.text
    assert anonymous.post("/ui/dags/d/trigger", json={}).status_code == 401


def test_an_unexpected_failure_is_a_500_page_without_its_traceback(world: WebWorld,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("secret internals")
    monkeypatch.setattr(world.ops, "list_dags", broken)
    response = world.client("viewer").get("/dags")
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "node n1" in response.text


def test_the_dag_list_filters_and_pages(tmp_path: Path) -> None:
    files = [dag_file(f"dag_{i:03d}", filename=f"f{i}.py") for i in range(pages.DAGS_PER_PAGE + 7)]
    world = WebWorld(tmp_path, *files)
    viewer = world.client("viewer")
    first = viewer.get("/dags").text
    assert first.count("<tr data-dag-id=") == pages.DAGS_PER_PAGE and 'data-pages="2"' in first
    second = viewer.get("/dags?page=2").text
    assert second.count("<tr data-dag-id=") == 7 and 'data-dag-id="dag_056"' in second
    filtered = viewer.get("/dags?q=DAG_00").text
    assert re.findall(r'<tr data-dag-id="([^"]+)"', filtered) == [f"dag_00{i}" for i in range(10)]
    assert "No DAG matches" in viewer.get("/dags?q=nothing-like-it").text
    assert viewer.get("/dags?page=3").status_code == 404


def test_the_dag_list_shows_the_last_runs_oldest_first(world: WebWorld) -> None:
    runs = []
    for i in range(pages.LAST_RUNS + 2):
        world.ops.clock = lambda i=i: T0 + i
        runs.append(_run(world))
    shown = re.findall(r'class="mark s-\w+" data-run-id="([^"]+)"', world.client("viewer").get("/dags").text)
    assert shown == runs[-pages.LAST_RUNS:]


def test_the_grid_pages_through_runs_newest_on_the_right(world: WebWorld) -> None:
    runs = []
    for i in range(pages.RUNS_PER_PAGE + 5):
        world.ops.clock = lambda i=i: T0 + i
        runs.append(_run(world))
    viewer = world.client("viewer")
    first = viewer.get("/dags/d/grid").text
    columns = re.findall(r'<a class="mark s-\w+" data-run-id="([^"]+)"', first)
    assert columns == runs[5:]
    assert first.count('data-task-id="a"') == pages.RUNS_PER_PAGE
    older = re.findall(r'<a class="mark s-\w+" data-run-id="([^"]+)"', viewer.get("/dags/d/grid?page=2").text)
    assert older == runs[:5]
    assert viewer.get("/dags/d/grid?page=3").status_code == 404


def test_a_task_log_is_read_from_the_node_that_ran_it_in_pieces(world: WebWorld) -> None:
    run_id = _run(world)
    for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n1", 1, T0)):
        assert world.replica.propose(cmd).ok
    world.host.store.logs[(run_id, "a", 1)] = [b"hello ", b"world\n"]
    url = _url("ui", "dags", "d", "runs", run_id, "tasks", "a", "log")
    viewer = world.client("viewer")
    answer = viewer.get(url, params={"attempt": "0", "from": "0"}).json()
    assert answer == {"text": "hello world\n", "next": 2, "node": "n1", "attempt": 1}
    assert viewer.get(url, params={"attempt": "1", "from": "2"}).json()["text"] == ""
    assert viewer.get(url, params={"attempt": "1", "from": "1"}).json()["text"] == "world\n"
    assert viewer.get(url, params={"attempt": "x"}).status_code == 400
    assert viewer.get(url, params={"attempt": "4"}).status_code == 404
    page = viewer.get(_url("dags", "d", "runs", run_id, "tasks", "a")).text
    assert 'data-attempt="1"' in page and 'id="log"' in page and 'data-following="true"' in page


def test_a_log_on_a_node_that_does_not_answer_is_503_naming_it(world: WebWorld) -> None:
    run_id = _run(world)
    for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0)):
        assert world.replica.propose(cmd).ok
    response = world.client("viewer").get(_url("ui", "dags", "d", "runs", run_id, "tasks", "a", "log"),
                                          params={"attempt": "1", "from": "0"})
    assert response.status_code == 503 and "stored on node n2" in response.json()["detail"]


def test_the_cluster_page_hides_addresses_from_non_admins(world: WebWorld) -> None:
    viewer = world.client("viewer").get("/cluster").text
    assert 'data-node-id="n2" data-role="unreachable"' in viewer
    assert 'data-web-url="http://127.0.0.1:8081"' in viewer      # every role may open another node's pages
    assert "127.0.0.1:7001" not in viewer                          # (its gRPC address: admins only)
    admin = world.client("admin").get("/cluster")
    assert admin.status_code == 200 and "gRPC 127.0.0.1:7001" in admin.text


def test_gantt_bars_span_the_run() -> None:
    spans = [pages.Span("a", 1, "n1", "failed", 100.0, 110.0), pages.Span("a", 2, "n2", "running", 110.0, None),
             pages.Span("b", 1, "n1", "success", 105.0, 108.0)]
    bars, span = pages.gantt(spans, now=120.0)
    assert span == 20.0
    assert [(b.span.task_id, b.span.attempt, b.left, b.width) for b in bars] == [
        ("a", 1, 0.0, 50.0), ("b", 1, 25.0, 15.0), ("a", 2, 50.0, 50.0)]
    assert pages.duration(75) == "1m 15s" and pages.duration(3.25) == "3.2 s" and pages.duration(None) == ""


def test_the_run_page_shows_every_attempt_from_the_stories(world: WebWorld) -> None:
    run_id = _run(world)
    moves = [c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0),
             c.TaskStarted(run_id, "a", 1, "n2", T0 + 1),
             c.TaskFinished(run_id, "a", 1, "n2", 1, T0 + 1, T0 + 5, "", "exit 1", T0 + 5),
             c.ClearTasks(run_id, ("a",), False, "", T0 + 6), c.QueueTask(run_id, "a", T0 + 6),
             c.AssignTask(run_id, "a", "n3", 2, T0 + 6), c.TaskStarted(run_id, "a", 2, "n3", T0 + 7)]
    for move in moves:
        result = world.replica.propose(move)
        assert result.ok, (move, result.reason)
    page = world.client("viewer").get(_url("dags", "d", "runs", run_id)).text
    bars = re.findall(r'class="gantt-bar s-(\w+)" data-task-id="a" data-attempt="(\d)"', page)
    assert bars == [("failed", "1"), ("running", "2")]
    assert "every attempt that started" in page
    assert 'title="a attempt 2 on n3: running"' in page


def test_every_task_state_has_a_colour_in_the_legend_and_the_stylesheet() -> None:
    from raftflow.core.states import TaskState

    css = (Path(pages.__file__).parent / "static" / "raftflow.css").read_text()
    for state in TaskState:
        assert state.value in pages.STATE_COLOURS, state
        assert f"--s-{state.value}: {pages.STATE_COLOURS[state.value]};" in css, state
        assert f".s-{state.value} {{" in css, state


def test_a_run_id_with_a_slash_has_its_pages(world: WebWorld) -> None:
    run_id = world.ops.trigger("d", run_id="nightly/2024-01-10").run_id
    viewer = world.client("viewer")
    assert _url("dags", "d", "runs", run_id) == "/dags/d/runs/nightly%2F2024-01-10"
    run = viewer.get(_url("dags", "d", "runs", run_id))
    assert run.status_code == 200 and 'data-run-id="nightly/2024-01-10"' in run.text
    assert viewer.get(_url("dags", "d", "runs", run_id, "tasks", "a")).status_code == 200
    assert f'href="{_url("dags", "d", "runs", run_id, "tasks", "a")}"' in run.text
    cancelled = world.client("operator").post(_url("ui", "dags", "d", "runs", run_id, "cancel"), json={})
    assert cancelled.status_code == 200, cancelled.text


def test_log_polls_count_against_the_nodes_bound_on_log_reads(world: WebWorld) -> None:
    run_id = _run(world)
    for cmd in (c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n1", 1, T0)):
        assert world.replica.propose(cmd).ok
    world.host.store.logs[(run_id, "a", 1)] = [b"x\n"]
    assert world.ctx.log_reads is not None
    taken = [world.ctx.log_reads.serve(iter([1])) for _ in range(MAX_LOG_READS)]
    for reader in taken:
        next(reader)                                   # every slot held
    url = _url("ui", "dags", "d", "runs", run_id, "tasks", "a", "log")
    busy = world.client("viewer").get(url, params={"attempt": "1", "from": "0"})
    assert busy.status_code == 429 and "log streams" in busy.json()["detail"]
    for reader in taken:
        reader.close()
    assert world.client("viewer").get(url, params={"attempt": "1", "from": "0"}).json()["text"] == "x\n"


def test_the_vendored_layout_library_is_the_published_file_with_its_licence() -> None:
    import hashlib

    vendor = Path(pages.__file__).parent / "static" / "vendor"
    table = (vendor / "README.md").read_text()
    library = vendor / "dagre-3.1.3" / "dagre.min.js"
    assert hashlib.sha256(library.read_bytes()).hexdigest() in table
    assert "Permission is hereby granted, free of charge" in (vendor / "dagre-3.1.3" / "LICENSE").read_text()
    assert '<script src="/static/vendor/dagre-3.1.3/dagre.min.js">' in (pages.TEMPLATES / "dag_graph.html").read_text()


def test_callback_instances_have_their_rows_and_pages(tmp_path: Path) -> None:
    """A callback instance (core/callbacks.py) shows on the run page, the grid and the
    graph's run, with a page of its own, and breaks none of them."""
    world = WebWorld(tmp_path, dag_file(callbacks={"failure": "alerts:page"}))
    run_id = _run(world)
    for move in [c.StartRun(run_id, T0), c.QueueTask(run_id, "a", T0), c.AssignTask(run_id, "a", "n2", 1, T0),
                 c.TaskStarted(run_id, "a", 1, "n2", T0 + 1),
                 c.TaskFinished(run_id, "a", 1, "n2", 1, T0 + 1, T0 + 5, "", "exit 1", T0 + 5),
                 c.FailUpstream(run_id, "b", "a failed", T0 + 5), c.QueueDagCallback(run_id, "failure", T0 + 6)]:
        result = world.replica.propose(move)
        assert result.ok, (move, result.reason)
    viewer = world.client("viewer")
    run = viewer.get(_url("dags", "d", "runs", run_id))
    assert run.status_code == 200 and 'data-task-id="@on_failure.1" data-state="queued"' in run.text
    assert viewer.get(_url("dags", "d", "runs", run_id, "tasks", "@on_failure.1")).status_code == 200
    for page in ("/dags/d/grid", "/dags/d/graph"):
        assert viewer.get(page).status_code == 200, page
