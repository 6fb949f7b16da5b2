"""The history checker of tools/jepsen: what clients did and saw, judged after the fact.

Pure: it reads a list of `Op`s (each client operation with its invocation and completion
times and outcome) and what the healed cluster holds at the end, and returns every
violation as a sentence. Small enough to be checked by reading (and by its unit tests,
tests/unit/test_history_checker.py, which feed it histories with each kind of fault).

Outcomes, as Jepsen names them: `ok` (acknowledged), `fail` (a definite error: the client
library says nothing was changed), `info` (unknown: it may have applied, at most once).

What is checked, and why each is what raftflow promises:
- triggers (`check_triggers`): every write carries a request id, so an acknowledged
  trigger's run exists exactly once, a failed one's never, an unknown one's at most once;
  no run exists that nobody asked for.
- registers (`check_registers`): pools written with unique values per key and read from
  any node. Reads answer from the node's replica (possibly stale, by design), so they
  are not checked for linearizability; but a read never shows a value nobody wrote, or
  one whose write failed, or one written only after the read completed; and the value
  each key ends with was written by a write that no acknowledged write followed in real
  time (writes are linearizable: they go through the Raft log).
- monotonic reads (`check_monotonic_reads`): a client's reads never go back in time
  (ReadMeta.last_applied never decreases for one client).
- one state per index (`check_same_index_same_state`): two reads answered at the same
  applied index, on any nodes, saw the same registers (replicas are deterministic).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable

INFINITY = float("inf")


class Outcome(str, Enum):
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


class Kind(str, Enum):
    TRIGGER = "trigger"     # key: the op id put in the run's conf
    WRITE = "write"         # key: a register (pool) name; value: what was written
    READ = "read"           # values: every register the read saw; applied: its ReadMeta.last_applied


@dataclass(slots=True)
class Op:
    client: int
    kind: Kind
    key: str = ""
    value: int | None = None
    invoked: float = 0.0
    completed: float = INFINITY         # INFINITY while pending, and for `info`
    outcome: Outcome = Outcome.INFO
    values: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    node: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"client": self.client, "kind": self.kind.value, "key": self.key, "value": self.value,
                "invoked": self.invoked, "completed": None if self.completed == INFINITY else self.completed,
                "outcome": self.outcome.value, "values": self.values, "applied": self.applied,
                "node": self.node, "error": self.error}


def check_triggers(ops: Iterable[Op], runs_per_op: dict[str, int]) -> list[str]:
    """`runs_per_op`: op id -> how many runs of the cluster carry it (at the end)."""
    violations = []
    triggers = [op for op in ops if op.kind is Kind.TRIGGER]
    asked = {op.key for op in triggers}
    for op in triggers:
        found = runs_per_op.get(op.key, 0)
        if op.outcome is Outcome.OK and found != 1:
            violations.append(f"acknowledged trigger {op.key} (client {op.client}) has {found} runs, not 1")
        elif op.outcome is Outcome.FAIL and found:
            violations.append(f"trigger {op.key} (client {op.client}) failed definitely ({op.error[:120]}) "
                              f"but has {found} run(s)")
        elif op.outcome is Outcome.INFO and found > 1:
            violations.append(f"trigger {op.key} of unknown outcome has {found} runs, more than 1")
    for key, found in sorted(runs_per_op.items()):
        if key not in asked:
            violations.append(f"{found} run(s) carry op {key}, which no client triggered")
    return violations


def check_registers(ops: Iterable[Op], final: dict[str, int]) -> list[str]:
    """`final`: each register's value in the healed cluster (absent: never set)."""
    ops = list(ops)
    writes: dict[tuple[str, int], Op] = {}
    violations = []
    for op in ops:
        if op.kind is Kind.WRITE:
            assert op.value is not None
            if (op.key, op.value) in writes:
                raise ValueError(f"the workload wrote {op.value} to {op.key} twice: values must be unique per key")
            writes[(op.key, op.value)] = op
    for op in ops:
        if op.kind is not Kind.READ or op.outcome is not Outcome.OK:
            continue
        for key, value in op.values.items():
            writer = writes.get((key, value))
            if writer is None:
                violations.append(f"client {op.client} read {key}={value} from {op.node}, a value nobody wrote")
            elif writer.outcome is Outcome.FAIL:
                violations.append(f"client {op.client} read {key}={value} from {op.node}, written by a write "
                                  f"that failed definitely ({writer.error[:120]})")
            elif writer.invoked > op.completed:
                violations.append(f"client {op.client} read {key}={value} before that write was invoked")
    for key, value in sorted(final.items()):
        writer = writes.get((key, value))
        if writer is None:
            violations.append(f"{key} ends as {value}, a value nobody wrote")
            continue
        if writer.outcome is Outcome.FAIL:
            violations.append(f"{key} ends as {value}, written by a write that failed definitely")
            continue
        later = [w for (k, _), w in writes.items()
                 if k == key and w.outcome is Outcome.OK and w.invoked > writer.completed]
        if later:
            first = min(later, key=lambda w: w.invoked)
            violations.append(f"{key} ends as {value}, but the acknowledged write of {first.value} began after "
                              f"that write had completed (a lost write)")
    acknowledged_keys = {k for (k, _), w in writes.items() if w.outcome is Outcome.OK}
    for key in sorted(acknowledged_keys - final.keys()):
        violations.append(f"{key} was written (acknowledged) but the healed cluster does not have it")
    return violations


def check_monotonic_reads(ops: Iterable[Op]) -> list[str]:
    """Per client, in completion order, the applied index of its reads never decreases."""
    by_client: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind is Kind.READ and op.outcome is Outcome.OK:
            by_client[op.client].append(op)
    violations = []
    for client, reads in sorted(by_client.items()):
        reads.sort(key=lambda r: r.completed)
        for before, after in zip(reads, reads[1:]):
            if after.applied < before.applied:
                violations.append(f"client {client} read index {after.applied} from {after.node} after it had "
                                  f"read index {before.applied} from {before.node} (went back in time)")
    return violations


def check_same_index_same_state(ops: Iterable[Op]) -> list[str]:
    """Reads answered at the same applied index saw the same registers, whichever node."""
    seen: dict[int, tuple[dict[str, int], Op]] = {}
    violations = []
    for op in ops:
        if op.kind is not Kind.READ or op.outcome is not Outcome.OK or not op.applied:
            continue
        first = seen.setdefault(op.applied, (op.values, op))
        if first[0] != op.values:
            violations.append(f"at index {op.applied}, {first[1].node} showed {first[0]} but {op.node} showed "
                              f"{op.values}")
    return violations


def summary(ops: Iterable[Op]) -> dict[str, dict[str, int]]:
    """Operations by kind and outcome."""
    counts: Counter[tuple[str, str]] = Counter((op.kind.value, op.outcome.value) for op in ops)
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, outcome), n in sorted(counts.items()):
        out[kind][outcome] = n
    return dict(out)
