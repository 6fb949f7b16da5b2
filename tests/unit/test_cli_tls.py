"""Which CA the CLI trusts (or plaintext): --insecure / RAFTFLOW_INSECURE, --ca-file,
RAFTFLOW_CA_FILE, the local cluster tools/up made (insecure, else its ca.pem), the
system's roots, in that order; an unreadable CA file is a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raftflow_cli.main import UsageError, cluster_tls


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("RAFTFLOW_INSECURE", "RAFTFLOW_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAFTFLOW_LOCAL_DIR", str(tmp_path / "up"))
    (tmp_path / "up").mkdir()
    return tmp_path / "up"


def test_the_ca_is_found_in_order(local: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cluster_tls(None, False)[:2] == (None, False), "nothing given or found: the system's roots"
    (local / "ca.pem").write_bytes(b"LOCAL")
    assert cluster_tls(None, False)[:2] == (None, False), "a ca.pem without the cluster.json next to it is not used"
    (local / "cluster.json").write_text(json.dumps({"slots": 1, "nodes": []}))
    assert cluster_tls(None, False)[:2] == (b"LOCAL", False)
    (tmp_path / "env.pem").write_bytes(b"ENV")
    monkeypatch.setenv("RAFTFLOW_CA_FILE", str(tmp_path / "env.pem"))
    assert cluster_tls(None, False)[:2] == (b"ENV", False)
    (tmp_path / "flag.pem").write_bytes(b"FLAG")
    ca, insecure, name = cluster_tls(str(tmp_path / "flag.pem"), False)
    assert (ca, insecure) == (b"FLAG", False) and "flag.pem (--ca-file)" in name
    assert cluster_tls(str(tmp_path / "flag.pem"), True)[:2] == (None, True), "--insecure wins"
    monkeypatch.setenv("RAFTFLOW_INSECURE", "1")
    assert cluster_tls(None, False)[:2] == (None, True)


def test_a_local_insecure_cluster_is_spoken_to_in_plaintext(local: Path) -> None:
    (local / "cluster.json").write_text(json.dumps({"slots": 1, "insecure": True, "nodes": []}))
    assert cluster_tls(None, False)[:2] == (None, True)


def test_an_unreadable_ca_file_is_a_usage_error(local: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the CA certificate .*missing.pem \\(--ca-file\\)"):
        cluster_tls(str(tmp_path / "missing.pem"), False)
