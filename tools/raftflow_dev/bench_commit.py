"""tools/bench commit_path: where one write's time goes (issue 18's profile).

A write as a client sees it is split into what every call costs (a read through the
same client, channel, TLS and token check: ListDags), the node's own propose-to-applied
time (`raftflow_raft_commit_duration_seconds` read from its /metrics before and after
the writes: mean over exactly those commits), and the rest (the handler woken after
apply, the answer's way back). The split is of means (the histogram gives only a
mean, and a mean minus a median is nothing); medians are reported beside them. And
how many calls a second 32 client threads get from the leader: writes, and reads as
the ceiling of any call through this client and gRPC on this machine. Beside these, in
this process: what one append round's messages cost pysyncobj (pickle + Fernet, as it
sends them; the reverse on receipt) and what applying one command costs a replica
(decode the entry, apply, the running digest), so the figures say how much of a
commit is message CPU, apply CPU and hand-offs between threads.
"""

from __future__ import annotations

import pickle
import re
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .bench import Bench

COMMIT_HISTOGRAM = "raftflow_raft_commit_duration_seconds"


def histogram_totals(metrics_text: str, name: str = COMMIT_HISTOGRAM) -> tuple[float, float]:
    """(sum, count) of an unlabelled Prometheus histogram in an exposition text; a
    missing histogram is an error (the node did not expose what this scenario reads)."""
    found = {}
    for suffix in ("sum", "count"):
        match = re.search(rf"^{re.escape(name)}_{suffix} (\S+)$", metrics_text, re.MULTILINE)
        if match is None:
            raise ValueError(f"{name}_{suffix} is not in the node's /metrics")
        found[suffix] = float(match.group(1))
    return found["sum"], found["count"]


def mean_between(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Mean of the observations a histogram took between two scrapes, in its unit."""
    count = after[1] - before[1]
    if count <= 0:
        raise ValueError("the histogram took no observations between the two scrapes")
    return (after[0] - before[0]) / count


def split(writes_ms: list[float], reads_ms: list[float], commit_mean_ms: float) -> dict[str, float]:
    """A write's mean split into the floor of any call (a read's mean), the commit's mean
    and the rest; with the medians of writes and reads."""
    write, read = statistics.fmean(writes_ms), statistics.fmean(reads_ms)
    return {"write_mean_ms": round(write, 2), "call_floor_mean_ms": round(read, 2),
            "propose_to_applied_mean_ms": round(commit_mean_ms, 2),
            "rest_mean_ms": round(write - read - commit_mean_ms, 2),
            "write_median_ms": round(statistics.median(writes_ms), 2),
            "call_floor_median_ms": round(statistics.median(reads_ms), 2)}


def _times_ms(action: Callable[[], Any], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        samples.append(1000 * (time.perf_counter() - started))
    return samples


def _median_ms(action: Callable[[], Any], count: int) -> float:
    return statistics.median(_times_ms(action, count))


def message_costs(count: int = 2000) -> dict[str, float]:
    """µs to build one append round of one entry as pysyncobj sends it (pickle, then
    Fernet: its encryptor when a password is set) and to read it back."""
    from cryptography.fernet import Fernet

    from raftflow.core import commands as c
    from raftflow.raft.adapter import encode_envelope

    fernet = Fernet(Fernet.generate_key())
    entry = encode_envelope(c.SetPaused("some_dag", True, time.time()), "n1", "0f" * 16)
    message = {"type": "append_entries", "term": 3, "commit_index": 120, "entries": [(entry, 121, 3)],
               "prevLogIdx": 120, "prevLogTerm": 3}
    token = fernet.encrypt(pickle.dumps(message))
    send = _median_ms(lambda: fernet.encrypt(pickle.dumps(message)), count) * 1000
    receive = _median_ms(lambda: pickle.loads(fernet.decrypt(token)), count) * 1000
    return {"send_us": round(send, 1), "receive_us": round(receive, 1), "bytes": len(token)}


def apply_cost(count: int = 1000) -> dict[str, float]:
    """µs a replica spends on one committed SetVariable: decoding the entry (protobuf
    envelope, JSON payload) and applying it to a State (with the running digest)."""
    from raftflow.core import commands as c
    from raftflow.core.state import State
    from raftflow.raft.adapter import encode_envelope, read_entry

    state = State()
    entries = [encode_envelope(c.SetVariable(f"key{i % 32}", str(i), 0.0), "n1", "") for i in range(count)]
    started = time.perf_counter()
    decoded = [read_entry(data) for data in entries]
    decode_us = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for index, (command, proposer, request_id) in enumerate(decoded, start=1):
        state.apply(command, index, proposer, request_id)
    apply_us = (time.perf_counter() - started) / count * 1e6
    return {"decode_us": round(decode_us, 1), "apply_us": round(apply_us, 1)}


def concurrent_calls(bench: "Bench", node_id: str, call: Callable[[Any, int], Any], seconds: float,
                      threads: int = 32) -> float:
    """Calls a second that `threads` client threads, each with its own channel, get from
    `node_id` calling `call(client, n)` back to back for `seconds`."""
    from concurrent.futures import ThreadPoolExecutor

    def caller(offset: int) -> int:
        client, done = bench.node_client(node_id), 0
        try:
            client.list_dags()
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                call(client, done + offset)
                done += 1
        finally:
            client.close()
        return done
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(caller, range(threads)))
    return round(total / (time.perf_counter() - started), 1)


def scenario_commit_path(bench: "Bench") -> dict[str, Any]:
    bench.submit_examples()
    count = 20 if bench.smoke else 100 if bench.quick else 300
    leader = bench.leader()
    follower = next(n.node_id for n in bench.cluster.nodes if n.node_id != leader)
    out: dict[str, Any] = {"scenario": "commit_path", "writes_per_node": count}
    for role, node_id in (("via_leader", leader), ("via_follower", follower)):
        client = bench.node_client(node_id)
        try:
            client.list_dags()      # (the channel is up before anything is timed)
            reads = _times_ms(client.list_dags, count)
            before = histogram_totals(bench.metrics_text(node_id))
            flips = iter(range(count))
            writes = _times_ms(lambda: client.set_paused("etl_chain", next(flips) % 2 == 0), count)
            commit_ms = 1000 * mean_between(before, histogram_totals(bench.metrics_text(node_id)))
        finally:
            client.close()
        out[role] = split(writes, reads, commit_ms)
    seconds = 0.5 if bench.smoke else 2.0 if bench.quick else 5.0
    out["concurrent_reads_per_s"] = concurrent_calls(bench, leader, lambda client, i: client.list_dags(), seconds)
    out["concurrent_writes_per_s"] = concurrent_calls(
        bench, leader, lambda client, i: client.set_paused("etl_chain", i % 2 == 0), seconds)
    out["append_round_messages"] = message_costs(200 if bench.smoke else 2000)
    out["apply_set_variable"] = apply_cost(100 if bench.smoke else 1000)
    out["note"] = ("rest = write - call floor - propose-to-applied (means): the handler woken after apply "
                   "and the answer's way back; see docs/benchmarks.md 'What stands in the way'")
    return out
