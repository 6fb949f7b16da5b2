"""Renders an attempt's templates outside the node process, bounded in memory, CPU
and time. Used by the worker (worker.py) only.

A template comes from a DAG file, and Jinja's sandbox stops it from reaching Python
internals, not from working: `{{ 'a' * 500000000 }}` or two nested loops over
`range(100000)` rendered inside the node froze it past its lease. So the node
never renders. A template-free string needs no rendering and is used as it is (no
process, no cost: `true`, most commands). Anything else goes to a renderer: a
pre-started `python -m raftflow.worker.renderer` process in its own session, that
holds at most RENDER_MEMORY bytes of address space (RLIMIT_AS) and gets at most
`cpu_seconds` of CPU per request (RLIMIT_CPU, raised before each one). The worker
waits for its answer polling the attempt: a cancel, a lapsed lease or the node's
shutdown, or the attempt's execution_timeout, kills the renderer at once (the
render counts against execution_timeout). A renderer that failed, died or was
killed is never reused; idle ones are kept for the next attempts (at most
`idle_max`), so a templated task costs an exchange over a pipe, not a process start.
A renderer evaluates user templates, so it sees what a task sees: the clean
environment the worker gives it (no node secret or setting), a working directory
outside the node's data directory, and the task user (run_as_user) when one is set.

Protocol, one request at a time: the worker writes an 8-byte big-endian length and
a pickle of (cpu_seconds, [(what, template), ...], context); the renderer answers
with a length and JSON: {"rendered": [text, ...]} or {"error": message}. The
worker only pickles towards the renderer; it reads back JSON, bounded.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .render import RenderError, is_template, render
from .xcom import with_task_instance

if TYPE_CHECKING:   # the renderer process itself imports no more than it needs
    from ..config import TaskUser

RENDER_MEMORY = 512 * 1024 * 1024    # address space of a renderer process (RLIMIT_AS)
RENDER_CPU_SECONDS = 10              # CPU per request (RLIMIT_CPU), also without an execution_timeout
# A rendered value becomes an argument or environment string of the attempt's
# process, which Linux caps at 128 KiB each (MAX_ARG_STRLEN): 1 MiB refuses nothing that could run.
RENDERED_LIMIT = 1024 * 1024
REPLY_LIMIT = 64 * 1024 * 1024       # the worker reads no longer answer than this
_HEADER = struct.Struct(">Q")
_POLL_SECONDS = 0.05                 # how often a waiting worker looks at the attempt


class RenderInterrupted(Exception):
    """The attempt was stopped (cancel, lease, shutdown) while its templates rendered;
    the renderer was killed. The caller decides what that means for the attempt."""


# ------------------------------------------------------------------ the renderer process
def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _render_all(templates: Sequence[tuple[str, str]], context: dict[str, Any]) -> list[str]:
    """Render each template; `context["ti"]` becomes one view they all share (what they
    push is its `pushed`)."""
    out = []
    for what, template in templates:
        text = render(template, context, what)
        if len(text) > RENDERED_LIMIT:
            raise RenderError(f"cannot render the {what}: the result is {len(text)} characters; the limit is "
                              f"{RENDERED_LIMIT} (a process argument or environment value cannot exceed 128 KiB)")
        out.append(text)
    return out


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """The renderer's loop: one request, one answer, until stdin closes (the node died
    or retired it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > RENDER_MEMORY:
        resource.setrlimit(resource.RLIMIT_AS, (RENDER_MEMORY, hard))
    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return 0
        payload = _read_exact(stdin, _HEADER.unpack(header)[0])
        if payload is None:
            return 0
        cpu_seconds, templates, context = pickle.loads(payload)
        used = sum(os.times()[:2])
        _soft, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
        limit = int(used) + 1 + int(cpu_seconds)
        if cpu_hard == resource.RLIM_INFINITY or limit < cpu_hard:
            resource.setrlimit(resource.RLIMIT_CPU, (limit, cpu_hard))   # SIGXCPU past it: the worker sees EOF
        try:
            ti = with_task_instance(context, can_push=True)
            reply: dict[str, Any] = {"rendered": _render_all(templates, context), "pushed": ti.pushed}
        except RenderError as e:
            reply = {"error": str(e)}
        data = json.dumps(reply).encode()
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()


# ------------------------------------------------------------------ the worker's side
def process_identity(user: TaskUser | None) -> dict[str, Any]:
    """subprocess.Popen's arguments that start a process as `user` with its primary group
    and no supplementary group (the node's, root's among them, must not leak into a
    task); none for None (this process's user). Needs root unless `user` is this one."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": []}


class _Renderer:
    """One renderer process and its pipes."""

    def __init__(self, cwd: Path, env: Mapping[str, str], run_as: TaskUser | None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "raftflow.worker.renderer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True, cwd=cwd, env=dict(env), **process_identity(run_as))

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.process.wait()

    def death(self) -> str:
        """Why the renderer stopped answering, once its output closed."""
        try:
            status = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "its renderer closed its output"
        if status == -signal.SIGXCPU:
            return "it used more than the renderer's CPU limit"
        if status < 0:
            return f"its renderer was killed by {signal.Signals(-status).name} (over its memory limit?)"
        return f"its renderer exited with status {status} (over its memory limit?)"


class RenderPool:
    """Renderer processes for this node's attempts. Thread-safe: each attempt's thread
    takes a renderer of its own for the length of one `render`."""

    def __init__(self, cwd: Path, env: Mapping[str, str], idle_max: int = 2, run_as: TaskUser | None = None) -> None:
        """`cwd`, `env`: the renderers' working directory and whole environment (the worker
        gives them a task's: clean, outside the data directory); `run_as`: the user they
        run as (None: this process's)."""
        self._cwd = cwd
        self._env = dict(env)
        self._run_as = run_as
        self.idle_max = idle_max
        self.cpu_seconds: float = RENDER_CPU_SECONDS
        self._lock = threading.Lock()
        self._idle: list[_Renderer] = []
        self._closed = False

    def prestart(self) -> None:
        """Start one renderer now, so the first templated attempt does not wait for it."""
        with self._lock:
            if not self._closed and not self._idle:
                self._idle.append(_Renderer(self._cwd, self._env, self._run_as))

    def render(self, templates: Sequence[tuple[str, str]], context: dict[str, Any], deadline: float | None,
               stopped: Callable[[], bool], timeout_note: str = "", pushed: dict[str, Any] | None = None) -> list[str]:
        """The rendered text of each (what, template), in order; what the templates pushed
        (`ti.xcom_push`) goes into `pushed`. Raises RenderError (the message names what
        failed and why; `timeout_note` is said when `deadline`, a time.monotonic() value,
        passes first) or RenderInterrupted once `stopped()`."""
        texts = [template for _what, template in templates]
        todo = [i for i, (_what, template) in enumerate(templates) if is_template(template)]
        if not todo:
            return texts
        request = pickle.dumps((self.cpu_seconds, [templates[i] for i in todo], context))
        renderer = self._take()
        try:
            reply = self._exchange(renderer, request, deadline, stopped, timeout_note,
                                   what=templates[todo[0]][0] if len(todo) == 1 else "templates")
        except BaseException:
            renderer.kill()
            raise
        if "error" in reply:
            renderer.kill()   # it may hold what failed (memory); a fresh one is cheap
            raise RenderError(str(reply["error"]))
        self._give_back(renderer)
        for i, text in zip(todo, reply["rendered"]):
            texts[i] = text
        if pushed is not None and isinstance(reply.get("pushed"), dict):
            pushed.update(reply["pushed"])
        return texts

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for renderer in idle:
            renderer.kill()

    def _take(self) -> _Renderer:
        with self._lock:
            if self._closed:   # the worker is shutting down: its attempts are refused anyway
                raise RenderInterrupted()
            while self._idle:
                renderer = self._idle.pop()
                if renderer.process.poll() is None:
                    return renderer
                renderer.kill()
        return _Renderer(self._cwd, self._env, self._run_as)

    def _give_back(self, renderer: _Renderer) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.idle_max:
                self._idle.append(renderer)
                return
        renderer.kill()

    @staticmethod
    def _exchange(renderer: _Renderer, request: bytes, deadline: float | None, stopped: Callable[[], bool],
                  timeout_note: str, what: str) -> dict[str, Any]:
        stdin, stdout = renderer.process.stdin, renderer.process.stdout
        assert stdin is not None and stdout is not None   # (started with both piped)
        try:
            stdin.write(_HEADER.pack(len(request)) + request)
            stdin.flush()
        except BrokenPipeError:
            raise RenderError(f"cannot render the {what}: {renderer.death()}") from None
        fd = stdout.fileno()
        poller = select.poll()   # not select.select: a busy node's descriptors may pass FD_SETSIZE
        poller.register(fd, select.POLLIN)
        answer = bytearray()
        expected: int | None = None
        while expected is None or len(answer) < _HEADER.size + expected:
            if stopped():
                raise RenderInterrupted()
            wait = _POLL_SECONDS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RenderError(f"cannot render the {what}: {timeout_note or 'out of time'}")
                wait = min(wait, left)
            if not poller.poll(wait * 1000):
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RenderError(f"cannot render the {what}: {renderer.death()}")
            answer += chunk
            if expected is None and len(answer) >= _HEADER.size:
                expected = _HEADER.unpack(answer[:_HEADER.size])[0]
                if expected > REPLY_LIMIT:
                    raise RenderError(f"cannot render the {what}: the rendered text is over {REPLY_LIMIT} bytes")
        reply: dict[str, Any] = json.loads(bytes(answer[_HEADER.size:]))
        return reply


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
