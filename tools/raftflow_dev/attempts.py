"""Attempts that record themselves: the evidence for "no two attempts of a task overlap".

A recording task appends lines to a file shared by all local nodes:
    start RUN TASK ATTEMPT NODE EPOCH
    tick  RUN TASK ATTEMPT NODE EPOCH      (every 0.1 s while it works)
    end   RUN TASK ATTEMPT NODE EPOCH      (only if it finished its work)
An attempt killed by SIGKILL writes no `end`; its last line bounds when it was alive
(to within one tick). Used by the failover tests and tools/chaos.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

TICK = 0.1


def recording_command(record_file: Path | str, seconds: float) -> str:
    """A bash command that works for `seconds`, recording itself in `record_file`."""
    ticks = max(1, int(round(seconds / TICK)))
    who = '$RAFTFLOW_RUN_ID $RAFTFLOW_TASK_ID $RAFTFLOW_ATTEMPT $RAFTFLOW_NODE_ID'
    return (f'f={record_file}; echo "start {who} $(date +%s.%N)" >> $f; '
            f'for i in $(seq {ticks}); do sleep {TICK}; echo "tick {who} $(date +%s.%N)" >> $f; done; '
            f'echo "end {who} $(date +%s.%N)" >> $f')


@dataclass
class Attempt:
    run_id: str
    task_id: str
    attempt: int
    node: str
    started: float
    last_seen: float
    finished: bool = False


def read(record_file: Path) -> dict[tuple[str, str], list[Attempt]]:
    """Attempts per (run_id, task_id), in attempt order."""
    found: dict[tuple[str, str, int], Attempt] = {}
    if not record_file.exists():
        return {}
    for line in record_file.read_text().splitlines():
        parts = line.split()
        if len(parts) != 6:
            continue  # a line cut by a kill mid-write
        kind, run_id, task_id, attempt, node, at = parts
        key = (run_id, task_id, int(attempt))
        t = float(at)
        rec = found.get(key)
        if rec is None:
            rec = found[key] = Attempt(run_id, task_id, int(attempt), node, t, t)
        rec.started, rec.last_seen = min(rec.started, t), max(rec.last_seen, t)
        rec.finished = rec.finished or kind == "end"
    by_task: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
    for rec in sorted(found.values(), key=lambda r: r.attempt):
        by_task[(rec.run_id, rec.task_id)].append(rec)
    return dict(by_task)


def overlaps(attempts: dict[tuple[str, str], list[Attempt]]) -> list[tuple[Attempt, Attempt]]:
    """Pairs of attempts of one task whose recorded lifetimes intersect."""
    bad = []
    for recs in attempts.values():
        for i, a in enumerate(recs):
            for b in recs[i + 1:]:
                if a.started <= b.last_seen and b.started <= a.last_seen:
                    bad.append((a, b))
    return bad


def successes(attempts: dict[tuple[str, str], list[Attempt]]) -> dict[tuple[str, str], int]:
    """How many attempts of each task ran to their end."""
    return {key: sum(r.finished for r in recs) for key, recs in attempts.items()}
