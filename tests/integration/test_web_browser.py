"""The web UI in a real browser (Debian's headless chromium driven by selenium) against a
real 3-node cluster over HTTPS (issue #15 item 5): log in; the DAG list shows the example
DAGs; the graph of mlexpert_dag has 3 boxes and 2 edges; a trigger from the page turns
its boxes green without a reload (a bad conf is refused with the reason first); a task's
log and its clear (as operator); a viewer sees no trigger button and a forged trigger
gets 403; the node serving the page is killed and another node serves the same pages.

The tests run in file order on one cluster and one browser (each step builds on the
last). Screenshots of every page land in a `screenshots` folder under pytest's temporary
directory (its path is printed). tools/test installs chromium and chromium-driver; where
they are missing this module skips, saying so."""

from __future__ import annotations

import json
import signal
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest
from waiting import wait_for

from raftflow_cli.client import ApiError, ClusterUnreachable
from support import ROOT as REPO, Cli, dump_node_logs

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
EXAMPLE_DAGS = ("mlexpert_dag", "etl_chain", "fan_out")
DAG = "mlexpert_dag"
TASKS = ("aggregate_search_interaction", "aggregate_user_features", "generate_training_data")
EDGES = {"aggregate_search_interaction->generate_training_data", "aggregate_user_features->generate_training_data"}
WAIT = 20.0          # seconds a page condition may take (a run of mlexpert_dag takes ~8 s)

selenium = pytest.importorskip("selenium", reason="selenium is in the test extra: tools/test installs it")
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="Debian's chromium and chromium-driver are missing: tools/test installs them as root"),
]


class World:
    """The cluster, the tokens, the browser, and where screenshots go."""

    def __init__(self, cluster: Any, browser: WebDriver, shots: Path, secrets: dict[str, str]) -> None:
        self.cluster, self.browser, self.shots, self.secrets = cluster, browser, shots, secrets
        self.serving = "n1"
        self.run_id = ""

    def url(self, path: str, node: str | None = None) -> str:
        return self.cluster.web_url(node or self.serving) + path

    def open(self, path: str, node: str | None = None) -> None:
        self.browser.get(self.url(path, node))

    def until(self, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT) -> Any:
        """Wait for `condition`. The live parts of a page are swapped in place every 0.75 s,
        so an element found by a condition may be replaced before it is read: that try
        counts as not yet, and the condition is asked again."""
        wait = WebDriverWait(self.browser, timeout, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(condition, message=f"waited {timeout}s for {what}")

    def all(self, css: str) -> list[Any]:
        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def shot(self, name: str) -> None:
        self.browser.save_screenshot(str(self.shots / f"{name}.png"))

    def log_in(self, role: str) -> None:
        """Log in through the login page (after logging out if a session is open)."""
        self.open("/login?next=/dags")
        self.until(lambda b: b.find_elements(By.NAME, "token"), "the login form")
        self.shot(f"login-{role}")
        field = self.browser.find_element(By.NAME, "token")
        field.send_keys(self.secrets[role])
        field.submit()
        self.until(lambda b: b.find_elements(By.CSS_SELECTOR, "[data-dag-id]"),
                   f"the DAG list after logging in as {role}")
        assert self.browser.find_element(By.CSS_SELECTOR, ".who").get_attribute("data-role") == role

    def fetch(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """A request made by the page's own script context (the session cookie and the CSRF
        header included): what a forged script in the page could send."""
        answer = self.browser.execute_async_script(
            """const [method, path, body, done] = arguments;
               fetch(path, {method, credentials: "same-origin",
                            headers: {"Content-Type": "application/json", "X-Raftflow-CSRF": "1"},
                            body: body === null ? undefined : JSON.stringify(body)})
                 .then(r => r.text().then(t => done([r.status, t])))
                 .catch(e => done([0, String(e)]));""", method, path, body)
        return answer[0], json.loads(answer[1]) if answer[1].startswith("{") else answer[1]

    def runs(self) -> list[str]:
        """The DAG's run ids, as the serving node's gRPC API answers."""
        with closing(self.cluster.client([self.cluster.node(self.serving).grpc_address])) as client:
            return [r["run_id"] for r in client.list_runs(DAG)["runs"]]

    def answers(self) -> bool:
        """The serving node answers a read (after a failover, once it knows a leader)."""
        try:
            self.runs()
        except (ApiError, ClusterUnreachable):
            return False
        return True


def _browser() -> WebDriver:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    # The nodes serve HTTPS with certificates of the cluster's own CA (raftflow certs),
    # which this throwaway browser profile does not trust.
    options.accept_insecure_certs = True
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    from raftflow.config import SSHConnection
    from raftflow_dev.local import LocalCluster
    from raftflow_dev.sshd import LocalSSHServer, find_sshd

    # mlexpert_dag is the notes' Airflow file: its tasks run spark-submit over SSH on
    # "spark_master", here a real local sshd whose PATH has dags/bin's stand-in (as
    # tools/up --ssh-demo gives it).
    if find_sshd()[0] is None:
        pytest.skip(find_sshd()[1])
    base = tmp_path_factory.mktemp("web")
    sshd = LocalSSHServer(base / "sshd", remote_path=f"{REPO / 'dags' / 'bin'}:/usr/local/bin:/usr/bin:/bin").start()
    spark = SSHConnection(name="spark_master", host=sshd.host, port=sshd.port, user=sshd.user,
                          key_file=sshd.client_key, known_hosts=sshd.known_hosts, connect_timeout=5.0)
    cluster = LocalCluster(base / "cluster", nodes=3, slots=4, connections={n: (spark,) for n in ("n1", "n2", "n3")})
    shots = tmp_path_factory.mktemp("screenshots")
    print(f"screenshots: {shots}")
    cluster.start()
    browser = None
    try:
        cluster.wait_ready(timeout=30)
        cli = Cli(cluster)
        proc = cli("dags", "submit", *(f"dags/{name}.py" for name in EXAMPLE_DAGS))
        assert proc.returncode == 0, proc.stderr
        with closing(cluster.client()) as admin:
            secrets = {role: admin.create_token(f"web-{role}", role)["secret"] for role in ("operator", "viewer")}
            # Created paused (as Airflow creates DAGs): unpaused, it runs its latest daily tick
            # at once; the tests trigger their own run only after that one is done.
            admin.set_paused(DAG, False)
            wait_for(lambda: [r for r in admin.list_runs(DAG)["runs"] if r["state"] == "success"], 60,
                     "mlexpert_dag's scheduled run to succeed over SSH")
        browser = _browser()
        yield World(cluster, browser, shots, secrets)
    except BaseException:
        dump_node_logs(cluster)
        raise
    finally:
        if browser is not None:
            browser.quit()
        cluster.stop()
        sshd.stop()


def test_log_in_and_the_dag_list_shows_the_example_dags(world: World) -> None:
    world.open("/dags")
    world.until(lambda b: "/login" in b.current_url, "the redirect of a page without a session to /login")
    world.log_in("operator")
    shown = {row.get_attribute("data-dag-id") for row in world.all("[data-dag-id]")}
    assert set(EXAMPLE_DAGS) <= shown
    assert world.all(f'[data-dag-id="{DAG}"] [data-action="trigger"]'), "an operator sees the trigger button"
    world.shot("dags")


def test_graph_has_three_boxes_and_two_edges(world: World) -> None:
    world.open(f"/dags/{DAG}/graph")
    boxes = world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#graph [data-task-id]"), "the graph's boxes")
    assert sorted(box.get_attribute("data-task-id") for box in boxes) == sorted(TASKS)
    assert {e.get_attribute("data-edge") for e in world.all("#graph [data-edge]")} == EDGES
    world.shot("graph-before")


def test_trigger_from_the_page_turns_the_boxes_green_without_a_reload(world: World) -> None:
    world.open(f"/dags/{DAG}/graph")
    world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#graph [data-task-id]"), "the graph")
    world.browser.execute_script("window.__sameDocument = true;")
    before = world.runs()

    world.browser.find_element(By.CSS_SELECTOR, '[data-action="trigger"]').click()
    conf = world.until(lambda b: b.find_element(By.ID, "trigger-conf"), "the trigger dialog")
    conf.send_keys('{"broken": ')
    world.browser.find_element(By.CSS_SELECTOR, '[data-action="trigger-submit"]').click()
    error = world.until(lambda b: next((e for e in world.all('#trigger-dialog [data-slot="error"]')
                                        if e.is_displayed() and e.text), None), "the refusal of a bad conf")
    assert "JSON" in error.text, error.text
    world.shot("trigger-refused")
    assert world.runs() == before, "a refused trigger created no run"

    conf.clear()
    conf.send_keys('{"source": "browser"}')
    world.browser.find_element(By.CSS_SELECTOR, '[data-action="trigger-submit"]').click()
    world.until(lambda b: len(world.runs()) == len(before) + 1, "the triggered run")
    world.run_id = next(r for r in world.runs() if r not in before)
    world.until(lambda b: b.find_element(By.CSS_SELECTOR, ".run-bar").get_attribute("data-run-id") == world.run_id,
                "the graph to show the new run")
    world.until(lambda b: {box.get_attribute("data-state") for box in world.all("#graph [data-task-id]")}
                == {"success"}, "every box to turn green (success)")
    assert world.browser.execute_script("return window.__sameDocument === true;"), "the page was reloaded"
    world.shot("graph")


def test_run_grid_code_and_a_task_log(world: World) -> None:
    run = quote(world.run_id, safe="")
    world.open(f"/dags/{DAG}/runs/{run}")
    rows = world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "table.tasks [data-task-id]"), "the run's tasks")
    assert {r.get_attribute("data-state") for r in rows} == {"success"}
    assert len(world.all(".gantt-bar")) == 3
    world.shot("run")

    world.open(f"/dags/{DAG}/grid")
    cells = world.until(lambda b: world.all(f'.grid [data-run-id="{world.run_id}"][data-task-id]'),
                        "the run's column in the grid")
    assert {c.get_attribute("data-state") for c in cells} == {"success"} and len(cells) == 3
    world.shot("grid")

    world.open(f"/dags/{DAG}/code")
    world.until(lambda b: "[t1, t2] >> t3" in b.find_element(By.CSS_SELECTOR, "pre.code").text, "the DAG's source")
    world.shot("code")
    world.open(f"/dags/{DAG}/details")
    world.shot("details")

    world.open(f"/dags/{DAG}/runs/{run}/tasks/{TASKS[0]}")
    world.until(lambda b: "done: aggregate_search_interaction.py" in b.find_element(By.ID, "log").text,
                "the task's log")
    world.shot("task-log")


def test_clear_a_task_as_operator(world: World) -> None:
    run = quote(world.run_id, safe="")
    world.open(f"/dags/{DAG}/runs/{run}/tasks/{TASKS[2]}")
    world.until(lambda b: b.find_elements(By.CSS_SELECTOR, '[data-action="clear"]'), "the clear button")
    world.browser.find_element(By.CSS_SELECTOR, '[data-action="clear"]').click()
    world.until(lambda b: b.find_elements(By.CSS_SELECTOR, '[data-attempt="2"]'), "a second attempt after the clear")
    world.until(lambda b: b.find_element(By.CSS_SELECTOR, ".run-bar[data-task-id]").get_attribute("data-state")
                == "success", "the cleared task to succeed again")
    # the log follows the latest attempt: it starts again with the second one's
    world.until(lambda b: b.find_element(By.ID, "log-attempt").text == "2"
                and "done: generate_training_data.py" in b.find_element(By.ID, "log").text,
                "the log of the second attempt")
    world.shot("task-cleared")


def test_cluster_page(world: World) -> None:
    world.open("/cluster")
    rows = world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "[data-node-id]"), "the cluster's nodes")
    assert {r.get_attribute("data-node-id") for r in rows} == {"n1", "n2", "n3"}
    assert len(world.all('[data-role="leader"]')) == 1
    world.shot("cluster")


def test_a_viewer_sees_no_trigger_and_a_forged_trigger_gets_403(world: World) -> None:
    world.browser.delete_all_cookies()
    world.log_in("viewer")
    assert not world.all('[data-action="trigger"]')
    world.open(f"/dags/{DAG}/graph")
    world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#graph [data-task-id]"), "the graph")
    assert not world.all('[data-action="trigger"]')
    world.shot("graph-viewer")
    before = world.runs()
    status, answer = world.fetch("POST", f"/ui/dags/{DAG}/trigger", {"conf": ""})
    assert status == 403, answer
    assert "viewer" in answer["detail"], answer
    status, answer = world.fetch("POST", f"/ui/dags/{DAG}/paused", {"paused": True})
    assert status == 403, answer
    status, answer = world.fetch("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": {}})
    assert status == 403, answer                     # (the REST API's trigger, with the same session)
    assert world.runs() == before


def test_kill_the_serving_node_and_another_serves_the_same_pages(world: World) -> None:
    world.open(f"/dags/{DAG}/graph")
    world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#graph [data-task-id]"), "the graph")
    world.cluster.signal_node("n1", signal.SIGKILL)
    assert world.cluster.wait_exit("n1", 10) is not None
    world.until(lambda b: b.find_element(By.ID, "notice").is_displayed(), "the page to say its node does not answer")
    world.shot("node-lost")
    world.serving = "n2"
    world.until(lambda b: world.answers(), "n2 to answer")    # (an election may be under way)
    world.open(f"/dags/{DAG}/graph")
    boxes = world.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#graph [data-task-id]"), "the graph on n2")
    assert sorted(box.get_attribute("data-task-id") for box in boxes) == sorted(TASKS)
    assert world.browser.find_element(By.CSS_SELECTOR, ".run-bar").get_attribute("data-run-id") == world.run_id
    assert world.browser.find_element(By.CSS_SELECTOR, ".who").text.endswith("node n2")
    world.open("/dags")
    assert set(EXAMPLE_DAGS) <= {row.get_attribute("data-dag-id") for row in world.all("[data-dag-id]")}
    world.shot("dags-on-n2")


def test_screenshots_were_saved(world: World) -> None:
    names = {p.stem for p in world.shots.glob("*.png")}
    assert {"dags", "graph", "run", "grid", "code", "task-log", "cluster"} <= names, names
