"""What a task sees (issue 14, item 5), with a real Worker, real bash and python
processes and, for run_as_user, a real second user: a clean environment, a scratch
folder outside the node's data that is gone once the attempt is reported, and no
way to read the node's secret, data directory or environment."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from throwaway_user import reachable_dir, task_python, task_user
from waiting import wait_for

from raftflow.config import ConfigError, TaskUser
from raftflow.core import commands as c
from raftflow.core.spec import TaskSpec
from raftflow.main import prepare_data_dir
from raftflow.store.local import LocalStore
from raftflow.worker import worker as worker_module
from raftflow.worker.worker import Assignment, AttemptSetup, Worker
from worker_support import make_worker

SECRET = "s3cret-of-the-node-do-not-leak"
# Variables bash itself sets in a non-interactive shell.
BASH_OWN = {"PWD", "SHLVL", "_"}
ATTEMPT_VARIABLES = {"RAFTFLOW_RESULT_FILE", "RAFTFLOW_DAG_ID", "RAFTFLOW_RUN_ID", "RAFTFLOW_TASK_ID",
                     "RAFTFLOW_ATTEMPT", "RAFTFLOW_NODE_ID", "RAFTFLOW_LOGICAL_DATE"}


@pytest.fixture
def node_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's environment holds secrets and settings a task must never see."""
    monkeypatch.setenv("RAFTFLOW_TEST_NODE_SECRET", SECRET)
    monkeypatch.setenv("CLUSTER_SECRET", SECRET)
    monkeypatch.setenv("RAFTFLOW_CLUSTER", "127.0.0.1:1")
    monkeypatch.setenv("RAFTFLOW_SECRET_FILE", "/etc/raftflow/secret")
    monkeypatch.setenv("SPARK_SSH_PASSWORD", SECRET)
    monkeypatch.setenv("LANG", "C.UTF-8")


def bash(command: str, attempt: int = 1, env: dict[str, str] | None = None) -> Assignment:
    return Assignment("r1", "t1", attempt, "d", "bash", command, env or {}, "2026-01-01T00:00:00+00:00")


def log_of(store: LocalStore, attempt: int = 1) -> str:
    return b"".join(store.read_log("r1", "t1", attempt)).decode()


def wait_idle(worker: Worker) -> None:
    wait_for(lambda: not worker.running(), 10, "the worker to have no attempt running", interval=0.01)


def environ_of(pid: int) -> bytes:
    """The environment `pid` exec'd with. Popen returns once the exec has begun, and the
    new image's environment is readable only when the kernel has finished setting it up,
    so an empty read right after the spawn means "not yet", not "empty"."""
    return wait_for(lambda: Path(f"/proc/{pid}/environ").read_bytes(), timeout=10,
                    what=f"process {pid} to finish its exec")


def lines_with(prefix: str, text: str) -> list[str]:
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]


# ---------------------------------------------------------------- environment and scratch folder
def test_a_bash_task_sees_path_home_locale_its_variables_and_its_env_and_nothing_else(tmp_path, node_secrets):
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(bash('env | cut -d= -f1 | sed "s/^/name=/"; echo "path=$PATH"; echo "home=$HOME"; '
                              'echo "cwd=$(pwd -P)"; echo "matches=$(env | grep -c "$SECRET_PROBE")"; '
                              'echo \'{"ok": true}\' > "$RAFTFLOW_RESULT_FILE"',
                              env={"MY_SETTING": "mine", "SECRET_PROBE": SECRET[:10]}))[0]
    done = reports.wait_for(c.TaskFinished)
    text = log_of(store)
    assert done.exit_code == 0 and done.result == '{"ok": true}', text
    names = set(lines_with("name=", text))
    expected = {"PATH", "HOME", "LANG", "MY_SETTING", "SECRET_PROBE"} | ATTEMPT_VARIABLES | BASH_OWN
    if os.environ.get("LC_ALL"):
        expected.add("LC_ALL")
    assert names == expected, f"unexpected: {names - expected}, missing: {expected - names}"
    assert lines_with("path=", text) == [os.environ["PATH"]] and lines_with("home=", text) == [os.environ["HOME"]]
    assert SECRET not in text and lines_with("matches=", text) == ["1"], "only the probe: the task's own env"
    cwd = Path(lines_with("cwd=", text)[0])
    assert cwd.parent == (tmp_path / "work").resolve(), "the attempt works in its own scratch folder"
    assert not cwd.is_relative_to(tmp_path / "store"), "not in the node's data"
    wait_idle(worker)
    assert not cwd.exists() and list((tmp_path / "work").iterdir()) == [], "removed once reported"
    worker.shutdown()
    assert not (tmp_path / "work").exists(), "a node that stops leaves no empty scratch folder in the temp dir"


def test_a_node_without_path_gives_its_tasks_a_sane_one(tmp_path, monkeypatch):
    monkeypatch.delenv("PATH")
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(bash('echo "path=$PATH"'))[0]
    assert reports.wait_for(c.TaskFinished).exit_code == 0, log_of(store)
    assert lines_with("path=", log_of(store)) == [worker_module.DEFAULT_PATH]
    worker.shutdown()


def test_the_scratch_folder_is_removed_after_a_timeout_and_after_a_cancel(tmp_path, monkeypatch):
    monkeypatch.setattr(worker_module, "KILL_GRACE", 1.0)
    worker, reports, store = make_worker(tmp_path, current=True, setup=AttemptSetup({}, execution_timeout=0.5))
    assert worker.accept(bash('echo "cwd=$(pwd -P)"; touch left-behind; sleep 60'))[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    assert "execution_timeout of 0.5s reached" in done.reason
    wait_idle(worker)
    timed_out = Path(lines_with("cwd=", log_of(store))[0])
    assert timed_out.parent == (tmp_path / "work").resolve() and not timed_out.exists()
    worker.shutdown()

    worker, reports, store = make_worker(tmp_path / "again", current=True)
    assert worker.accept(bash('echo "cwd=$(pwd -P)"; sleep 60'))[0]
    wait_for(lambda: lines_with("cwd=", log_of(store)), 10, "the task to say where it works")
    assert worker.cancel("r1", "run r1 cancelled by the user", {("t1", 1)}) == 1
    assert "cancelled" in reports.wait_for(c.TaskFinished, timeout=20).reason
    wait_idle(worker)
    assert not Path(lines_with("cwd=", log_of(store))[0]).exists()
    assert list((tmp_path / "again" / "work").iterdir()) == []
    worker.shutdown()


def test_removing_the_scratch_folder_never_follows_a_symlink_the_task_planted(tmp_path):
    assert shutil.rmtree.avoids_symlink_attacks, "the worker relies on rmtree working through descriptors"
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "keep").write_text("precious")
    (outside / "inner" / "keep").write_text("precious")
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(bash(f"ln -s {outside} dirlink; ln -s {outside}/keep filelink; mkdir -p deep/er; "
                              f"ln -s {outside}/inner deep/er/link; ln -s {outside} deep/link"))[0]
    assert reports.wait_for(c.TaskFinished).exit_code == 0, log_of(store)
    wait_idle(worker)
    assert list((tmp_path / "work").iterdir()) == []
    assert (outside / "keep").read_text() == "precious" and (outside / "inner" / "keep").read_text() == "precious"
    worker.shutdown()


PY_PROBE = '''
import os

def probe():
    print("secret-seen" if any("s3cret" in v for v in os.environ.values()) else "no-secret")
    return {"cwd": os.getcwd(), "names": sorted(os.environ), "home": os.environ["HOME"]}
'''


def test_a_python_task_sees_the_clean_environment_and_its_scratch_folder(tmp_path, monkeypatch, node_secrets):
    (tmp_path / "probe_tasks.py").write_text(PY_PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))   # how the node makes callables importable: passed on
    worker, reports, store = make_worker(
        tmp_path, current=True,
        setup=AttemptSetup({}, None, TaskSpec("t1", "python", "", python_callable="probe_tasks:probe")))
    assert worker.accept(Assignment("r1", "t1", 1, "d", "python", "", {"MINE": "x"}, ""))[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    assert done.exit_code == 0 and log_of(store) == "no-secret\n", log_of(store)
    seen = json.loads(done.result)
    expected = ({"PATH", "HOME", "LANG", "MINE", "PYTHONPATH", "PYTHONUNBUFFERED", "RAFTFLOW_PY_CALLABLE",
                 "RAFTFLOW_PY_CONTEXT_FILE", "RAFTFLOW_PY_KWARGS_FILE", "RAFTFLOW_PY_ARGS_FILE",
                 "RAFTFLOW_PY_XCOM_FILE", "RAFTFLOW_PY_VARIABLES_FILE"} | ATTEMPT_VARIABLES
                | ({"LC_ALL"} if os.environ.get("LC_ALL") else set()))
    assert set(seen["names"]) == expected, set(seen["names"]) ^ expected
    assert Path(seen["cwd"]).parent == (tmp_path / "work").resolve()
    wait_idle(worker)
    assert not Path(seen["cwd"]).exists()
    worker.shutdown()


def test_the_renderer_gets_the_clean_environment_outside_the_data_dir(tmp_path, node_secrets):
    worker, reports, store = make_worker(tmp_path, current=True)
    renderer = worker.renderers._idle[0].process.pid
    environ = environ_of(renderer).split(b"\0")
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert names == {"PATH", "HOME", "LANG"} | ({"LC_ALL"} if os.environ.get("LC_ALL") else set())
    assert SECRET.encode() not in b"".join(environ)
    assert os.readlink(f"/proc/{renderer}/cwd") == "/"
    worker.shutdown()


def test_leftovers_of_a_previous_process_are_removed_and_a_foreign_scratch_folder_is_refused(tmp_path):
    scratch = tmp_path / "scratch"
    (scratch / "tmpold" / "sub").mkdir(parents=True)
    (scratch / "tmpold" / "sub" / "result.json").write_text("{}")
    worker, reports, store = make_worker(tmp_path, current=True, scratch=scratch)
    assert list(scratch.iterdir()) == [] and oct(scratch.stat().st_mode & 0o777) == "0o700"
    worker.shutdown()
    planted = tmp_path / "planted"
    planted.symlink_to(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"scratch folder .*planted is not a directory"):
        make_worker(tmp_path, current=True, scratch=planted, store_dir=tmp_path / "store2")


# ---------------------------------------------------------------- run_as_user
@pytest.fixture
def run_as(monkeypatch: pytest.MonkeyPatch) -> TaskUser:
    """The throwaway task user, and a Python it can run (python tasks and renderers run
    the node's interpreter: sys.executable)."""
    user = task_user()
    monkeypatch.setattr(sys, "executable", task_python(user))
    return user


@pytest.fixture
def node_home():
    """A node laid out as deploy/ does it: its data dir (0700) and secret file (0600),
    in a folder other users may pass through (so what stops them is the node's modes)."""
    with reachable_dir() as home:
        prepare_data_dir(home / "data")
        (home / "secret").write_text(SECRET + "\n")
        os.chmod(home / "secret", 0o600)
        yield home


def test_with_run_as_user_a_task_cannot_read_the_secret_the_data_dir_or_the_node_env(node_home, node_secrets, run_as):
    user = run_as
    worker, reports, store = make_worker(node_home, current=True, scratch=node_home / "scratch",
                                         store_dir=node_home / "data" / "store", run_as=user)
    data, secret = node_home / "data", node_home / "secret"
    assert worker.accept(bash(
        f'echo "user=$(id -un) groups=$(id -G) home=$HOME"; cat {secret}; echo "cat=$?"; ls {data}; '
        f'echo "ls=$?"; cat /proc/$PPID/environ; echo "environ=$?"; echo "cwd=$(pwd -P)"; '
        'echo \'{"rows": 3}\' > "$RAFTFLOW_RESULT_FILE"'))[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    text = log_of(store)
    assert done.exit_code == 0 and done.result == '{"rows": 3}', text
    assert lines_with("user=", text) == [f"{user.name} groups={user.gid} home={user.home}"], \
        "its user, its primary group only, its home"
    assert SECRET not in text
    assert lines_with("cat=", text) == ["1"] and f"cat: {secret}: Permission denied" in text
    assert lines_with("ls=", text) == ["2"] and f"cannot open directory '{data}': Permission denied" in text
    assert lines_with("environ=", text) == ["1"], "the node's environment (its parent's) is not readable"
    cwd = Path(lines_with("cwd=", text)[0])
    assert cwd.parent == node_home / "scratch"
    assert oct((node_home / "scratch").stat().st_mode & 0o777) == "0o711", "passable, not listable"
    wait_idle(worker)
    assert not cwd.exists()
    worker.shutdown()


PY_WHOAMI = '''
import os, pwd

def whoami():
    try:
        open(os.environ["SECRET_PATH"]).read()
        secret = "read"
    except PermissionError:
        secret = "denied"
    return {"user": pwd.getpwuid(os.getuid()).pw_name, "gid": os.getgid(), "groups": os.getgroups(),
            "secret": secret, "day": os.environ["DAY"]}
'''


def test_with_run_as_user_python_tasks_and_the_renderer_run_as_that_user(node_home, monkeypatch, node_secrets, run_as):
    user = run_as
    modules = node_home / "modules"
    modules.mkdir(mode=0o755)
    (modules / "whoami_tasks.py").write_text(PY_WHOAMI)
    monkeypatch.setenv("PYTHONPATH", str(modules))
    worker, reports, store = make_worker(
        node_home, current=True, scratch=node_home / "scratch", store_dir=node_home / "data" / "store", run_as=user,
        setup=AttemptSetup({"ds": "2026-01-01"}, None,
                           TaskSpec("t1", "python", "", python_callable="whoami_tasks:whoami")))
    renderer = worker.renderers._idle[0].process.pid
    status = Path(f"/proc/{renderer}/status").read_text()
    assert f"Uid:\t{user.uid}\t{user.uid}" in status and f"Gid:\t{user.gid}\t{user.gid}" in status
    assert environ_of(renderer).count(f"HOME={user.home}\0".encode()) == 1
    assert worker.accept(Assignment("r1", "t1", 1, "d", "python", "",
                                    {"SECRET_PATH": str(node_home / "secret"), "DAY": "{{ ds }}"}, ""))[0]
    done = reports.wait_for(c.TaskFinished, timeout=20)
    assert done.exit_code == 0, log_of(store)
    assert json.loads(done.result) == {"user": user.name, "gid": user.gid, "groups": [], "secret": "denied",
                                       "day": "2026-01-01"}, "rendered by the task user's renderer"
    worker.shutdown()


def test_run_as_user_refuses_a_scratch_folder_or_a_python_its_user_cannot_reach(tmp_path, monkeypatch, run_as):
    user = run_as
    with reachable_dir() as home:
        locked = home / "locked"
        locked.mkdir(mode=0o700)
        with pytest.raises(ConfigError, match=f"run_as_user {user.name} cannot reach the scratch folder "
                                              f"{locked}/scratch: {locked} does not let it through"):
            make_worker(tmp_path, current=True, run_as=user, scratch=locked / "scratch")
        (locked / "python").symlink_to(sys.executable)
        monkeypatch.setattr(sys, "executable", str(locked / "python"))
        with pytest.raises(ConfigError, match=f"run_as_user {user.name} cannot run this node's Python .*"):
            make_worker(tmp_path, current=True, run_as=user, scratch=home / "scratch",
                        store_dir=tmp_path / "store2")


def test_a_foreign_owned_scratch_folder_is_refused(tmp_path):
    user = task_user()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chown(scratch, user.uid, user.gid)   # made first by someone else (a shared /tmp)
    with pytest.raises(ConfigError, match=f"belongs to uid {user.uid}, not to this node's user"):
        make_worker(tmp_path, current=True, scratch=scratch)


def test_the_ssh_runner_gets_exactly_its_connections_secret_variables_and_runs_as_the_node(tmp_path, monkeypatch,
                                                                                          node_secrets):
    from raftflow.config import SSHConnection
    from raftflow.kinds import AttemptInput, kind

    monkeypatch.setenv("SPARK_KEY_PASSPHRASE", "open sesame")
    monkeypatch.setenv("OTHER_SSH_PASSWORD", SECRET)
    spark = SSHConnection("spark", "h", "u", password_env="SPARK_SSH_PASSWORD", passphrase_env="SPARK_KEY_PASSPHRASE")
    other = SSHConnection("other", "h2", "u", password_env="OTHER_SSH_PASSWORD")
    worker, reports, store = make_worker(tmp_path, current=True, connections=(spark, other))
    a = Assignment("r1", "t1", 1, "d", "ssh", "echo hi", {"REMOTE_ONLY": "x"}, "")
    launch = kind("ssh").launch(AttemptInput(
        task=TaskSpec("t1", "ssh", "echo hi", ssh_conn_id="spark"), command="echo hi", env={"REMOTE_ONLY": "x"},
        context={}, variables={}, node_id="n1", reason_file=str(tmp_path / "reason"),
        connections={"spark": spark, "other": other}, attempt_dir=str(tmp_path)))
    assert launch.as_node_user, "it reads the key file, which the task user must not"
    env = worker._environment(a, launch, tmp_path / "result.json")
    assert env["SPARK_SSH_PASSWORD"] == SECRET and env["SPARK_KEY_PASSPHRASE"] == "open sesame"
    assert set(env) == {"PATH", "HOME", "LANG", "SPARK_SSH_PASSWORD", "SPARK_KEY_PASSPHRASE"} | ATTEMPT_VARIABLES | \
        ({"LC_ALL"} if os.environ.get("LC_ALL") else set()), \
        "no other connection's password, no node secret or setting, no task env (it goes to the remote side)"
    assert env["HOME"] == os.environ["HOME"]
    worker.shutdown()


def test_an_empty_path_on_the_node_is_replaced_by_the_default_too(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setenv("LANG", "")
    worker, reports, store = make_worker(tmp_path, current=True)
    assert worker.accept(bash('echo "path=$PATH lang=${LANG-unset}"'))[0]
    assert reports.wait_for(c.TaskFinished).exit_code == 0, log_of(store)
    assert lines_with("path=", log_of(store)) == [f"{worker_module.DEFAULT_PATH} lang=unset"]
    worker.shutdown()
