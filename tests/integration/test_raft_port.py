"""Issue 13, finding 7 and the snapshot part of finding 2, against a real 3-node cluster:
a stranger on the Raft port can neither stall the leader nor hold connections, and
`cluster status` shows every node's last snapshot."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest
from waiting import closed_within

from raftflow.config import RaftTuning
from raftflow_dev.local import LocalCluster
from support import Cli, dump_node_logs, wait_for

# solo: run alone, not beside another integration test (tools/test): asserts how soon strangers are dropped.
pytestmark = [pytest.mark.integration, pytest.mark.solo]





def test_strangers_on_the_raft_port_neither_depose_the_leader_nor_hold_connections(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=3, raft=RaftTuning(log_compaction_min_entries=10))
    cluster.start()
    client = None
    try:
        cluster.wait_ready(30)
        cli = Cli(cluster)
        client = cluster.client()
        for i in range(12):    # more than 10 Raft entries: every node writes a snapshot
            client.set_pool(f"pool{i}", i)

        def snapshotted():
            nodes = client.cluster_status()["nodes"]
            return all(int(n["snapshot_index"]) > 0 and n["snapshot_at"] > 0 and n["snapshot_error"] == ""
                       for n in nodes) and nodes
        wait_for(snapshotted, 30, "every node to show a snapshot in cluster status")
        shown = cli("cluster", "status")
        assert shown.returncode == 0 and "SNAPSHOT" in shown.stdout and "FAILING" not in shown.stdout

        status = client.cluster_status()
        leader = next(n for n in status["nodes"] if n["id"] == status["leader"])
        host, port = leader["raft_address"].rsplit(":", 1)

        # 16 MiB of junk after a 2 GB length prefix: dropped at once
        with socket.create_connection((host, int(port)), timeout=5) as stranger:
            stranger.sendall(struct.pack("i", 2**31 - 1))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                for _ in range(256):
                    stranger.sendall(b"\xff" * 65536)
            assert closed_within(stranger, 5.0), "the junk connection was not dropped"

        # 200 silent connections: closed after the 5 s deadline to authenticate
        strangers = [socket.create_connection((host, int(port)), timeout=5) for _ in range(200)]
        try:
            opened = time.monotonic()
            assert all(closed_within(s, max(0.1, opened + 20 - time.monotonic())) for s in strangers), \
                "silent unauthenticated connections were kept"
        finally:
            for s in strangers:
                s.close()

        after = client.cluster_status()
        assert after["leader"] == status["leader"], "the leader was deposed"
        assert {n["raft_term"] for n in after["nodes"]} == {leader["raft_term"]}, "an election happened"
        client.set_pool("after", 1)
    except BaseException:
        dump_node_logs(cluster)
        raise
    finally:
        if client is not None:
            client.close()
        cluster.stop()
