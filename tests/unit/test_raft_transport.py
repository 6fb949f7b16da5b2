"""The Raft port's guard (node/raft/transport.py): the bind address, bounded frames
and buffers, the deadline to authenticate and the cap on waiting connections.

Two levels: `GuardedConnection` driven directly over a socketpair (the bounds, exactly),
and a real one-node replica on 127.0.0.1 probed with real sockets (what a stranger on
the network sees)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pysyncobj.pickle as pysyncobj_pickle
import pytest
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE
from waiting import closed_within, wait_for

from raft_node_support import SECRET, solo_replica
from raftflow.core import commands as c
from raftflow.raft import transport
from raftflow.raft.adapter import ReplicatedState
from raftflow.raft.transport import MAX_FRAME, PRE_AUTH_MAX_FRAME, GuardedConnection, check_pysyncobj


# ------------------------------------------------------------ the connection alone
class _Poller:
    """Enough of pysyncobj's poller for a connection driven by hand."""

    def subscribe(self, descr: int, callback: Callable[[int, int], None], mask: int) -> None:
        pass

    def unsubscribe(self, descr: int) -> None:
        pass


@contextlib.contextmanager
def _connection(authenticated: bool) -> Iterator[tuple[GuardedConnection, socket.socket, list[Any]]]:
    """(the server side as pysyncobj would accept it, the stranger's socket, messages received)."""
    server, stranger = socket.socketpair()
    server.setblocking(False)
    received: list[Any] = []
    conn = GuardedConnection(poller=_Poller(), socket=server, timeout=60.0, onMessageReceived=received.append)
    conn.encryptor = getEncryptor(SECRET)
    conn.authenticated = authenticated
    try:
        yield conn, stranger, received
    finally:
        conn.disconnect()
        stranger.close()


def _pump(conn: GuardedConnection) -> None:
    """One READ event, as pysyncobj's poller delivers it."""
    conn._TcpConnection__processConnection(conn.fileno(), POLL_EVENT_TYPE.READ)


def _frame(message: Any) -> bytes:
    """A message as pysyncobj's TcpConnection.send frames it (encrypted with the secret)."""
    packed = zlib.compress(pysyncobj_pickle.dumps(message), 3)
    data = getEncryptor(SECRET).encrypt_at_time(packed, int(time.monotonic()))
    return struct.pack("i", len(data)) + data


def test_pysyncobj_is_the_version_whose_internals_are_guarded() -> None:
    check_pysyncobj()


@pytest.mark.parametrize("size", [2**31 - 1, PRE_AUTH_MAX_FRAME + 1, -1])
def test_a_stranger_announcing_a_frame_above_the_bound_is_dropped_at_once(size: int) -> None:
    with _connection(authenticated=False) as (conn, stranger, _):
        stranger.sendall(struct.pack("i", size) + b"x" * 1000)
        _pump(conn)
        assert conn.state == CONNECTION_STATE.DISCONNECTED


def test_a_strangers_buffer_never_grows_past_one_small_frame() -> None:
    with _connection(authenticated=False) as (conn, stranger, _):
        stranger.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            stranger.send(struct.pack("i", PRE_AUTH_MAX_FRAME))
            while sent < 1 << 20:
                sent += stranger.send(b"x" * 65536)
        assert sent > PRE_AUTH_MAX_FRAME
        _pump(conn)     # reads at most one allowed frame, which does not decrypt: dropped
        assert conn.state == CONNECTION_STATE.DISCONNECTED


def test_an_incomplete_small_frame_waits_with_a_bounded_buffer() -> None:
    with _connection(authenticated=False) as (conn, stranger, received):
        stranger.sendall(struct.pack("i", PRE_AUTH_MAX_FRAME) + b"x" * 1000)
        _pump(conn)
        assert conn.state == CONNECTION_STATE.CONNECTED and received == []
        assert len(conn._TcpConnection__readBuffer) == 1004


def test_the_key_exchange_fits_the_pre_authentication_bound() -> None:
    with _connection(authenticated=False) as (conn, stranger, received):
        stranger.sendall(_frame(b"k" * 32) + _frame("127.0.0.1:50151"))
        _pump(conn)
        assert conn.state == CONNECTION_STATE.CONNECTED and received == [b"k" * 32, "127.0.0.1:50151"]


def test_after_authentication_large_frames_pass_up_to_the_bound() -> None:
    payload = bytes(range(256)) * 4096 * 3           # 3 MiB, incompressible enough
    with _connection(authenticated=True) as (conn, stranger, received):
        frame = _frame(payload)
        assert PRE_AUTH_MAX_FRAME < len(frame) < MAX_FRAME
        stranger.setblocking(False)
        offset = 0
        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                offset += stranger.send(frame[offset:offset + 65536])
            _pump(conn)
        assert conn.state == CONNECTION_STATE.CONNECTED and received == [payload]
        stranger.sendall(struct.pack("i", MAX_FRAME + 1))
        _pump(conn)
        assert conn.state == CONNECTION_STATE.DISCONNECTED


# ------------------------------------------------------------ a real node's port



def _raft_port(replica: ReplicatedState) -> int:
    return int(replica.selfNode.port)


def test_the_raft_port_binds_the_configured_address_only(tmp_path: Path) -> None:
    with solo_replica(tmp_path) as replica:
        port = _raft_port(replica)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        with pytest.raises(ConnectionRefusedError):   # 0.0.0.0 would accept on every loopback address
            socket.create_connection(("127.0.0.2", port), timeout=2).close()


def test_junk_after_a_huge_length_prefix_is_dropped_and_the_leader_keeps_leading(tmp_path: Path) -> None:
    with solo_replica(tmp_path) as replica:
        term = replica.term()
        with socket.create_connection(("127.0.0.1", _raft_port(replica)), timeout=2) as stranger:
            started = time.monotonic()
            stranger.sendall(struct.pack("i", 2**31 - 1))
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                for _ in range(64):               # 4 MiB of junk, while the node still reads
                    stranger.sendall(b"\xff" * 65536)
            assert closed_within(stranger, 5.0)
            assert time.monotonic() - started < 5.0
        assert replica.is_leader() and replica.term() == term
        assert replica.propose(c.SetPool("p", 3, 0.0), timeout=2.0).ok


def test_silent_strangers_are_closed_after_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "PRE_AUTH_TIMEOUT", 0.5)
    with solo_replica(tmp_path) as replica:
        port = _raft_port(replica)
        strangers = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(5)]
        opened = time.monotonic()
        try:
            assert all(closed_within(s, 10.0) for s in strangers)
            assert time.monotonic() - opened >= 0.4
        finally:
            for s in strangers:
                s.close()
        assert replica.is_leader() and replica.propose(c.SetPool("p", 3, 0.0), timeout=2.0).ok


def test_at_most_max_pending_strangers_wait_the_oldest_go_first(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "MAX_PENDING", 4)
    with solo_replica(tmp_path) as replica:
        port = _raft_port(replica)
        strangers = []
        try:
            for _ in range(8):
                strangers.append(socket.create_connection(("127.0.0.1", port), timeout=2))
                time.sleep(0.02)      # accepted in this order (the oldest is the first opened)
            wait_for(lambda: all(closed_within(s, 0.05) for s in strangers[:4]), 10, "the oldest four closed")
            assert not any(closed_within(s, 0.3) for s in strangers[4:])
        finally:
            for s in strangers:
                s.close()
