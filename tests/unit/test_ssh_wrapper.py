"""The remote side of an ssh task (worker/sshrun.py's `remote_script`), run here under
/bin/sh the way sshd runs it (a new session, the channel as stdin): no server needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from waiting import wait_for

from raftflow.worker.sshrun import PID_MARKER, remote_script


def start(command: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(["/bin/sh", "-c", remote_script(command, env or {})], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen) -> bytes:
    """All output, then the exit. The channel (stdin) stays open until then, as paramiko
    keeps it: closing it means the connection is gone, and the wrapper kills the command."""
    out = proc.stdout.read()
    proc.wait(10)
    proc.stdin.close()
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_it_reports_its_pid_exports_the_environment_and_keeps_the_exit_status():
    proc = start("echo \"$GREETING\" $RAFTFLOW_TASK_ID; exit 7", {"GREETING": "it's a \"quoted\" $value",
                                                                   "RAFTFLOW_TASK_ID": "t1"})
    first, rest = finish(proc).decode().split("\n", 1)
    assert first == f"{PID_MARKER}{proc.pid}", "the PID printed is the session (and process group) leader's"
    assert rest == "it's a \"quoted\" $value t1\n"
    assert proc.returncode == 7


def test_the_command_runs_with_stdin_from_dev_null_not_the_channel():
    proc = start("cat; echo end")
    proc.stdin.write(b"must not reach the command\n")   # the channel stays open, as paramiko keeps it
    proc.stdin.flush()
    out = proc.stdout.read()
    assert out.decode().split("\n", 1)[1] == "end\n"
    proc.stdin.close()
    assert proc.wait(10) == 0


def test_a_closed_channel_kills_the_command_even_if_it_ignores_sigterm(tmp_path: Path):
    pid_file = tmp_path / "pid"
    proc = start(f"trap '' TERM; sleep 300 & echo $! > {pid_file}; wait")
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "the command to start")
    sleeper = int(pid_file.read_text())
    assert alive(sleeper)
    proc.stdin.close()            # what sshd does when the connection drops
    wait_for(lambda: not alive(sleeper), 10, "the command to be killed (TERM ignored, so KILL)")
    proc.wait(10)


def test_sigterm_to_the_group_ends_the_command_and_the_wrapper_reports_its_status(tmp_path: Path):
    pid_file = tmp_path / "pid"
    proc = start(f"sleep 300 & echo $! > {pid_file}; wait")
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 10, "the command to start")
    os.killpg(proc.pid, 15)       # what the runner's second channel does on a timeout or cancel
    finish(proc)
    assert proc.returncode == 143, "the wrapper survives to report the command's death by SIGTERM"
    sleeper = int(pid_file.read_text())
    wait_for(lambda: not alive(sleeper), 5, "the command's own child to die of the same signal")


def test_the_pid_line_is_found_after_login_noise_and_taken_out_of_the_output():
    from raftflow.worker.sshrun import _PidLine

    line = _PidLine()
    assert line.feed(b"Could not chdir to home directory /nonexistent: No such file\r\n") == b""
    assert line.feed(b"echo says " + PID_MARKER.encode() + b"1 (not at a line start)\n" + PID_MARKER.encode()) == b""
    out = line.feed(b"4242\r\nfirst output\n")
    assert line.pid == 4242
    assert out == (b"Could not chdir to home directory /nonexistent: No such file\r\necho says " + PID_MARKER.encode()
                   + b"1 (not at a line start)\nfirst output\n")
    assert line.feed(b"more\n") == b"more\n"


def test_without_a_pid_line_everything_is_passed_on_and_the_pid_is_unknown():
    from raftflow.worker.sshrun import PID_SEARCH_LIMIT, _PidLine

    line = _PidLine()
    noise = b"x" * 1000 + b"\n"
    passed = b"".join(line.feed(noise) for _ in range(PID_SEARCH_LIMIT // len(noise) + 1))
    assert line.pid == -1 and passed == noise * (PID_SEARCH_LIMIT // len(noise) + 1)
    assert _PidLine().rest() == b""
