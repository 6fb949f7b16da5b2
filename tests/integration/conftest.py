"""Integration fixtures: a real 3-node cluster on free loopback ports, stopped by the
PIDs this fixture started."""

from __future__ import annotations

import pytest

from support import Cli, dump_node_logs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    from raftflow_dev.local import LocalCluster

    local = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3, slots=4)
    local.start()
    try:
        local.wait_ready(timeout=30)
        yield local
    except BaseException:
        dump_node_logs(local)
        raise
    finally:
        local.stop()


@pytest.fixture(scope="module")
def cli(cluster) -> Cli:
    return Cli(cluster)
