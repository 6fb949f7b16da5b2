"""The ssh kind: runs `command` on the host of `ssh_conn_id`, a connection defined in
the nodes' config (never in the DAG), through worker/sshrun.py, which reads the
RAFTFLOW_SSH_* variables set here. It runs only on nodes that have the connection."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.names import ID_PATTERN, ID_RULE
from .base import AttemptInput, CannotStart, InvalidArgs, Launch, NodeOffer, TaskKind

if TYPE_CHECKING:
    from ..core.spec import TaskSpec

SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")   # an ssh task's env names (exported remotely)


class SSH(TaskKind):
    name: ClassVar[str] = "ssh"
    # ssh_conn_id: the connection; get_pty: whether the remote command gets a pseudo-terminal;
    # cmd_timeout: seconds the remote command may run before it is stopped and the attempt
    # fails (Airflow's SSHOperator cmd_timeout; None: no limit but execution_timeout).
    fields: ClassVar[Mapping[str, Any]] = {"ssh_conn_id": "", "get_pty": False, "cmd_timeout": None}

    def parse(self, raw: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
        ssh_conn_id = raw.get("ssh_conn_id", "")
        get_pty = raw.get("get_pty", False)
        if not isinstance(get_pty, bool):
            raise InvalidArgs(f"get_pty must be true or false, got {get_pty!r}")
        if not isinstance(ssh_conn_id, str) or not ID_PATTERN.fullmatch(ssh_conn_id):
            raise InvalidArgs("an ssh task needs ssh_conn_id, the name of a connection in the nodes' config "
                              f"({ID_RULE}), got {ssh_conn_id!r}")
        bad_names = [k for k in env if not SHELL_NAME.fullmatch(k)]
        if bad_names:
            raise InvalidArgs(f"env name {bad_names[0]!r} cannot be exported to the remote shell: "
                              "use letters, digits and _ (not starting with a digit)")
        cmd_timeout = raw.get("cmd_timeout")
        if cmd_timeout is not None and (not isinstance(cmd_timeout, (int, float)) or isinstance(cmd_timeout, bool)
                                        or not math.isfinite(cmd_timeout) or cmd_timeout <= 0):
            raise InvalidArgs(f"cmd_timeout must be a positive number of seconds or null, got {cmd_timeout!r:.80}")
        return {"ssh_conn_id": ssh_conn_id, "get_pty": get_pty,
                "cmd_timeout": float(cmd_timeout) if cmd_timeout is not None else None}

    def can_run_on(self, task: TaskSpec, node: NodeOffer) -> bool:
        return task.ssh_conn_id in node.connections

    def unplaceable(self, task: TaskSpec) -> str:
        return (f"waiting: no live node serving queue {task.queue!r} has SSH connection {task.ssh_conn_id!r} "
                "(define it in a node's config; `raftflow connections list` shows which nodes have which)")

    def launch(self, attempt: AttemptInput) -> Launch:
        """The remote command gets the task's env and the attempt's RAFTFLOW_* variables,
        nothing of this node's environment (which may hold the connection's password).
        The local runner is raftflow's own code, running no user code here: it gets no
        task env, and of the node's variables exactly the connection's password_env and
        passphrase_env (to log in); it runs as the node's user, who can read key_file."""
        conn = attempt.connections.get(attempt.task.ssh_conn_id)
        if conn is None:
            raise CannotStart(f"node {attempt.node_id} has no SSH connection {attempt.task.ssh_conn_id!r} in its "
                              f"config (it has: {', '.join(attempt.connections) or 'none'})")
        remote_env = {**attempt.env, **attempt.variables}
        secrets = tuple(name for name in (conn.password_env, conn.passphrase_env) if name)
        return Launch((sys.executable, "-m", "raftflow.worker.sshrun"), node_variables=secrets,
                      as_node_user=True, extra_env={
                          "RAFTFLOW_SSH_CONNECTION": conn.to_json(),
                          "RAFTFLOW_SSH_COMMAND": attempt.command,
                          "RAFTFLOW_SSH_ENV": json.dumps(remote_env),
                          "RAFTFLOW_SSH_PTY": "1" if attempt.task.get_pty else "0",
                          "RAFTFLOW_SSH_CMD_TIMEOUT": _seconds_text(attempt.task.arg("cmd_timeout")),
                          "RAFTFLOW_REASON_FILE": attempt.reason_file,
                          "PYTHONUNBUFFERED": "1",
                      })


def _seconds_text(value: float | None) -> str:
    return "" if value is None else repr(float(value))


KIND = SSH()
