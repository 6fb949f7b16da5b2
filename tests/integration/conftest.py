"""Integration fixtures: a real 3-node cluster on free loopback ports, stopped by the
PIDs this fixture started."""

from __future__ import annotations

import sys

import pytest

from support import Cli


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    from raftflow_cli.local import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3, slots=4)
    local.start()
    try:
        local.wait_ready(timeout=30)
        yield local
    except BaseException:
        for node in local.nodes:
            if node.log_path.exists():
                sys.stderr.write(f"--- {node.node_id} log ---\n{node.log_path.read_text()[-4000:]}\n")
        raise
    finally:
        local.stop()


@pytest.fixture(scope="module")
def cli(cluster) -> Cli:
    return Cli(cluster.addresses)
