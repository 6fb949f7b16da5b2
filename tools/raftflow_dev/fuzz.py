"""tools/fuzz: property-based, hostile requests to every client RPC of a real 3-node
cluster for a bounded time, then checks that the cluster came through whole.

    tools/fuzz [--duration SECONDS] [--seed S] [--json] [--keep DIR]

What it sends. Every RPC of protos/client.proto, to a node picked at random (a
follower forwards writes), with hostile shapes: JSON nested thousands deep (DAG
params, op_kwargs, trigger conf, the spec itself), sizes up to what a gRPC client
can send (the default max message is 4 MiB: no request exceeds MAX_REQUEST_BYTES),
unicode and control characters, ids at and past the id rule, templates such as
`{{ 'a' * 500000000 }}` and nested loops, dates like 9999-12-31, schedules every
second, 10,000-task chains, huge cancel reasons, pool names and conf, tasks that
print a lot, leave a FIFO as their result or a setsid child holding stdout.

How hypothesis drives it. The fuzzer is a `hypothesis.stateful.RuleBasedStateMachine`
(`FuzzMachine`): one rule per request shape, Bundles for the DAGs and runs that
exist, run by `run_state_machine_as_test` - the idiom hypothesis documents for
driving a system through a sequence of operations, and the one that lets later
steps use what earlier steps created. The cluster cannot be reset between
examples, so it runs in rounds: each round is a subclass carrying the shared
context, seeded with `@seed` from --seed and the round number, with
`phases=[Phase.generate]` (no shrinking or replaying against a live cluster),
`database=None` and `deadline=None`; the rounds go on until --duration has passed
(a rule that finds the time up does nothing, so the overrun is one request). A
strategy draws a small descriptor (a depth, a size, a character); the rule
expands it into the payload, so a 4 MiB input costs hypothesis's 8 KiB choice
buffer nothing. Each answer is classified: OK or a status that names the caller's
fault is expected; UNKNOWN, INTERNAL, DATA_LOSS or UNIMPLEMENTED is a finding.

Meanwhile a probe writes every 0.25 s (SetPool on a probe pool, toggling its
slots) and records each write's latency.

Then it checks, prints (--json: one JSON object on stdout) and exits 1 if any fails:
  fuzzer_completed   the state machine ran without an error of its own
  every_rpc_called   every RPC of the Client service was sent at least once
  no_server_errors   no request was answered UNKNOWN / INTERNAL / DATA_LOSS / UNIMPLEMENTED
  nodes_healthy      a leader is known and every node is healthy (within a deadline)
  runs_finish        after pausing every DAG and cancelling every unfinished run, all runs finish
  digests_equal      every node's state digest is equal once they caught up (within a deadline)
  normal_dag_runs    a plain two-task DAG submitted afterwards runs to success
  compaction         every node wrote a Raft snapshot after the fuzz ended (data/raft/snapshot
                     mtime; the cluster is configured to compact every --compaction-seconds)
  probe_latency      no probe write failed, the slowest took at most 1 s (p50/p99/max shown), and
                     it wrote at least once a second all along
  nodes_alive        every node still runs the process it started with (no crash, no restart)
Any snapshot fields `cluster status` reports (keys containing "snapshot") are shown too.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
from hypothesis import HealthCheck, Phase, Verbosity, seed as hypothesis_seed, settings, strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, multiple, rule, run_state_machine_as_test

from raftflow.config import RaftTuning
from raftflow.core.members import address_error
from raftflow.core.spec import DEFAULT_POOL, DEFAULT_POOL_SLOTS
from raftflow.proto import client_pb2, client_pb2_grpc
from raftflow_cli.client import ApiError, ClusterClient, ClusterUnreachable
from raftflow_cli.main import TERMINAL

from .local import LocalCluster

GRPC_MAX_MESSAGE = 4 * 1024 * 1024          # gRPC's default max receive size (the nodes keep it)
MAX_REQUEST_BYTES = GRPC_MAX_MESSAGE - 16 * 1024   # room for the other fields and framing
FIELD_ROOM = 1024   # a DagToSubmit's filename, tags and lengths, beside its spec and source
PROBE_POOL = "fuzz_probe"
PROBE_INTERVAL = 0.25
PROBE_MAX_LATENCY = 1.0
CALL_TIMEOUT = 5.0   # a fuzz request; the run overruns --duration by at most about this
NORMAL_DAG = "fuzz_normal_check"
# Statuses that name the caller's fault or a passing condition: expected answers to hostile input.
EXPECTED_CODES = frozenset({
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
})
# Statuses that mean the node failed on the request (an unhandled exception, a wedge): findings.
SERVER_ERROR_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS,
                                grpc.StatusCode.UNIMPLEMENTED})
ALL_RPCS = tuple(m.name for m in client_pb2.DESCRIPTOR.services_by_name["Client"].methods)
DAG_IDS = tuple(f"fz_{i}" for i in range(16))   # resubmits replace versions: the DAG count stays bounded


# ------------------------------------------------------------ payloads (pure)
def utf8_fill(char: str, size: int) -> str:
    """`char` repeated to at most `size` bytes of UTF-8 (at least one char)."""
    return char * max(1, size // utf8_len(char))


def json_fill(char: str, size: int) -> str:
    """`char` repeated so that the string, once JSON-encoded (escapes and all), is at most
    `size` bytes (at least one char)."""
    per = utf8_len(json.dumps(char, ensure_ascii=False)) - 2
    return char * max(1, (size - 2) // per)


def utf8_len(text: str) -> int:
    """Bytes on the wire."""
    return len(text.encode("utf-8"))


def deep_json(depth: int, shape: str) -> str:
    """JSON text nested `depth` levels (built as text: the json module itself recurses)."""
    if shape == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"k":' * depth + "1" + "}" * depth


def with_raw(value: dict[str, Any], raw: dict[str, str]) -> str:
    """json.dumps(value) with each placeholder string replaced by raw JSON text."""
    text = json.dumps(value, ensure_ascii=False)
    for placeholder, raw_text in raw.items():
        text = text.replace(json.dumps(placeholder), raw_text, 1)
    return text


@dataclass(frozen=True, slots=True)
class FuzzDag:
    dag_id: str
    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FuzzRun:
    run_id: str
    dag_id: str
    task_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Submission:
    """One DagToSubmit and what it declares (for the bundles once it is accepted)."""
    spec_json: str
    source: str
    filename: str
    dag: FuzzDag
    shape: str        # for reports: what was hostile about it


# ------------------------------------------------------------ strategies
FILL_CHARS = st.sampled_from(["a", "é", "€", "😀", "\u202e", "\x00", "\ufeff", "\n", "'", '"', "{{", "$(id)"])
SIZES = st.one_of(st.integers(0, 256), st.integers(257, 64 * 1024), st.integers(64 * 1024, MAX_REQUEST_BYTES - 8192))
# Shallow; deep enough to break a recursive encoder or pickle inside a node (a few hundred
# levels) yet parse on the way in; deeper than Python's json parser goes (~1000).
DEPTHS = st.one_of(st.integers(1, 40), st.integers(200, 1000), st.integers(1000, 6000))
DATES = st.sampled_from(["9999-12-31", "9999-12-31T23:59:59+00:00", "0001-01-01", "1970-01-01", "2000-02-29",
                         "2026-01-01T00:00:00-14:00", "2026-13-45", "not a date", "", "2026-01-01T24:00:00",
                         "+275760-09-13", "2026-06-01", "2026-06-01T00:00:05"])


@st.composite
def odd_ids(draw: st.DrawFn, huge: bool = True) -> str:
    """An id at the edge of the id rule or past it: 250 chars, unicode, controls, and (unless
    the request has another field that may be huge: one per request fits) up to 4 MiB."""
    return draw(st.one_of(
        st.sampled_from(["", ".hidden", "-dash", "a b", "a/b", "a\x00b", "ünï", "😀", "_", "0", "a" * 250, "a" * 251,
                         "../../etc/passwd", "fz_0\n", "FZ_0", "a.b-c_d"]),
        st.builds(utf8_fill, FILL_CHARS, SIZES if huge else st.integers(0, 4096)),
        st.text(max_size=40),
    ))


@st.composite
def templates(draw: st.DrawFn) -> str:
    """A bash command template: harmless, expensive to render, or broken."""
    kind = draw(st.sampled_from(["plain", "mul", "mul_raw", "loops", "macro", "params", "conf", "undefined",
                                 "syntax"]))
    if kind == "mul_raw":   # the issue's own: a 500 MB command line
        n = draw(st.one_of(st.just(500_000_000), st.integers(1, 1_000_000)))
        return f"echo {{{{ 'a' * {n} }}}} | wc -c"
    if kind == "mul":
        n = draw(st.one_of(st.just(500_000_000), st.integers(1, 50_000_000)))
        return f"echo {{{{ ('a' * {n}) | length }}}}"
    if kind == "loops":
        n = draw(st.integers(1, 3000))
        return f"echo {{% for i in range({n}) %}}{{% for j in range({n}) %}}{{% endfor %}}{{% endfor %}}done"
    if kind == "macro":
        return "echo {% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
    if kind == "params":
        return "echo {{ params | tojson | length }} {{ params.table | default('none') | string | length }}"
    if kind == "conf":
        return "echo {{ dag_run.conf | tojson | length }}"
    if kind == "undefined":
        return "echo {{ no_such_name }}"
    if kind == "syntax":
        return "echo {{ unclosed"
    return "echo {{ ds }} {{ run_id | length }}"


@st.composite
def bash_tasks(draw: st.DrawFn) -> dict[str, Any]:
    """A bash task body (no id or upstream): a template, loud output, a FIFO result, a setsid child."""
    kind = draw(st.sampled_from(["template", "template", "template", "loud", "fifo", "setsid", "sleep", "fail"]))
    if kind == "template":
        command = draw(templates())
    elif kind == "loud":
        command = f"head -c {draw(st.integers(1, 80 * 1024 * 1024))} /dev/zero | tr '\\0' a"
    elif kind == "fifo":
        command = 'rm -f "$RAFTFLOW_RESULT_FILE"; mkfifo "$RAFTFLOW_RESULT_FILE"'
    elif kind == "setsid":
        command = "setsid sh -c 'sleep 15' & echo started"
    elif kind == "sleep":
        command = f"sleep {draw(st.integers(0, 20))}"
    else:
        command = f"exit {draw(st.integers(1, 255))}"
    task: dict[str, Any] = {"kind": "bash", "command": command}
    timeout = draw(st.one_of(st.none(), st.integers(1, 30)))
    if timeout is not None:
        task["execution_timeout"] = timeout
    if draw(st.booleans()):
        task["env"] = {"FUZZ": json_fill(draw(FILL_CHARS).replace("\x00", "z"), draw(st.integers(0, 256 * 1024)))}
    return task


@st.composite
def submissions(draw: st.DrawFn) -> Submission:
    """A DAG spec with one hostile trait (or none), as the CLI would submit it."""
    dag_id = draw(st.one_of(st.sampled_from(DAG_IDS), odd_ids(huge=False)))
    shape = draw(st.sampled_from(["plain", "deep_params", "big_params", "chain", "big_source", "unicode",
                                  "schedule", "dates", "python_deep", "python_big", "numbers", "many_tags"]))
    n_tasks = draw(st.integers(1, 10_000)) if shape == "chain" else draw(st.integers(1, 4))
    tasks: list[dict[str, Any]] = []
    raw: dict[str, str] = {}
    for i in range(n_tasks):
        body = draw(bash_tasks()) if i < 4 else {"kind": "bash", "command": "true"}
        tasks.append({"task_id": f"t{i}", "upstream": [f"t{i - 1}"] if i else [], **body})
    spec: dict[str, Any] = {"dag_id": dag_id, "tasks": tasks, "catchup": "none",
                            "is_paused_upon_creation": draw(st.booleans())}
    source = f"# fuzz {shape}\n"
    if shape == "deep_params":
        spec["params"] = {"table": "orders", "deep": "@DEEP@"}
        raw["@DEEP@"] = deep_json(draw(DEPTHS), draw(st.sampled_from(["dict", "list"])))
    elif shape == "big_params":
        spec["params"] = {"table": json_fill(draw(FILL_CHARS), draw(st.integers(1, 80 * 1024)))}
    elif shape == "big_source":
        source = utf8_fill(draw(FILL_CHARS), draw(SIZES))
    elif shape == "unicode":
        spec["description"] = draw(st.text(max_size=200))
        spec["tags"] = [draw(st.text(max_size=50)) for _ in range(3)]
        source = draw(st.text(max_size=2000))
    elif shape == "schedule":
        spec["schedule"] = draw(st.sampled_from(["* * * * * *", "*/1 * * * * *", "* * * * *", "@daily",
                                                 "0 0 30 2 *", "H * * * *", "* * * * * * *"]))
        spec["catchup"] = draw(st.sampled_from(["all", "latest", "none"]))
        spec["start_date"] = draw(st.sampled_from(["2026-01-01", "2000-01-01", "9999-12-31"]))
        spec["max_active_runs"] = draw(st.integers(1, 64))
    elif shape == "dates":
        spec["start_date"] = draw(DATES)
        spec["end_date"] = draw(st.one_of(st.none(), DATES))
        spec["schedule"] = draw(st.sampled_from(["@daily", "* * * * * *", "0 0 1 1 *"]))
    elif shape in ("python_deep", "python_big"):
        kwargs: dict[str, Any] = {"deep": "@KW@"} if shape == "python_deep" else \
            {"blob": json_fill(draw(FILL_CHARS), draw(SIZES) // 2)}
        if shape == "python_deep":
            raw["@KW@"] = deep_json(draw(DEPTHS), draw(st.sampled_from(["dict", "list"])))
        tasks[0] = {"task_id": "t0", "kind": "python", "python_callable": "json:dumps", "op_kwargs": kwargs}
    elif shape == "numbers":
        spec["max_active_runs"] = draw(st.sampled_from([0, -1, 2**31, 2**63, 2**64, 1.5, True]))
        spec["keep_days"] = draw(st.sampled_from([None, 1e308, -1, 0.0001]))
        tasks[0]["retries"] = draw(st.sampled_from([0, 2**63, -5, 3]))
        tasks[0]["retry_delay"] = draw(st.sampled_from([0, 1e308, 86400 * 365 * 1000]))
    elif shape == "many_tags":
        spec["tags"] = [f"tag{i}" for i in range(draw(st.integers(1, 100_000)))]
    spec_json = with_raw(spec, raw)
    over = utf8_len(spec_json) + utf8_len(source) + FIELD_ROOM - MAX_REQUEST_BYTES
    if over > 0:   # keep within what a client can send: trim the free-form source first
        source = source[: max(0, len(source) - over)]
    return Submission(spec_json, source, f"{shape}.py", FuzzDag(dag_id, tuple(t["task_id"] for t in tasks)), shape)


@st.composite
def confs(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["empty", "small", "deep", "big", "unicode", "injection", "not_object",
                                 "malformed", "nan"]))
    if kind == "small":
        return json.dumps({"table": draw(st.text(max_size=30))})
    if kind == "deep":
        return with_raw({"deep": "@D@"}, {"@D@": deep_json(draw(DEPTHS), draw(st.sampled_from(["dict", "list"])))})
    if kind == "big":
        return json.dumps({"blob": json_fill(draw(FILL_CHARS), draw(SIZES))}, ensure_ascii=False)
    if kind == "unicode":
        return json.dumps({draw(st.text(max_size=20)): draw(st.text(max_size=200))}, ensure_ascii=False)
    if kind == "injection":
        return json.dumps({"table": "orders; echo INJECTED as $(id -un) #"})
    if kind == "not_object":
        return draw(st.sampled_from(["[]", "1", '"x"', "null", "true"]))
    if kind == "malformed":
        return draw(st.sampled_from(["{", "{'a': 1}", '{"a": }', "\x00", "{" * 100_000]))
    if kind == "nan":
        return '{"a": NaN, "b": Infinity}'
    return ""


def texts_up_to_max() -> st.SearchStrategy[str]:
    """Free text (reasons, names): empty, short unicode, or huge."""
    return st.one_of(st.just(""), st.text(max_size=100), st.builds(utf8_fill, FILL_CHARS, SIZES))


# ------------------------------------------------------------ recording
@dataclass
class Record:
    """What the fuzzer sent and how each request was answered (shared by the rounds)."""
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    oversize_skipped: list[str] = field(default_factory=list)   # payloads are sized to fit: a bug
    steps: int = 0          # requests answered (or failed) so far
    dags: dict[str, FuzzDag] = field(default_factory=dict)     # accepted, by id (latest shape)
    runs: dict[str, FuzzRun] = field(default_factory=dict)     # created, by id
    # (sent, answered, request bytes, what) of every request, time.monotonic(): what was in
    # flight while a probe write was slow
    spans: list[tuple[float, float, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, code: grpc.StatusCode, what: str, details: str) -> None:
        with self.lock:
            self.steps += 1
            self.codes[(method, code.name)] += 1
            if code in SERVER_ERROR_CODES and len(self.server_errors) < 50:
                self.server_errors.append({"rpc": method, "code": code.name, "input": what[:200],
                                           "details": details[:400]})

    def called(self) -> set[str]:
        return {method for method, _ in self.codes}

    def span(self, sent: float, size: int, what: str) -> None:
        with self.lock:
            self.spans.append((sent, time.monotonic(), size, what[:120]))

    def in_flight(self, start: float, end: float, most: int = 6) -> list[str]:
        """The requests (largest first) that were in flight at some point of [start, end]."""
        with self.lock:
            during = [s for s in self.spans if s[0] <= end and s[1] >= start]
        during.sort(key=lambda s: (-s[2], s[0]))
        return [f"{size} B, {(answered - sent) * 1000:.0f} ms: {what}" for sent, answered, size, what in during[:most]]


@dataclass
class FuzzContext:
    channels: list[grpc.Channel]
    record: Record
    deadline: float                         # time.monotonic() at which the fuzz stops

    def stub(self, node: int) -> client_pb2_grpc.ClientStub:
        return client_pb2_grpc.ClientStub(self.channels[node % len(self.channels)])


class FuzzMachine(RuleBasedStateMachine):
    """One rule per request shape; `ctx` is set on the per-round subclass (see `fuzz`)."""

    ctx: FuzzContext
    dags = Bundle("dags")
    runs = Bundle("runs")

    # ------------------------------------------------------------ plumbing
    def _time_up(self) -> bool:
        return time.monotonic() >= self.ctx.deadline

    def _call(self, node: int, method: str, request: Any, what: str) -> Any:
        """Send one unary request; returns the response, or None on an error status (recorded)."""
        record = self.ctx.record
        if request.ByteSize() > MAX_REQUEST_BYTES:
            record.oversize_skipped.append(f"{what[:150]}: {request.ByteSize()} bytes")  # a strategy's bug
            return None
        sent = time.monotonic()
        try:
            response = getattr(self.ctx.stub(node), method)(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            record.answer(method, e.code(), what, e.details() or "")
            return None
        finally:
            record.span(sent, request.ByteSize(), what)
        record.answer(method, grpc.StatusCode.OK, what, "")
        return response

    def _stream(self, node: int, method: str, request: Any, what: str, most: int, seconds: float) -> int:
        """Read at most `most` messages of a server stream for at most `seconds`; returns how many."""
        record = self.ctx.record
        received = 0
        sent = time.monotonic()
        call = getattr(self.ctx.stub(node), method)(request, timeout=seconds)
        try:
            for _ in call:
                received += 1
                if received >= most:
                    call.cancel()
                    break
        except grpc.RpcError as e:
            code = e.code()
            if not (code is grpc.StatusCode.CANCELLED and received >= most):
                record.answer(method, code, what, e.details() or "")
                return received
        finally:
            record.span(sent, request.ByteSize(), what)
        record.answer(method, grpc.StatusCode.OK, what, "")
        return received

    @staticmethod
    def _pick(items: tuple[str, ...], pick: int) -> str:
        return items[pick % len(items)] if items else "t0"

    # ------------------------------------------------------------ state carried over rounds
    @initialize(target=dags)
    def known_dags(self) -> Any:
        return multiple(*list(self.ctx.record.dags.values())[-32:])

    @initialize(target=runs)
    def known_runs(self) -> Any:
        return multiple(*list(self.ctx.record.runs.values())[-64:])

    # ------------------------------------------------------------ writes
    @rule(target=dags, subs=st.lists(submissions(), min_size=1, max_size=3), node=st.integers(0, 2))
    def submit_dags(self, subs: list[Submission], node: int) -> Any:
        if self._time_up():
            return multiple()
        total = 0
        kept: list[Submission] = []
        for sub in subs:   # several in one request only while they fit together
            size = utf8_len(sub.spec_json) + utf8_len(sub.source) + FIELD_ROOM
            if total + size <= MAX_REQUEST_BYTES or not kept:
                kept.append(sub)
                total += size
        request = client_pb2.SubmitDagsRequest(dags=[
            client_pb2.DagToSubmit(spec_json=s.spec_json, source=s.source, filename=s.filename) for s in kept])
        what = "SubmitDags " + ", ".join(f"{s.shape}:{s.dag.dag_id[:40]!r} ({len(s.spec_json)}+{len(s.source)} chars)"
                                         for s in kept)
        if self._call(node, "SubmitDags", request, what) is None:
            return multiple()
        for s in kept:
            self.ctx.record.dags[s.dag.dag_id] = s.dag
        return multiple(*(s.dag for s in kept))

    @rule(node=st.integers(0, 2), text=st.one_of(
        st.sampled_from(["", "{", "[]", "null", '"x"', "1e999", '{"dag_id": "fz_0"}',
                         '{"dag_id": "fz_0", "tasks": []}']),
        st.builds(deep_json, DEPTHS, st.sampled_from(["dict", "list"])),
        st.builds(lambda d: '{"dag_id": "fz_0", "tasks": ' + deep_json(d, "list") + "}", DEPTHS),
        st.builds(utf8_fill, FILL_CHARS, SIZES)))
    def submit_malformed(self, node: int, text: str) -> None:
        if self._time_up():
            return
        request = client_pb2.SubmitDagsRequest(dags=[client_pb2.DagToSubmit(spec_json=text, source="", filename="x")])
        self._call(node, "SubmitDags", request, f"SubmitDags malformed spec of {len(text)} chars: {text[:60]!r}")

    @staticmethod
    def _dag_id(dag: FuzzDag, odd: str | None) -> str:
        """The known DAG's id, or the odd id drawn instead of it."""
        return dag.dag_id if odd is None else odd

    @rule(target=runs, dag=dags, conf=confs(), node=st.integers(0, 2))
    def trigger(self, dag: FuzzDag, conf: str, node: int) -> Any:
        if self._time_up():
            return multiple()
        response = self._call(node, "TriggerDag", client_pb2.TriggerDagRequest(dag_id=dag.dag_id, conf_json=conf),
                              f"TriggerDag {dag.dag_id[:40]!r} conf of {len(conf)} chars: {conf[:60]!r}")
        if response is None:
            return multiple()
        run = FuzzRun(response.run_id, dag.dag_id, dag.task_ids)
        self.ctx.record.runs[run.run_id] = run
        return run

    @rule(dag_id=odd_ids(huge=False), conf=confs(), node=st.integers(0, 2))
    def trigger_unknown(self, dag_id: str, conf: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "TriggerDag", client_pb2.TriggerDagRequest(dag_id=dag_id, conf_json=conf),
                       f"TriggerDag odd id of {len(dag_id)} chars {dag_id[:40]!r}, conf of {len(conf)} chars "
                       f"{conf[:60]!r}")

    @rule(target=runs, dag=dags, start=DATES, end=DATES, node=st.integers(0, 2))
    def backfill(self, dag: FuzzDag, start: str, end: str, node: int) -> Any:
        if self._time_up():
            return multiple()
        response = self._call(node, "BackfillDag", client_pb2.BackfillDagRequest(dag_id=dag.dag_id, start=start,
                                                                                   end=end),
                              f"BackfillDag {dag.dag_id[:40]!r} {start!r}..{end!r}")
        if response is None:
            return multiple()
        created = [FuzzRun(r, dag.dag_id, dag.task_ids) for r in list(response.created)[:16]]
        for run in created:
            self.ctx.record.runs[run.run_id] = run
        return multiple(*created)

    @rule(dag=dags, odd=st.one_of(st.none(), odd_ids()), paused=st.booleans(), node=st.integers(0, 2))
    def set_paused(self, dag: FuzzDag, odd: str | None, paused: bool, node: int) -> None:
        if not self._time_up():
            dag_id = self._dag_id(dag, odd)
            self._call(node, "SetPaused", client_pb2.SetPausedRequest(dag_id=dag_id, paused=paused),
                       f"SetPaused {dag_id[:40]!r} {paused}")

    @rule(run=runs, odd=st.one_of(st.none(), odd_ids(huge=False)), reason=texts_up_to_max(), node=st.integers(0, 2))
    def cancel_run(self, run: FuzzRun, odd: str | None, reason: str, node: int) -> None:
        if not self._time_up():
            run_id = run.run_id if odd is None else odd
            self._call(node, "CancelRun", client_pb2.CancelRunRequest(run_id=run_id, reason=reason),
                       f"CancelRun {run_id[:60]!r} reason of {len(reason)} chars")

    @rule(run=runs, picks=st.lists(st.integers(0, 10**6), max_size=8), odd=st.lists(odd_ids(huge=False), max_size=3),
          many=st.integers(0, 100_000), downstream=st.booleans(), node=st.integers(0, 2))
    def clear_tasks(self, run: FuzzRun, picks: list[int], odd: list[str], many: int, downstream: bool,
                    node: int) -> None:
        if self._time_up():
            return
        task_ids = [self._pick(run.task_ids, p) for p in picks] + odd
        if many > 50_000:   # every task of the run, repeated: list membership and the downstream scan
            task_ids += list(run.task_ids) * max(1, many // max(1, len(run.task_ids)) // 10)
        request = client_pb2.ClearTasksRequest(run_id=run.run_id, task_ids=task_ids, downstream=downstream)
        self._call(node, "ClearTasks", request,
                   f"ClearTasks {run.run_id[:60]!r} {len(task_ids)} ids downstream={downstream}")

    @rule(run=runs, pick=st.integers(0, 10**6), odd=st.one_of(st.none(), odd_ids()),
          state=st.one_of(st.sampled_from(["success", "failed", "running", "queued", "SUCCESS", ""]), st.text()),
          node=st.integers(0, 2))
    def mark_task(self, run: FuzzRun, pick: int, odd: str | None, state: str, node: int) -> None:
        if not self._time_up():
            task_id = odd if odd is not None else self._pick(run.task_ids, pick)
            self._call(node, "MarkTask", client_pb2.MarkTaskRequest(run_id=run.run_id, task_id=task_id, state=state),
                       f"MarkTask {run.run_id[:60]!r} {task_id[:40]!r} {state[:20]!r}")

    @rule(dag=dags, odd=st.one_of(st.none(), odd_ids()), node=st.integers(0, 2))
    def delete_dag(self, dag: FuzzDag, odd: str | None, node: int) -> None:
        if not self._time_up():
            dag_id = self._dag_id(dag, odd)
            self._call(node, "DeleteDag", client_pb2.DeleteDagRequest(dag_id=dag_id), f"DeleteDag {dag_id[:40]!r}")

    @rule(name=st.one_of(st.sampled_from(["fuzz_pool", "default_pool"]), odd_ids()),
          slots=st.one_of(st.integers(0, 8), st.just(2**32 - 1)), node=st.integers(0, 2))
    def set_pool(self, name: str, slots: int, node: int) -> None:
        if not self._time_up() and name != PROBE_POOL:
            self._call(node, "SetPool", client_pb2.SetPoolRequest(name=name, slots=slots),
                       f"SetPool name of {len(name)} chars {name[:40]!r} slots={slots}")

    @rule(name=st.one_of(st.sampled_from(["fuzz_t1", "fuzz_t2", "admin"]), odd_ids()),
          role=st.one_of(st.sampled_from(["viewer", "operator", "admin"]), st.text(max_size=20)),
          days=st.one_of(st.integers(0, 3651), st.just(2**32 - 1)), node=st.integers(0, 2))
    def create_token(self, name: str, role: str, days: int, node: int) -> None:
        if not self._time_up():
            self._call(node, "CreateToken", client_pb2.CreateTokenRequest(name=name, role=role, expires_days=days),
                       f"CreateToken name of {len(name)} chars {name[:40]!r} role={role[:20]!r} days={days}")

    @rule(name=st.one_of(st.sampled_from(["fuzz_t1", "fuzz_t2", "admin"]), odd_ids()), node=st.integers(0, 2))
    def revoke_token(self, name: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "RevokeToken", client_pb2.RevokeTokenRequest(name=name), f"RevokeToken {name[:40]!r}")

    # Voters changed live: only requests the cluster must refuse (an invalid address, a
    # voter's id at other addresses, an id that is no voter): a voter really added at an
    # address nobody serves would cost the cluster its majority, which is no fuzz finding.
    @rule(voter=st.one_of(st.sampled_from(["n1", "n2", "n3"]), odd_ids(huge=False)),
          grpc=st.one_of(st.just("127.0.0.1:1"), st.text(max_size=300)),
          raft=st.text(max_size=300).filter(lambda a: address_error("raft_address", a) is not None),
          peer=st.one_of(st.just("127.0.0.1:2"), st.text(max_size=300)), node=st.integers(0, 2))
    def add_voter(self, voter: str, grpc: str, raft: str, peer: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "AddVoter", client_pb2.AddVoterRequest(node=voter, grpc_address=grpc, raft_address=raft,
                                                                    peer_address=peer),
                       f"AddVoter {voter[:40]!r} raft {raft[:40]!r}")

    @rule(voter=odd_ids().filter(lambda v: v not in ("n1", "n2", "n3")), node=st.integers(0, 2))
    def remove_voter(self, voter: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "RemoveVoter", client_pb2.RemoveVoterRequest(node=voter), f"RemoveVoter {voter[:40]!r}")

    @rule(key=st.one_of(st.sampled_from(["fuzz_var", "db_password", "a.b-c"]), odd_ids(huge=False)),
          value=st.one_of(texts_up_to_max(), st.builds(json_fill, FILL_CHARS, SIZES)), node=st.integers(0, 2))
    def set_variable(self, key: str, value: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "SetVariable", client_pb2.SetVariableRequest(key=key, value=value),
                       f"SetVariable key of {len(key)} chars {key[:40]!r} value of {len(value)} chars")

    @rule(key=st.one_of(st.sampled_from(["fuzz_var", "db_password"]), odd_ids()), node=st.integers(0, 2))
    def delete_variable(self, key: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "DeleteVariable", client_pb2.DeleteVariableRequest(key=key),
                       f"DeleteVariable {key[:40]!r}")

    @rule(entries=st.dictionaries(st.one_of(st.sampled_from(["fuzz_var", "imported"]), odd_ids(huge=False)),
                                  st.one_of(st.just(""), st.text(max_size=100)), max_size=4),
          huge=st.one_of(st.none(), st.builds(utf8_fill, FILL_CHARS, SIZES)),
          many=st.one_of(st.just(0), st.integers(1001, 3000)), node=st.integers(0, 2))
    def import_variables(self, entries: dict[str, str], huge: str | None, many: int, node: int) -> None:
        """A few hostile entries (at most one of them huge: four huge values would not fit
        one gRPC message, seed 337758), or more than a node keeps (1,000): all or none."""
        if not self._time_up():
            variables = dict(entries) if not many else {f"bulk_{i}": "x" for i in range(many)}
            if huge is not None and not many:
                variables["huge_value"] = huge
            self._call(node, "ImportVariables", client_pb2.ImportVariablesRequest(variables=variables),
                       f"ImportVariables of {len(variables)}")

    # ------------------------------------------------------------ reads
    @rule(node=st.integers(0, 2))
    def list_tokens(self, node: int) -> None:
        if not self._time_up():
            self._call(node, "ListTokens", client_pb2.ListTokensRequest(), "ListTokens")

    @rule(node=st.integers(0, 2))
    def list_variables(self, node: int) -> None:
        if not self._time_up():
            self._call(node, "ListVariables", client_pb2.ListVariablesRequest(), "ListVariables")

    @rule(key=st.one_of(st.sampled_from(["fuzz_var", "db_password", "nope"]), odd_ids()), node=st.integers(0, 2))
    def get_variable(self, key: str, node: int) -> None:
        if not self._time_up():
            self._call(node, "GetVariable", client_pb2.GetVariableRequest(key=key), f"GetVariable {key[:40]!r}")

    @rule(node=st.integers(0, 2))
    def list_pools(self, node: int) -> None:
        if not self._time_up():
            self._call(node, "ListPools", client_pb2.ListPoolsRequest(), "ListPools")

    @rule(node=st.integers(0, 2))
    def list_dags(self, node: int) -> None:
        if not self._time_up():
            self._call(node, "ListDags", client_pb2.ListDagsRequest(), "ListDags")

    @rule(dag=dags, odd=st.one_of(st.none(), odd_ids()), version=st.one_of(st.integers(0, 3), st.just(2**32 - 1)),
          include_code=st.booleans(), node=st.integers(0, 2))
    def get_dag(self, dag: FuzzDag, odd: str | None, version: int, include_code: bool, node: int) -> None:
        if not self._time_up():
            dag_id = self._dag_id(dag, odd)
            self._call(node, "GetDag", client_pb2.GetDagRequest(dag_id=dag_id, version=version,
                                                                include_code=include_code),
                       f"GetDag {dag_id[:40]!r} v{version} code={include_code}")

    @rule(dag=dags, every_dag=st.booleans(), limit=st.one_of(st.integers(0, 100), st.just(2**32 - 1)),
          node=st.integers(0, 2))
    def list_runs(self, dag: FuzzDag, every_dag: bool, limit: int, node: int) -> None:
        if not self._time_up():
            dag_id = "" if every_dag else dag.dag_id
            self._call(node, "ListRuns", client_pb2.ListRunsRequest(dag_id=dag_id, limit=limit),
                       f"ListRuns {dag_id[:40]!r} limit={limit}")

    @rule(run=runs, odd=st.one_of(st.none(), odd_ids()), node=st.integers(0, 2))
    def get_run(self, run: FuzzRun, odd: str | None, node: int) -> None:
        if not self._time_up():
            run_id = run.run_id if odd is None else odd
            self._call(node, "GetRun", client_pb2.GetRunRequest(run_id=run_id), f"GetRun {run_id[:60]!r}")

    @rule(run=runs, odd=st.one_of(st.none(), odd_ids()), most=st.integers(1, 5), node=st.integers(0, 2))
    def watch_run(self, run: FuzzRun, odd: str | None, most: int, node: int) -> None:
        if not self._time_up():
            run_id = run.run_id if odd is None else odd
            self._stream(node, "WatchRun", client_pb2.GetRunRequest(run_id=run_id), f"WatchRun {run_id[:60]!r}",
                         most, 2.0)

    @rule(run=runs, pick=st.integers(0, 10**6), attempt=st.one_of(st.integers(0, 3), st.just(2**32 - 1)),
          from_chunk=st.one_of(st.integers(0, 3), st.just(2**64 - 1)), node=st.integers(0, 2))
    def get_task_log(self, run: FuzzRun, pick: int, attempt: int, from_chunk: int, node: int) -> None:
        if not self._time_up():
            task_id = self._pick(run.task_ids, pick)
            request = client_pb2.GetTaskLogRequest(run_id=run.run_id, task_id=task_id, attempt=attempt,
                                                   from_chunk=from_chunk)
            self._stream(node, "GetTaskLog", request,
                         f"GetTaskLog {run.run_id[:60]!r} {task_id!r} a{attempt} from {from_chunk}", 64, 3.0)

    @rule(run=runs, pick=st.integers(0, 10**6), odd=st.one_of(st.none(), odd_ids()), node=st.integers(0, 2))
    def get_task_story(self, run: FuzzRun, pick: int, odd: str | None, node: int) -> None:
        if not self._time_up():
            run_id, task_id = run.run_id if odd is None else odd, self._pick(run.task_ids, pick)
            self._call(node, "GetTaskStory", client_pb2.GetTaskStoryRequest(run_id=run_id, task_id=task_id),
                       f"GetTaskStory {run_id[:60]!r} {task_id[:40]!r}")

    @rule(callers=st.one_of(st.just(1), st.integers(2, 64)), node=st.integers(0, 2))
    def cluster_status(self, callers: int, node: int) -> None:
        """Concurrent callers too: every node computes its digest per call."""
        if self._time_up():
            return
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(lambda i: self._call(node + i, "ClusterStatus", client_pb2.ClusterStatusRequest(),
                                               f"ClusterStatus x{callers}"), range(callers)))


def fuzz(ctx: FuzzContext, base_seed: int, log: Callable[[str], None]) -> str | None:
    """Run rounds of FuzzMachine until ctx.deadline. Returns the error that stopped it (a
    fuzzer bug), or None."""
    rounds = 0
    while time.monotonic() < ctx.deadline:
        machine = type(f"FuzzRound{rounds}", (FuzzMachine,), {"ctx": ctx})
        hypothesis_seed(random.Random(f"{base_seed}/{rounds}").getrandbits(64))(machine)
        try:
            run_state_machine_as_test(machine, settings=settings(
                max_examples=4, stateful_step_count=40, deadline=None, database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, report_multiple_bugs=False))
        except Exception as e:  # noqa: BLE001 - a fuzzer bug; the checks still run
            return f"{type(e).__name__}: {e}"[:2000]
        rounds += 1
        log(f"{time.strftime('%H:%M:%S')} round {rounds}: {ctx.record.steps} requests so far")
    return None


def seed_world(client: ClusterClient, record: Record) -> None:
    """One plain DAG and one run of it, so the rules that need a DAG or a run can fire from
    the first step, whatever the first submissions' fate."""
    spec = {"dag_id": "fz_seed", "tasks": [{"task_id": "t0", "kind": "bash", "command": "echo {{ ds }}"},
                                          {"task_id": "t1", "kind": "bash", "command": "true", "upstream": ["t0"]}]}
    client.submit([{"spec_json": json.dumps(spec), "source": "# fuzz seed\n", "filename": "seed.py"}])
    record.dags["fz_seed"] = FuzzDag("fz_seed", ("t0", "t1"))
    run_id = client.trigger("fz_seed")["run_id"]
    record.runs[run_id] = FuzzRun(run_id, "fz_seed", ("t0", "t1"))


# ------------------------------------------------------------ probe
@dataclass
class Probe:
    """Writes every PROBE_INTERVAL s (SetPool toggling the probe pool's slots) and records latencies."""
    client: ClusterClient
    latencies: list[float] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)   # wall clock, to find the moment in node logs
    sent: list[float] = field(default_factory=list)         # time.monotonic(), to find the fuzz's requests
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        next_at = time.monotonic()
        i = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.client.set_pool(PROBE_POOL, 1 + i % 2)
            except (ApiError, ClusterUnreachable) as e:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {e}"[:300])
            self.latencies.append(time.monotonic() - started)
            self.started_at.append(time.time() - (time.monotonic() - started))
            self.sent.append(started)
            i += 1
            next_at = max(next_at + PROBE_INTERVAL, time.monotonic())
            self.stop.wait(next_at - time.monotonic())

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        if not lat:
            return {"writes": 0, "failed": len(self.failures)}

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
        return {"writes": len(lat), "failed": len(self.failures), "p50_ms": round(statistics.median(lat) * 1000, 1),
                "p99_ms": round(pct(0.99), 1), "max_ms": round(lat[-1] * 1000, 1),
                "over_1s": sum(1 for x in lat if x > PROBE_MAX_LATENCY), "failures": self.failures[:10],
                "slowest": [f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d} "
                            f"{latency * 1000:.0f} ms"
                            for latency, at in sorted(zip(self.latencies, self.started_at), reverse=True)[:5]]}

    def slowest_with(self, record: Record, most: int = 3) -> list[dict[str, Any]]:
        """The `most` slowest writes with the fuzz's requests in flight meanwhile (evidence
        for the reader of a failed probe_latency check)."""
        slowest = sorted(zip(self.latencies, self.sent), reverse=True)[:most]
        return [{"ms": round(latency * 1000), "in_flight": record.in_flight(sent, sent + latency)}
                for latency, sent in slowest]


# ------------------------------------------------------------ checks
def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> tuple[bool, Any]:
    """Poll `predicate` until truthy or `timeout`; (ok, last value). Errors count as falsy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return True, last
        except (ApiError, ClusterUnreachable) as e:
            last = f"{type(e).__name__}: {e}"[:500]
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(interval)


def quiesce(client: ClusterClient, timeout: float) -> tuple[bool, Any]:
    """Pause every DAG and cancel every unfinished run until none is left (or timeout: a
    pass stops sending once it is past, so a wedged cluster costs one call's wait more)."""
    deadline = time.monotonic() + timeout

    def settled() -> Any:
        for dag in client.list_dags()["dags"]:
            if not dag["paused"] and time.monotonic() < deadline:
                client.set_paused(dag["dag_id"], True)
        unfinished = [r for r in client.list_runs(limit=100_000)["runs"] if r["state"] not in TERMINAL]
        for r in unfinished:
            if time.monotonic() >= deadline:
                break
            try:
                client.cancel_run(r["run_id"], "fuzz ended")
            except ApiError:
                pass    # finished meanwhile, or refused: the next pass sees which
        return not unfinished or False
    ok, last = wait_until(settled, timeout, interval=1.0)
    if not ok:
        try:
            last = [r["run_id"] for r in client.list_runs(limit=100_000)["runs"] if r["state"] not in TERMINAL][:20]
        except (ApiError, ClusterUnreachable) as e:
            last = str(e)[:300]
    return ok, last


def all_healthy(client: ClusterClient) -> Any:
    """Each node's role, health and error as the answering node sees them; falsy unless a
    leader is known and every node is healthy."""
    status = client.cluster_status()
    nodes = {n["id"]: {"role": n["role"], "healthy": n["healthy"], "error": n.get("error", "")[:200]}
             for n in status["nodes"]}
    healthy = bool(status["leader"]) and all(n["healthy"] for n in nodes.values())
    return {"leader": status["leader"], "nodes": nodes} if healthy else \
        _Falsy({"leader": status["leader"], "nodes": nodes, "served_by": status.get("served_by")})


class _Falsy(dict):
    """Evidence that still counts as "not yet" for wait_until."""

    def __bool__(self) -> bool:
        return False


def leader_changes(client: ClusterClient) -> Any:
    """The leader changes the cluster recorded (elections during the fuzz show here)."""
    try:
        changes = client.cluster_status()["leader_changes"]
    except (ApiError, ClusterUnreachable) as e:
        return str(e)[:300]
    return {"count": len(changes), "last": changes[-5:]}


def equal_digests(client: ClusterClient) -> Any:
    status = client.cluster_status()
    nodes = {n["id"]: {"digest": n["digest"], "last_applied": n["last_applied"], "error": n.get("error", "")}
             for n in status["nodes"]}
    digests = {n["digest"] for n in nodes.values()}
    return nodes if len(digests) == 1 and all(digests) else _Falsy(nodes)


def run_normal_dag(client: ClusterClient, timeout: float) -> tuple[bool, Any]:
    spec = {"dag_id": NORMAL_DAG, "tasks": [{"task_id": "extract", "kind": "bash", "command": "echo extract"},
                                            {"task_id": "load", "kind": "bash", "command": "echo {{ ds }}",
                                             "upstream": ["extract"]}]}
    client.submit([{"spec_json": json.dumps(spec), "source": "# the fuzz's check DAG\n", "filename": "check.py"}])
    client.set_paused(NORMAL_DAG, False)
    # The fuzz may have set the default pool to 0 slots (a legal request): then nothing
    # runs, by design. Give it back its default size first.
    client.set_pool(DEFAULT_POOL, DEFAULT_POOL_SLOTS)
    run_id = client.trigger(NORMAL_DAG)["run_id"]
    seen: dict[str, Any] = {}

    def finished() -> Any:
        seen["run"] = client.get_run(run_id)
        return seen["run"]["state"] in TERMINAL and seen["run"]

    ok, run = wait_until(finished, timeout)
    if not ok:
        last = seen.get("run")
        return False, {"run_id": run_id, "wait": run if isinstance(run, str) else None,
                       "last": None if last is None else {
                           "state": last["state"],
                           "tasks": {t["task_id"]: [t["state"], t.get("reason", "")] for t in last["tasks"]}}}
    return run["state"] == "success", {"run_id": run_id, "state": run["state"],
                                       "tasks": {t["task_id"]: t["state"] for t in run["tasks"]}}


def snapshot_times(cluster: LocalCluster) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for node in cluster.nodes:
        try:
            out[node.node_id] = (node.dir / "data" / "raft" / "snapshot").stat().st_mtime
        except OSError:
            out[node.node_id] = None
    return out


def snapshot_fields(client: ClusterClient) -> dict[str, Any]:
    """Whatever `cluster status` says about snapshots (fields named *snapshot*), per node."""
    try:
        status = client.cluster_status()
    except (ApiError, ClusterUnreachable) as e:
        return {"error": str(e)[:300]}
    return {n["id"]: {k: v for k, v in n.items() if "snapshot" in k} for n in status["nodes"]}


def node_log_summary(cluster: LocalCluster) -> dict[str, Any]:
    """Per node: how many lines each log level wrote, and the first CRITICAL lines (for the
    reader who looks for the cause of a failed check; not a check itself)."""
    out: dict[str, Any] = {}
    for node in cluster.nodes:
        levels: Counter[str] = Counter()
        critical: list[str] = []
        try:
            with open(node.log_path, "rb") as f:
                for raw_line in f:
                    parts = raw_line[:200].decode("utf-8", "replace").split(" ", 4)
                    if len(parts) == 5 and parts[3] in ("CRITICAL", "ERROR", "WARNING"):
                        levels[parts[3]] += 1
                        if parts[3] == "CRITICAL" and len(critical) < 3:
                            critical.append(raw_line[:300].decode("utf-8", "replace").rstrip())
        except OSError as e:
            out[node.node_id] = str(e)
            continue
        out[node.node_id] = {"levels": dict(levels), "critical": critical}
    return out


# ------------------------------------------------------------ the run
def run(duration: float, seed: int, data_dir: Path, compaction_seconds: float, log: Callable[[str], None]) -> dict:
    set_hypothesis_home_dir(data_dir / "hypothesis")   # its caches, out of the working tree
    # Compaction every `compaction_seconds` (default 300 s): the check needs a snapshot soon
    # after the fuzz, and the fuzz then also runs against frequent snapshots.
    cluster = LocalCluster(data_dir, nodes=3, raft=RaftTuning(log_compaction_min_time=compaction_seconds))
    checks: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"duration_s": duration, "seed": seed, "checks": checks}

    def check(name: str, ok: bool, evidence: Any) -> None:
        checks[name] = {"ok": bool(ok), "evidence": evidence}
        log(f"{time.strftime('%H:%M:%S')} {name}: {'ok' if ok else 'FAILED'}")

    cluster.start()
    # The checks' client: 5 s a node, so a wedged cluster fails the checks in minutes, not hours.
    client = cluster.client(timeout=5.0)
    probe = Probe(cluster.client(timeout=5.0))
    channels = [cluster.channel(n.grpc_address) for n in cluster.nodes]
    try:
        cluster.wait_ready(60)
        pids = {n.node_id: cluster.pid_of(n.node_id) for n in cluster.nodes}
        client.set_pool(PROBE_POOL, 1)
        record = Record()
        seed_world(client, record)
        ctx = FuzzContext(channels, record, time.monotonic() + duration)
        probe_thread = threading.Thread(target=probe.run, name="probe", daemon=True)
        probe_thread.start()
        log(f"{time.strftime('%H:%M:%S')} fuzzing for {duration:.0f}s (seed {seed})")
        started = time.monotonic()
        fuzz_error = fuzz(ctx, seed, log)
        probe.stop.set()
        probe_thread.join()
        fuzz_ended = time.time()
        result["fuzz_seconds"] = round(time.monotonic() - started, 1)
        result["requests"] = record.steps
        result["answers"] = {f"{m} {c}": n for (m, c), n in sorted(record.codes.items())}
        result["probe"] = probe.summary()
        result["probe"]["slowest_with"] = probe.slowest_with(record)
        log(f"{time.strftime('%H:%M:%S')} fuzz ended: {record.steps} requests; checking")

        check("fuzzer_completed", fuzz_error is None and not record.oversize_skipped,
              {"error": fuzz_error, "oversize_skipped": record.oversize_skipped[:10]})
        check("every_rpc_called", set(ALL_RPCS) <= record.called(),
              {"not_called": sorted(set(ALL_RPCS) - record.called())})
        check("no_server_errors", not record.server_errors, record.server_errors[:10])
        ok, evidence = wait_until(lambda: all_healthy(client), 30, interval=1.0)
        check("nodes_healthy", ok, evidence)
        result["leader_changes"] = leader_changes(client)
        ok, evidence = quiesce(client, 30)
        check("runs_finish", ok, {"unfinished": evidence} if not ok else None)
        ok, evidence = wait_until(lambda: equal_digests(client), 30, interval=1.0)
        check("digests_equal", ok, evidence)
        try:
            ok, evidence = run_normal_dag(client, 60)
        except (ApiError, ClusterUnreachable) as e:
            ok, evidence = False, f"{type(e).__name__}: {e}"[:500]
        check("normal_dag_runs", ok, evidence)

        def compacted() -> Any:
            client.set_pool(PROBE_POOL, 1 + int(time.time()) % 2)   # entries to compact
            times = snapshot_times(cluster)
            return times if all(t is not None and t > fuzz_ended for t in times.values()) else False
        ok, evidence = wait_until(compacted, 3 * compaction_seconds + 20, interval=1.0)
        if not ok:
            evidence = {"fuzz_ended": fuzz_ended, "snapshot_mtimes": snapshot_times(cluster)}
        check("compaction", ok, {"mtimes": evidence, "cluster_status": snapshot_fields(client)})
        p = result["probe"]
        # A probe whose every write took at most 1 s wrote at least once a second: fewer writes
        # mean it stalled (or stopped) somewhere.
        check("probe_latency", p["writes"] >= int(duration / PROBE_MAX_LATENCY) and p["failed"] == 0
              and p.get("max_ms", 0) <= PROBE_MAX_LATENCY * 1000, p)
        now = {n.node_id: cluster.live_pid(n.node_id) for n in cluster.nodes}
        check("nodes_alive", now == pids, {"at_start": pids, "now": now})
        result["node_logs"] = node_log_summary(cluster)
        result["ok"] = all(c["ok"] for c in checks.values())
        return result
    finally:
        for channel in channels:
            channel.close()
        client.close()
        probe.client.close()
        cluster.stop()


def render(result: dict[str, Any]) -> str:
    p = result.get("probe", {})
    lines = [f"\nfuzz: {result.get('requests', 0)} requests in {result.get('fuzz_seconds', 0)}s, seed {result['seed']}",
             f"probe writes {p.get('writes', 0)}, failed {p.get('failed', 0)}: p50 {p.get('p50_ms')} ms, "
             f"p99 {p.get('p99_ms')} ms, max {p.get('max_ms')} ms"]
    for name, c in result["checks"].items():
        line = f"  {'ok    ' if c['ok'] else 'FAILED'} {name}"
        if not c["ok"]:
            line += f"\n         {json.dumps(c['evidence'], default=str)[:1500]}"
        lines.append(line)
    lines.append("verdict: " + ("all checks passed" if result.get("ok") else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/fuzz", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of fuzzing (default 60)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--compaction-seconds", type=float, default=10.0,
                        help="the cluster's log_compaction_min_time (default 10)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--keep", help="keep the cluster's data and logs in this folder")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    log: Callable[[str], None] = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else \
        (lambda line: print(line, flush=True))
    log(f"fuzz: 3 nodes, {args.duration:.0f}s, seed {seed}")
    if args.keep:
        data_dir = Path(args.keep)
        data_dir.mkdir(parents=True, exist_ok=True)
        result = run(args.duration, seed, data_dir, args.compaction_seconds, log)
    else:
        with tempfile.TemporaryDirectory(prefix="raftflow-fuzz-") as tmp:
            result = run(args.duration, seed, Path(tmp), args.compaction_seconds, log)
    print(json.dumps(result, sort_keys=True, default=str) if args.json else render(result), flush=True)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
