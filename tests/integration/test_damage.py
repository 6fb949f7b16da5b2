"""A damaged journal never makes a node diverge silently: it refuses to run, says what is
wrong and what to do, and doing that brings it back with its peers' state."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from raftflow_dev.local import LocalCluster
from support import Cli, running_cluster, wait_for

pytestmark = pytest.mark.integration


def _converged(cli: Cli) -> bool:
    nodes = cli.json("cluster", "status")["nodes"]
    return all(n["healthy"] for n in nodes) and len({n["digest"] for n in nodes}) == 1


def _recover(cluster: LocalCluster, node_id: str, cli: Cli) -> None:
    raft_dir = cluster.node(node_id).dir / "data" / "raft"
    shutil.move(raft_dir, raft_dir.with_name("raft.damaged"))
    cluster.start_node(node_id)
    wait_for(lambda: _converged(cli), 30, f"{node_id} to recover from its peers with an equal digest")


def test_damaged_journals_stop_the_node_with_advice_and_recover_from_peers(tmp_path):
    with running_cluster(tmp_path / "cluster") as cluster:
        cli = Cli(cluster)
        dag = tmp_path / "d.py"
        dag.write_text("from raftflow import DAG, BashTask\nwith DAG('journaled'):\n"
                       "    BashTask('a', command='echo one')\n")
        assert cli("dags", "submit", str(dag)).returncode == 0
        for _ in range(3):
            assert json.loads(cli("dags", "trigger", "journaled", "--wait", "--json").stdout)["state"] == "success"

        # A flipped byte inside an entry: caught by the entry checksum when replayed.
        cluster.stop_node("n3")
        journal = cluster.node("n3").dir / "data" / "raft" / "journal"
        data = bytearray(journal.read_bytes())
        spot = data.rfind(b'"dag_id":"journaled"') + len(b'"dag_id":"')
        assert spot > 20
        data[spot] ^= 0x20
        journal.write_bytes(bytes(data))
        cluster.start_node("n3")
        assert cluster.wait_exit("n3", 30) == 70
        log = cluster.node("n3").log_path.read_text()
        assert "Raft storage on disk is damaged" in log and "checksum mismatch" in log and "move" in log
        _recover(cluster, "n3", cli)

        # A truncated tail: the journal cannot be read at all.
        cluster.stop_node("n2")
        journal = cluster.node("n2").dir / "data" / "raft" / "journal"
        data = journal.read_bytes()
        end = struct.unpack("<I", data[36:40])[0]   # pysyncobj: offset past the last record
        journal.write_bytes(data[: max(64, min(len(data), end) - 30)])
        cluster.start_node("n2")
        code = cluster.wait_exit("n2", 30)
        log = cluster.node("n2").log_path.read_text()
        assert code == 70, log[-2000:]
        assert "Raft storage on disk is damaged" in log and "move" in log
        _recover(cluster, "n2", cli)
        assert json.loads(cli("dags", "trigger", "journaled", "--wait", "--json").stdout)["state"] == "success"


def test_a_cut_snapshot_stops_the_node_with_advice_and_it_recovers_from_peers(tmp_path):
    from raftflow.config import RaftTuning

    with running_cluster(tmp_path / "cluster", raft=RaftTuning(log_compaction_min_entries=20)) as cluster:
        cli = Cli(cluster)
        dag = tmp_path / "d.py"
        dag.write_text("from raftflow import DAG, BashTask\nwith DAG('snapped'):\n"
                       "    BashTask('a', command='echo one')\n")
        assert cli("dags", "submit", str(dag)).returncode == 0
        snapshot = cluster.node("n3").dir / "data" / "raft" / "snapshot"

        def n3_has_a_snapshot():
            if not snapshot.exists():
                assert json.loads(cli("dags", "trigger", "snapped", "--wait", "--json").stdout)["state"] == "success"
            return snapshot.exists()
        wait_for(n3_has_a_snapshot, 60, "n3 to compact its log into a snapshot", interval=0.2)

        cluster.stop_node("n3")
        data = snapshot.read_bytes()
        snapshot.write_bytes(data[:-100])
        cluster.start_node("n3")
        code = cluster.wait_exit("n3", 30)
        log = cluster.node("n3").log_path.read_text()
        assert code == 70, log[-2000:]
        assert "Raft storage on disk is damaged" in log and "cut short" in log and "move" in log
        _recover(cluster, "n3", cli)
        assert json.loads(cli("dags", "trigger", "snapped", "--wait", "--json").stdout)["state"] == "success"
