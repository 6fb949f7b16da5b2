"""tools/bench status_load: does `cluster status` stall writes on a large state?

A real cluster is filled with RUNS queued runs of a TASKS-task DAG (the DAG is
paused, so they stay queued: what a backfill leaves behind), 300 x 1,000 by
default (--quick: 30 x 1,000). A probe then writes every 0.25 s (a SetPaused on a
one-task DAG, through the cluster client, so through the leader) and records each
write's latency, in three phases of PHASE seconds each:

    idle        the probe alone
    status      one caller asking `cluster status` back to back (every node
                computes its state digest under its replica lock)
    status_x64  64 callers doing so at once

The figure that matters is the probe's worst write in each phase, and whether the
Raft term moved (an election) during it. Phases are repeated ROUNDS times; the
report gives each round's figures and the median over rounds. Not part of
`tools/bench all` (it takes minutes and ~0.5 GiB per node).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from raftflow_cli.client import ClusterClient

if TYPE_CHECKING:
    from .bench import Bench

PROBE_PERIOD = 0.25
CALLERS = 64


def _submit(bench: "Bench", spec: dict[str, Any]) -> None:
    bench.client.submit([{"spec_json": json.dumps(spec), "source": "# tools/bench", "filename": "tools/bench"}])


def _max_term(bench: "Bench") -> int | None:
    """The highest Raft term any node reports (with a long deadline: on a state that
    makes `cluster status` slow, this read is slow too), or None if no node answered."""
    client = bench.cluster.client(timeout=120.0)
    try:
        return max(n["raft_term"] for n in client.cluster_status()["nodes"])
    except Exception:  # noqa: BLE001 - an unanswered status is a figure (elections unknown)
        return None
    finally:
        client.close()


def _elections(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before


class Probe:
    """Writes every PROBE_PERIOD s from its own thread; records each write's latency
    (a failed write counts as the time until it failed, and is counted)."""

    def __init__(self, client: ClusterClient) -> None:
        self._client = client
        self._stop = threading.Event()
        self.samples: list[float] = []
        self.failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _run(self) -> None:
        flip = False
        next_at = time.monotonic()
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self._client.set_paused("status_probe", flip)
            except Exception:  # noqa: BLE001 - a failed write is a figure, not a crash
                self.failures += 1
            self.samples.append(time.perf_counter() - started)
            flip = not flip
            next_at += PROBE_PERIOD
            self._stop.wait(max(0.0, next_at - time.monotonic()))


def _phase(bench: "Bench", callers: int, seconds: float) -> dict[str, Any]:
    addresses = bench.cluster.addresses.split(",")
    term_before = _max_term(bench)
    calls: list[float] = []
    errors = [0]
    deadline = time.monotonic() + seconds

    def caller(i: int) -> None:
        client = bench.cluster.client(addresses[i % len(addresses):] + addresses[:i % len(addresses)], timeout=30.0)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    client.cluster_status()
                    calls.append(time.perf_counter() - started)
                except Exception:  # noqa: BLE001
                    errors[0] += 1
        finally:
            client.close()

    with Probe(bench.cluster.client(addresses, timeout=30.0)) as probe:
        if callers:
            with ThreadPoolExecutor(callers) as pool:
                list(pool.map(caller, range(callers)))
        else:
            time.sleep(seconds)
    term_after = _max_term(bench)
    samples = sorted(probe.samples)
    out: dict[str, Any] = {
        "probe_writes": len(samples), "probe_failed": probe.failures,
        "probe_median_ms": round(statistics.median(samples) * 1000, 1),
        "probe_max_ms": round(samples[-1] * 1000, 1), "elections": _elections(term_before, term_after),
    }
    if callers:
        out.update(status_calls=len(calls), status_errors=errors[0],
                   status_median_ms=round(statistics.median(calls) * 1000, 1) if calls else None)
    return out


def scenario_status_load(bench: "Bench") -> dict[str, Any]:
    runs, tasks = (30, 1000) if bench.quick else (300, 1000)
    rounds = 1 if bench.quick else 3
    seconds = 5.0 if bench.quick else 15.0
    _submit(bench, {"dag_id": "status_probe", "tasks": [{"task_id": "a", "kind": "bash", "command": "true"}]})
    _submit(bench, {"dag_id": "status_load", "is_paused_upon_creation": True, "max_active_runs": 1,
                    "tasks": [{"task_id": f"t{i:04d}", "kind": "bash", "command": "true"} for i in range(tasks)]})
    filled_at, term_before, fill_errors = time.monotonic(), _max_term(bench), 0
    queued = 0
    while queued < runs:
        try:
            bench.client.trigger("status_load")
            queued = len(bench.client.list_runs("status_load", limit=runs)["runs"])
        except Exception:  # noqa: BLE001 - e.g. an election mid-fill (counted); the count decides
            fill_errors += 1
            time.sleep(1.0)
    fill_s = time.monotonic() - filled_at
    fill_elections = _elections(term_before, _max_term(bench))
    time.sleep(2.0)   # let followers catch up before measuring
    phases: dict[str, list[dict[str, Any]]] = {"idle": [], "status": [], "status_x64": []}
    for _ in range(rounds):
        phases["idle"].append(_phase(bench, 0, seconds))
        phases["status"].append(_phase(bench, 1, seconds))
        phases["status_x64"].append(_phase(bench, CALLERS, seconds))
    out: dict[str, Any] = {"scenario": "status_load", "queued_runs": runs, "tasks_per_run": tasks,
                           "rounds": rounds, "phase_s": seconds, "fill_s": round(fill_s, 1),
                           "fill_elections": fill_elections, "fill_errors": fill_errors}
    for name, results in phases.items():
        summary: dict[str, Any] = {}
        for key in results[0]:
            values = [r[key] for r in results if isinstance(r[key], (int, float))]
            if values:
                summary[key] = statistics.median(values)
        summary["elections_total"] = sum(r["elections"] or 0 for r in results)
        summary["terms_unreadable"] = sum(r["elections"] is None for r in results)
        summary["probe_max_ms_each_round"] = [r["probe_max_ms"] for r in results]
        out[name] = summary
    return out
