"""Runs one ssh task attempt on its remote host: `python -m raftflow.worker.sshrun`.

The worker starts this like any task process (its own process group, output read
into the task log, on the reaper's list), so timeouts, cancels and fencing treat an
ssh task exactly like a bash task; this module turns "this process is told to stop
or dies" into "the remote command stops".

Contract with the worker (set by kinds/ssh.py, `SSH.launch`), all through the environment:
  RAFTFLOW_SSH_CONNECTION  the connection (config.SSHConnection as JSON; no secret:
                           a password or passphrase is read from the environment
                           variable the connection names, here, when connecting)
  RAFTFLOW_SSH_COMMAND     the rendered command
  RAFTFLOW_SSH_ENV         JSON object of variables exported to the remote command
  RAFTFLOW_SSH_PTY         "1" to give the remote command a pseudo-terminal
  RAFTFLOW_SSH_CMD_TIMEOUT seconds the remote command may run ("" for no limit): past
                           them it is stopped as on SIGTERM and this exits 255 with
                           the reason "SSH command timed out" (Airflow's cmd_timeout)
  RAFTFLOW_REASON_FILE     where a one-line reason for a failure is written
Output: the remote command's stdout and stderr, merged in arrival order, written to
stdout as it arrives; this module's own lines start with "raftflow: ".
Exit status: the remote command's; 255 when the command could not be run or ended
without a status (connection failed, host key refused, authentication failed,
connection lost, killed by a signal).

Host keys are checked against the connection's known_hosts: an unknown key is
refused (unless the connection trusts on first use, which records it), a changed
key always is; the message names the host and the offered key's fingerprint.

Stopping. The remote side runs a small POSIX sh wrapper (`remote_script`) that
prints its PID (sshd makes it a session and process-group leader), runs the command
in its process group and watches its own stdin: sshd closes that when the
connection drops. So:
  - SIGTERM here (execution_timeout, `runs cancel`): a second channel sends
    SIGTERM to the remote process group, SIGKILL REMOTE_KILL_GRACE seconds later if
    the command is still running; then this process exits.
  - this process killed (SIGKILL from the worker or the reaper, node killed): the
    TCP connection closes, the wrapper's stdin reaches EOF, and it sends SIGTERM,
    then SIGKILL, to its process group.
Commands that leave their process group (setsid, nohup with daemonising, a job
handed to a cluster manager) are out of reach of both, as they are for bash tasks.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from ..config import SSHConnection
from ..kinds.ssh import SHELL_NAME

# Must stay below worker.KILL_GRACE: the worker SIGKILLs this process after that.
REMOTE_KILL_GRACE = 3.0
READ_CHUNK = 65536
PID_MARKER = "raftflow-remote-pid "
PID_SEARCH_LIMIT = 65536   # bytes of login noise tolerated before the wrapper's PID line
CONNECTION_FAILED = 255


class Refused(Exception):
    """The command cannot be run: the message is the attempt's reason."""


def remote_script(command: str, env: dict[str, str]) -> str:
    """The command line sent to sshd: the user's login shell execs /bin/sh with the
    wrapper (see module docstring). Pure, so it is tested without a server. Names in
    `env` are shell identifiers (spec.py checks them for ssh tasks)."""
    bad = [name for name in env if not SHELL_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"environment variable name {bad[0]!r} is not a shell identifier")
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))
    wrapper = (
        f'printf "{PID_MARKER}%s\\n" "$$"\n'
        # One stream on the remote side, so stdout and stderr keep their order.
        "exec 2>&1\n"
        f"{exports}"
        # The watcher: the channel's stdin, kept on fd 3 (an asynchronous list's fd 0 is
        # /dev/null), reaches EOF when the connection is gone; then it kills the group.
        # It ignores the signals that a stop (TERM) or a pty hangup (HUP) sends to the
        # whole group, so it outlives them to finish the job with SIGKILL.
        "exec 3<&0\n"
        "{ trap '' TERM HUP INT; cat <&3; kill -TERM -$$; sleep 2; kill -KILL -$$; } >/dev/null 2>&1 &\n"
        "watcher=$!\n"
        "exec 3<&-\n"
        # Traps (unlike ignored signals) are reset in the command: it dies of SIGTERM or
        # SIGHUP while this shell survives to report its status.
        "trap 'stopped=1' TERM HUP\n"
        f"/bin/sh -c {shlex.quote(command)} </dev/null\n"
        "status=$?\n"
        "kill -KILL $watcher 2>/dev/null\n"
        "exit $status\n"
    )
    return f"exec /bin/sh -c {shlex.quote(wrapper)}"


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


class _VerifyHostKey(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a host absent from known_hosts (a changed key raises
    BadHostKeyException before any policy). Refuses, or trusts on first use."""

    def __init__(self, target: SSHConnection, say: Any) -> None:
        self.target = target
        self.say = say

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        t = self.target
        if not t.trust_on_first_use:
            raise Refused(
                f"host key of {t.host_key_name} is not in known_hosts {t.known_hosts}: the host offers "
                f"{fingerprint(key)}. Check that fingerprint with the host's owner, then add it: "
                f"ssh-keyscan -p {t.port} {t.host} >> {t.known_hosts} (or set trust_on_first_use = true "
                f"for connection {t.name})")
        line = f"{t.host_key_name} {key.get_name()} {key.get_base64()}\n"
        path = t.known_hosts
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:   # attempts run in parallel: one writer at a time
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        client.get_host_keys().add(t.host_key_name, key.get_name(), key)
        self.say(f"trusting on first use: {t.host_key_name} offers {fingerprint(key)}; recorded in {t.known_hosts}")


class Runner:
    def __init__(self, target: SSHConnection, command: str, env: dict[str, str], get_pty: bool,
                 cmd_timeout: float | None = None) -> None:
        self.target = target
        self.cmd_timeout = cmd_timeout
        self.command = command
        self.env = env
        self.get_pty = get_pty
        self.stop_requested = threading.Event()
        self.client: paramiko.SSHClient | None = None

    def say(self, text: str) -> None:
        _write_all(f"raftflow: {text}\n".encode())

    def connect(self) -> paramiko.SSHClient:
        t = self.target
        client = paramiko.SSHClient()
        if t.known_hosts.exists():
            try:
                client.load_host_keys(str(t.known_hosts))
            except (OSError, paramiko.SSHException) as e:
                raise Refused(f"cannot read known_hosts {t.known_hosts}: {e}") from None
        elif not t.trust_on_first_use:
            raise Refused(f"known_hosts {t.known_hosts} does not exist, so the key of {t.host_key_name} "
                          f"cannot be verified; add it: ssh-keyscan -p {t.port} {t.host} >> {t.known_hosts}")
        client.set_missing_host_key_policy(_VerifyHostKey(t, self.say))
        password = os.environ.get(t.password_env) if t.password_env else None
        passphrase = os.environ.get(t.passphrase_env) if t.passphrase_env else None
        if t.password_env and password is None:
            raise Refused(f"connection {t.name}: ${t.password_env} is not set in this node's environment")
        pkey = None
        if t.key_file:
            try:
                # (paramiko passes the passphrase to cryptography, which takes bytes; its stubs say str)
                pkey = paramiko.PKey.from_path(str(t.key_file),
                                               passphrase.encode() if passphrase is not None else None)  # type: ignore[arg-type]
            except (paramiko.PasswordRequiredException, TypeError) as e:   # cryptography: TypeError
                if passphrase is None:
                    raise Refused(f"key_file {t.key_file} is encrypted: set passphrase_env for connection "
                                  f"{t.name}") from None
                raise Refused(f"cannot load key_file {t.key_file} of connection {t.name}: {e}") from None
            except (OSError, ValueError, paramiko.SSHException) as e:
                raise Refused(f"cannot load key_file {t.key_file} of connection {t.name}: {e}") from None
        how = " and ".join(filter(None, (f"key {t.key_file}" if t.key_file else "",
                                          f"the password in ${t.password_env}" if t.password_env else "")))
        began = time.monotonic()
        try:
            client.connect(t.host, port=t.port, username=t.user, pkey=pkey, password=password,
                           timeout=t.connect_timeout, banner_timeout=t.connect_timeout, auth_timeout=t.connect_timeout,
                           look_for_keys=False, allow_agent=False)
        except Refused:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise Refused(
                f"host key of {t.host_key_name} has CHANGED: it offers {fingerprint(e.key)}, known_hosts "
                f"{t.known_hosts} has {fingerprint(e.expected_key)}. Someone may be intercepting the connection; "
                f"if the host was really re-keyed, remove the old entry (ssh-keygen -R '{t.host_key_name}' -f "
                f"{t.known_hosts}) and add the new one") from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise Refused(f"authentication as {t.user} at {t.host}:{t.port} failed with {how}: {e}") from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise Refused(f"connection to {t.host}:{t.port} timed out after {t.connect_timeout:g}s") from None
        except socket.gaierror as e:
            client.close()
            raise Refused(f"cannot resolve host {t.host}: {e.strerror}") from None
        except paramiko.SSHException as e:
            client.close()
            if "protocol banner" in str(e) or time.monotonic() - began >= t.connect_timeout:
                raise Refused(f"connection to {t.host}:{t.port} timed out after {t.connect_timeout:g}s in the SSH "
                              "handshake (is that port an SSH server?)") from None
            raise Refused(f"SSH with {t.host}:{t.port} failed: {e}") from None
        except OSError as e:   # refused, unreachable (NoValidConnectionsError is one)
            client.close()
            causes = list(getattr(e, "errors", {}).values()) or [e]   # NoValidConnectionsError: one per address
            if all(isinstance(cause, ConnectionRefusedError) for cause in causes):
                detail = "connection refused (is sshd running there, on that port?)"
            else:
                detail = causes[0].strerror or str(causes[0])
            raise Refused(f"cannot connect to {t.host}:{t.port}: {detail}") from None
        transport = client.get_transport()
        assert transport is not None
        # A host that dies without closing the connection is noticed by TCP keepalive
        # (about a minute); paramiko's own keepalive expects no reply, so never notices.
        sock = transport.sock
        assert isinstance(sock, socket.socket)   # (connected directly, never through a proxy channel)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        return client

    def run(self) -> tuple[int, str]:
        """(exit status, reason or ''). Raises Refused when the command could not start."""
        t = self.target
        self.client = client = self.connect()
        if self.stop_requested.is_set():
            return CONNECTION_FAILED, "stopped before the remote command started"
        self.say(f"connected to {t.address} (connection {t.name}); running the command there")
        channel = client.get_transport().open_session(timeout=t.connect_timeout)   # type: ignore[union-attr]
        if self.get_pty:
            channel.get_pty()
        channel.set_combine_stderr(True)
        channel.exec_command(remote_script(self.command, self.env))
        channel.settimeout(0.1)
        pid_line = _PidLine()
        stop_sent_at: float | None = None
        killed = False
        timed_out = False
        began = time.monotonic()
        while True:
            if self.cmd_timeout is not None and not self.stop_requested.is_set() \
                    and time.monotonic() - began > self.cmd_timeout:
                timed_out = True
                self.stop_requested.set()
            if self.stop_requested.is_set() and stop_sent_at is None:
                stop_sent_at = time.monotonic()
                self._signal_remote(pid_line.pid, "TERM")
            if stop_sent_at is not None and not killed and time.monotonic() - stop_sent_at > REMOTE_KILL_GRACE:
                killed = True
                self._signal_remote(pid_line.pid, "KILL")
            if killed and time.monotonic() - stop_sent_at > REMOTE_KILL_GRACE + 1.0:   # type: ignore[operator]
                return CONNECTION_FAILED, "the remote command did not end after SIGKILL; connection closed"
            try:
                data = channel.recv(READ_CHUNK)
            except socket.timeout:
                if not client.get_transport().is_active():   # type: ignore[union-attr]
                    return CONNECTION_FAILED, f"connection to {t.host}:{t.port} lost while the command ran"
                continue
            if not data:
                _write_all(pid_line.rest())
                break
            had_pid = pid_line.pid != 0
            _write_all(pid_line.feed(data))
            if not had_pid and pid_line.pid and stop_sent_at is not None:
                self._signal_remote(pid_line.pid, "KILL" if killed else "TERM")   # the stop came before the PID
        deadline = time.monotonic() + 5.0
        while not channel.exit_status_ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if timed_out:
            return CONNECTION_FAILED, f"SSH command timed out after {self.cmd_timeout:g}s (cmd_timeout)"
        status = channel.exit_status if channel.exit_status_ready() else -1
        if status < 0 and not client.get_transport().is_active():   # type: ignore[union-attr]
            return CONNECTION_FAILED, f"connection to {t.host}:{t.port} lost while the command ran"
        if status < 0:
            return CONNECTION_FAILED, "the remote command ended without an exit status (killed by a signal?)"
        return status, ""

    def _signal_remote(self, pid: int, sig: str) -> None:
        """Signal the remote process group. PID 0: not known yet (sent once it arrives);
        -1: never reported, so close the connection: the wrapper's watcher acts on that."""
        if pid == 0:
            return
        if pid < 0:
            self.say("closing the connection to stop the remote command (its wrapper kills its process group)")
            self.client.close()   # type: ignore[union-attr]
            return
        try:
            kill = self.client.get_transport().open_session(timeout=1.0)   # type: ignore[union-attr]
            kill.exec_command(f"kill -{sig} -{pid} 2>/dev/null || kill -{sig} {pid}")
            deadline = time.monotonic() + 1.0
            while not kill.exit_status_ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            kill.close()
            self.say(f"sent SIG{sig} to the remote command's process group {pid} on {self.target.host}")
        except (paramiko.SSHException, OSError) as e:
            self.say(f"could not send SIG{sig} to the remote command on {self.target.host}: {e}")


def _write_all(data: bytes) -> None:
    """To stdout (the task log's pipe), all of it: os.write may write less."""
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


class _PidLine:
    """Finds the wrapper's PID line in the first output. Whatever the remote side prints
    before it (sshd's 'Could not chdir to home directory', a login script's echo) is
    passed through; if no PID line shows up in the first PID_SEARCH_LIMIT bytes the
    PID is unknown (-1) and everything is passed through."""

    def __init__(self) -> None:
        self.pid = 0
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """Output to pass on, with the PID line taken out."""
        if self.pid:
            return data
        self._pending += data
        marker = PID_MARKER.encode()
        at = self._pending.find(marker)
        while at > 0 and self._pending[at - 1:at] != b"\n":   # only at the start of a line
            at = self._pending.find(marker, at + 1)
        end = self._pending.find(b"\n", at) if at >= 0 else -1
        if end >= 0:
            line = self._pending[at + len(marker):end].strip()
            out, self._pending = self._pending[:at] + self._pending[end + 1:], b""
            self.pid = int(line) if line.isdigit() else -1
            return out
        if len(self._pending) > PID_SEARCH_LIMIT:
            self.pid = -1
            return self.rest()
        return b""

    def rest(self) -> bytes:
        out, self._pending = self._pending, b""
        return out


def _cmd_timeout(text: str | None) -> float | None:
    return float(text) if text else None


def main() -> int:
    target = SSHConnection.from_json(os.environ["RAFTFLOW_SSH_CONNECTION"])
    runner = Runner(target, os.environ["RAFTFLOW_SSH_COMMAND"], json.loads(os.environ.get("RAFTFLOW_SSH_ENV", "{}")),
                    os.environ.get("RAFTFLOW_SSH_PTY") == "1", _cmd_timeout(os.environ.get("RAFTFLOW_SSH_CMD_TIMEOUT")))
    reason_file = os.environ.get("RAFTFLOW_REASON_FILE")

    def stop(signum: int, _frame: Any) -> None:
        runner.stop_requested.set()

    # paramiko logs transport errors through logging's last-resort handler, onto stderr,
    # which is the task log; every failure is reported as the attempt's reason instead.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        status, reason = runner.run()
    except Refused as e:
        status, reason = CONNECTION_FAILED, str(e)
    except Exception as e:  # noqa: BLE001 - any other failure is the attempt's, with its message
        status, reason = CONNECTION_FAILED, f"ssh to {target.address} failed: {type(e).__name__}: {e}"
    finally:
        if runner.client is not None:
            runner.client.close()
    if reason:
        runner.say(reason)
        if reason_file:
            Path(reason_file).write_text(reason + "\n")
    elif status:
        runner.say(f"the remote command exited with status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
