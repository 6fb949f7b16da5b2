"""SSH task attempts against a real OpenSSH server on a free loopback port (started here
with generated keys, stopped by its PID): a worker with Raft replaced by a recorder.

What an attempt must do: stream the remote output into the task log while it runs,
report the remote exit status, refuse unknown and changed host keys naming the host
and the fingerprint, fail with the reason on a wrong key, a refused or unreachable
host, and stop the remote command itself (not only the channel) on a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from raftflow.config import SSHConnection
from raftflow.core import commands as c
from raftflow.core.spec import TaskSpec
from raftflow.worker.worker import Assignment, AttemptSetup

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from support import alive, pid_from, wait_for  # noqa: E402
from worker_support import make_worker  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    from raftflow_dev.sshd import LocalSSHServer, find_sshd

    if find_sshd()[0] is None:
        pytest.skip(find_sshd()[1])
    server = LocalSSHServer(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


def connection(sshd, **changes) -> SSHConnection:
    conn = SSHConnection(name="spark_master", host=sshd.host, port=sshd.port, user=sshd.user,
                         key_file=sshd.client_key, known_hosts=sshd.known_hosts, connect_timeout=5.0)
    return replace(conn, **changes)


def run_attempt(tmp_path: Path, conn: SSHConnection, command: str, timeout: float | None = None,
                env: dict[str, str] | None = None):
    setup = AttemptSetup({}, execution_timeout=timeout,
                         task=TaskSpec("submit", "ssh", command, ssh_conn_id="spark_master"))
    worker, reports, store = make_worker(tmp_path, current=True, setup=setup, connections=(conn,))
    a = Assignment("r1", "submit", 1, "d", "ssh", command, env or {}, "2026-01-01T00:00:00+00:00")
    assert worker.accept(a) == (True, "")
    return worker, reports, store


def finished(worker, reports) -> c.TaskFinished:
    try:
        return reports.wait_for(c.TaskFinished, timeout=30)
    finally:
        worker.shutdown()


def log_of(store) -> str:
    return b"".join(store.read_log("r1", "submit", 1)).decode()


def host_fingerprint(sshd) -> str:
    key = paramiko.Ed25519Key(data=paramiko.PublicBlob.from_file(str(sshd.dir / "host_ed25519.pub")).key_blob)
    return f"ssh-ed25519 {key.fingerprint}"


def test_output_streams_into_the_log_while_the_remote_command_runs(sshd, tmp_path):
    go = tmp_path / "go"
    worker, reports, store = run_attempt(
        tmp_path, connection(sshd),
        f'echo "first from $RAFTFLOW_TASK_ID attempt $RAFTFLOW_ATTEMPT, stage=$STAGE"; echo oops >&2; '
        f'while [ ! -e {go} ]; do sleep 0.05; done; echo second',
        env={"STAGE": "it's prod"})
    wait_for(lambda: "first" in log_of(store), 20, "the first line in the log while the command still runs")
    assert "second" not in log_of(store)
    go.touch()
    done = finished(worker, reports)
    assert (done.exit_code, done.reason) == (0, "")
    text = log_of(store)
    assert "first from submit attempt 1, stage=it's prod\noops\nsecond\n" in text, text
    assert f"raftflow: connected to {sshd.user}@{sshd.host}:{sshd.port} (connection spark_master)" in text


def test_the_remote_exit_status_decides_the_result(sshd, tmp_path):
    worker, reports, store = run_attempt(tmp_path, connection(sshd), "echo failing; exit 3")
    done = finished(worker, reports)
    assert done.exit_code == 3
    assert "raftflow: the remote command exited with status 3" in log_of(store)


def test_an_unknown_host_key_is_refused_naming_the_host_and_its_fingerprint(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    marker = tmp_path / "ran"
    worker, reports, store = run_attempt(tmp_path, connection(sshd, known_hosts=empty), f"touch {marker}")
    done = finished(worker, reports)
    assert done.exit_code == 255
    assert done.reason.startswith(f"host key of [{sshd.host}]:{sshd.port} is not in known_hosts {empty}: "
                                  f"the host offers {host_fingerprint(sshd)}"), done.reason
    assert f"ssh-keyscan -p {sshd.port} {sshd.host} >> {empty}" in done.reason
    assert done.reason in log_of(store)
    assert not marker.exists(), "nothing ran on an unverified host"


def test_trust_on_first_use_records_the_key_and_then_verifies_it(sshd, tmp_path):
    known = tmp_path / "tofu_known_hosts"
    worker, reports, store = run_attempt(tmp_path, connection(sshd, known_hosts=known, trust_on_first_use=True),
                                         "echo trusted")
    done = finished(worker, reports)
    assert done.exit_code == 0, log_of(store)
    assert f"trusting on first use: [{sshd.host}]:{sshd.port} offers {host_fingerprint(sshd)}" in log_of(store)
    assert known.read_text().split() == sshd.host_key_line.split()[:3], "recorded as OpenSSH would"


def test_a_changed_host_key_is_refused_even_with_trust_on_first_use(sshd, tmp_path):
    from raftflow_dev.sshd import write_key_pair

    impostor = write_key_pair(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {impostor}\n")
    worker, reports, store = run_attempt(tmp_path, connection(sshd, known_hosts=known, trust_on_first_use=True),
                                         "echo never")
    done = finished(worker, reports)
    assert done.exit_code == 255
    assert f"host key of [{sshd.host}]:{sshd.port} has CHANGED: it offers {host_fingerprint(sshd)}" in done.reason
    assert "never" not in log_of(store).replace("echo never", "")


def test_a_key_the_server_does_not_accept_fails_authentication(sshd, tmp_path):
    from raftflow_dev.sshd import write_key_pair

    write_key_pair(tmp_path / "stranger")
    worker, reports, store = run_attempt(tmp_path, connection(sshd, key_file=tmp_path / "stranger"), "echo never")
    done = finished(worker, reports)
    assert done.exit_code == 255
    assert done.reason.startswith(f"authentication as {sshd.user} at {sshd.host}:{sshd.port} failed with key "
                                  f"{tmp_path / 'stranger'}"), done.reason


def test_a_refused_connection_fails_the_attempt_with_the_reason(sshd, tmp_path):
    from raftflow_dev.local import free_ports

    closed = free_ports(1)[0]
    worker, reports, store = run_attempt(tmp_path, connection(sshd, port=closed), "echo never")
    done = finished(worker, reports)
    assert (done.exit_code, done.reason) == (
        255, f"cannot connect to {sshd.host}:{closed}: connection refused (is sshd running there, on that port?)")


def test_a_host_that_never_answers_times_out_within_the_connect_timeout(sshd, tmp_path):
    silent = socket.socket()   # accepts TCP connections (the kernel does), never speaks SSH
    silent.bind((sshd.host, 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    try:
        started = time.monotonic()
        worker, reports, store = run_attempt(tmp_path, connection(sshd, port=port, connect_timeout=1.0), "echo never")
        done = finished(worker, reports)
    finally:
        silent.close()
    assert (done.exit_code, done.reason) == (255, f"connection to {sshd.host}:{port} timed out after 1s in the SSH "
                                                  "handshake (is that port an SSH server?)")
    assert time.monotonic() - started < 15


def test_an_unknown_host_name_fails_the_attempt_saying_so(sshd, tmp_path):
    worker, reports, store = run_attempt(tmp_path, connection(sshd, host="no-such-host.invalid"), "echo never")
    done = finished(worker, reports)
    assert done.exit_code == 255
    assert done.reason.startswith("cannot resolve host no-such-host.invalid: "), done.reason


def test_execution_timeout_kills_the_remote_command_not_only_the_channel(sshd, tmp_path):
    pid_file = tmp_path / "remote.pid"
    worker, reports, store = run_attempt(tmp_path, connection(sshd),
                                         f"sleep 300 & echo $! > {pid_file}; echo started; wait", timeout=2.0)
    done = finished(worker, reports)
    remote = int(pid_file.read_text())
    wait_for(lambda: not alive(remote), 10, f"remote process {remote} to be gone")
    assert done.exit_code != 0
    assert done.reason.startswith("execution_timeout of 2s reached"), done.reason
    text = log_of(store)
    assert "execution_timeout of 2s reached: sending SIGTERM" in text
    assert "raftflow: sent SIGTERM to the remote command's process group" in text, text


def test_an_encrypted_key_needs_its_passphrase_from_the_environment(sshd, tmp_path, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    locked = tmp_path / "locked_key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.BestAvailableEncryption(b"open sesame")))
    locked.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with open(sshd.dir / "authorized_keys", "a") as f:
        f.write(public.decode() + "\n")
    worker, reports, store = run_attempt(tmp_path / "without", connection(sshd, key_file=locked), "echo never")
    done = finished(worker, reports)
    assert (done.exit_code, done.reason) == (
        255, f"key_file {locked} is encrypted: set passphrase_env for connection spark_master")
    monkeypatch.setenv("SPARK_KEY_PASSPHRASE", "open sesame")
    worker, reports, store = run_attempt(
        tmp_path / "with", connection(sshd, key_file=locked, passphrase_env="SPARK_KEY_PASSPHRASE"), "echo unlocked")
    done = finished(worker, reports)
    assert done.exit_code == 0, log_of(store)
    assert "unlocked\n" in log_of(store)


def test_only_the_task_env_and_the_attempt_variables_reach_the_remote_command(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("RAFTFLOW_SPARK_PASSWORD", "hunter2")     # a node's secret, named like ours
    conn = connection(sshd, password_env="RAFTFLOW_SPARK_PASSWORD")
    worker, reports, store = run_attempt(
        tmp_path, conn, 'echo "pw=${RAFTFLOW_SPARK_PASSWORD:-unset} home=$PYTHONHOME run=$RAFTFLOW_RUN_ID"; '
                        'env | grep -c hunter2 || true',
        env={"PYTHONHOME": "/opt/remote-python"})   # meant for the remote side; must not break the local runner
    done = finished(worker, reports)
    assert done.exit_code == 0, log_of(store)
    assert "pw=unset home=/opt/remote-python run=r1\n0\n" in log_of(store), log_of(store)


def _runner(sshd, command: str, pty: bool) -> subprocess.Popen:
    """sshrun.py started as the worker starts it (its own process group)."""
    env = {**os.environ, "RAFTFLOW_SSH_COMMAND": command, "RAFTFLOW_SSH_ENV": "{}",
           "RAFTFLOW_SSH_PTY": "1" if pty else "0", "RAFTFLOW_SSH_CONNECTION": connection(sshd).to_json()}
    return subprocess.Popen([sys.executable, "-m", "raftflow.worker.sshrun"], env=env, stdout=subprocess.PIPE,
                            start_new_session=True)


STUBBORN = "trap '' TERM HUP; nohup sleep 300 >/dev/null 2>&1 & echo $! > {pid}; echo started; wait"


@pytest.mark.parametrize("pty", [False, True], ids=["no-pty", "pty"])
def test_a_killed_runner_leaves_no_remote_process_even_one_ignoring_term_and_hup(sshd, tmp_path, pty):
    pid_file = tmp_path / "remote.pid"
    runner = _runner(sshd, STUBBORN.format(pid=pid_file), pty)
    remote = pid_from(pid_file)
    os.killpg(runner.pid, signal.SIGKILL)     # the node killed, or the reaper's fence
    runner.wait(10)
    wait_for(lambda: not alive(remote), 15, f"remote process {remote} to be killed by the wrapper's watcher")


def test_a_runner_killed_between_its_sigterm_and_its_sigkill_still_leaves_nothing(sshd, tmp_path):
    pid_file = tmp_path / "remote.pid"
    runner = _runner(sshd, STUBBORN.format(pid=pid_file), pty=False)
    remote = pid_from(pid_file)
    os.killpg(runner.pid, signal.SIGTERM)     # a timeout or cancel: the runner sends SIGTERM remotely ...
    out = b""
    while b"sent SIGTERM" not in out:
        chunk = os.read(runner.stdout.fileno(), 65536)
        assert chunk, out
        out += chunk
    os.killpg(runner.pid, signal.SIGKILL)     # ... and dies before its SIGKILL (the node died meanwhile)
    runner.wait(10)
    assert alive(remote), "SIGTERM alone must not have ended it (it ignores TERM)"
    wait_for(lambda: not alive(remote), 15, f"remote process {remote} to be killed by the watcher, which survived TERM")
