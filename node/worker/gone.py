"""The report of a node's death: `python -m raftflow.worker.gone NODE_ID LOG_FORMAT`.

Started by the node's reaper (worker/lease.py) once the node's process died without
saying goodbye and the reaper has killed its attempts' process groups and seen them
gone. It reads one JSON object on stdin (the reaper's `GoneReport` fields and `killed`,
the attempts seen gone) and calls peer NodeGone on the other members with the node's
own certificate and the peer token, following the answer to the leader, until the
leader accepts or `give_up_after` seconds pass (by then the lease releases them).

It imports only gRPC and the generated messages, so it is up quickly: the attempts are
released within about a second of the crash (tools/bench failover).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import grpc

from raftflow import nodelog
from raftflow.proto import peer_pb2, peer_pb2_grpc

log = logging.getLogger("raftflow.reaper")

TOKEN_HEADER = "x-raftflow-peer-token"   # (api/peers.py's; not imported: it pulls in the node)
CALL_TIMEOUT = 1.0
RETRY_EVERY = 0.1


def _stub(node_id: str, address: str, report: dict[str, Any]) -> peer_pb2_grpc.PeerStub:
    if report.get("cert_pem") is None:
        return peer_pb2_grpc.PeerStub(grpc.insecure_channel(address))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=report["ca_pem"].encode(), private_key=report["key_pem"].encode(),
        certificate_chain=report["cert_pem"].encode())
    return peer_pb2_grpc.PeerStub(grpc.secure_channel(address, credentials,
                                                      options=(("grpc.ssl_target_name_override", node_id),)))


def report_gone(node_id: str, report: dict[str, Any], clock: Any = time.monotonic) -> bool:
    """Tell the leader that `node_id`'s process died and which attempts were killed. True
    once the leader accepted; False if none did within `give_up_after`."""
    members = [(str(m), str(address)) for m, address in report["members"]]
    stubs = {m: _stub(m, address, report) for m, address in members}
    message = peer_pb2.NodeGoneReport(node=node_id, died_at=float(report.get("died_at") or 0.0), killed=[
        peer_pb2.AttemptKey(run_id=run_id, task_id=task_id, attempt=attempt)
        for run_id, task_id, attempt in report["killed"]])
    metadata = ((TOKEN_HEADER, report["token"]),)
    give_up = clock() + float(report["give_up_after"])
    ask = [m for m, _ in members]
    last_error = ""
    while clock() < give_up:
        for member in list(ask):
            try:
                ack = stubs[member].NodeGone(message, timeout=CALL_TIMEOUT, metadata=metadata)
            except grpc.RpcError as e:
                last_error = f"{member}: {e.details() or e.code()}"
                continue
            if ack.accepted:
                log.warning("node %s's process died: leader %s released %d of its attempts (%d killed by its "
                            "reaper) without waiting for the lease", node_id, member, ack.released,
                            len(message.killed))
                return True
            if ack.leader in stubs and ack.leader != member:
                ask = [ack.leader] + [m for m in ask if m != ack.leader]   # ask the leader it names first
                break
        time.sleep(RETRY_EVERY)
    log.warning("node %s's process died, but no leader took the report within %.1f s (last: %s); the lease "
                "releases its attempts", node_id, float(report["give_up_after"]), last_error or "no answer")
    return False


def main(argv: list[str]) -> int:
    node_id, log_format = (argv + ["-", "text"])[:2]
    nodelog.setup(node_id, "info", log_format if log_format in nodelog.LOG_FORMATS else "text")
    try:
        report = json.loads(sys.stdin.read())
        return 0 if report_gone(node_id, report) else 1
    except Exception:  # noqa: BLE001 - a report that fails leaves the lease to do it: say why
        log.exception("could not report node %s's death; the lease releases its attempts", node_id)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
