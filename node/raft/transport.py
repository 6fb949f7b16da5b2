"""The Raft port's guard: pysyncobj 0.3.17's TCP transport with bounded reads,
a deadline for peers that have not authenticated, and a cap on how many may wait.

Who uses it: adapter.py passes `GuardedTCPTransport` as SyncObj's `transportClass`
(and sets `SyncObjConf(bindAddress=...)` so the port binds the configured address,
not 0.0.0.0). Nothing else imports it.

What it changes in pysyncobj (pinned to 0.3.17 in pyproject.toml; `check_pysyncobj`
fails loudly if the methods overridden below are missing), and why:

1. `TcpConnection.__tryReadBuffer/__processRead/__processParseMessage` (overridden
   in `GuardedConnection` under their mangled names): pysyncobj reads everything
   the socket has into a `bytes` buffer grown by `+=` (quadratic) and waits for as
   many bytes as the 4-byte length prefix announces, before anyone authenticated.
   A stranger could send a 2 GB prefix and stream junk: the Raft thread spent its
   time copying the buffer and a 16 MiB stream deposed the leader. Here the buffer
   is a `bytearray` (appends are amortised O(1)) and a frame is refused - the
   connection closed at once, the drop logged - when its announced length is
   negative or above `PRE_AUTH_MAX_FRAME` (4 KiB; the key exchange and the node
   address are ~200 bytes each) before the connection authenticated, or above
   `MAX_FRAME` (64 MiB) after. Reading stops once the buffer holds a whole frame's
   worth, so an unauthenticated peer never makes the buffer grow past a few KiB.
   `MAX_FRAME` after authentication: a client request is at most gRPC's default 4 MiB
   (a command in one Raft entry, as Fernet base64 makes it ~5.4 MiB), append_entries
   batches stop after 64 KiB (`appendEntriesBatchSizeBytes`), and snapshots travel
   in `logCompactionBatchSize` (64 KiB) chunks; 64 MiB leaves ample room while
   still bounding what a damaged length prefix can make a node allocate.
2. `TCPTransport._onTick` also closes incoming connections that have not
   authenticated within `PRE_AUTH_TIMEOUT` (5 s). pysyncobj's own connection
   timeout is only checked when the socket has activity, so silent connections were
   held forever (995 of them exhausted the process's file descriptors).
3. `TCPTransport._onNewIncomingConnection`: at most `MAX_PENDING` (64) connections
   may wait to authenticate; a new one beyond that closes the oldest waiting one.
   Peers authenticate within milliseconds, so they are not crowded out.
4. `TCPTransport._createServer`: the server is a `GuardedServer`, which accepts
   with `GuardedConnection` (its `__onNewConnection` is pysyncobj's, but for the
   class it builds). Outgoing connections (to configured peers) are built by
   `addNode`, overridden to use `GuardedConnection` too.

"Authenticated": an incoming connection is once the transport has associated it
with a configured node (or a read-only node), which takes a message encrypted with
the cluster secret that contains this connection's fresh random key (pysyncobj's
key exchange): a replayed or forged message cannot do it. An outgoing connection is
once the peer's first reply (its key, encrypted with the secret) arrived. Without a
password (never in raftflow: adapter.py always sets one) nothing could authenticate,
so every connection counts as authenticated, as in pysyncobj.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
import zlib
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj import SyncObj
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION as PYSYNCOBJ_VERSION

log = logging.getLogger("raftflow.raft.transport")

PRE_AUTH_MAX_FRAME = 4 * 1024          # bytes a frame may announce before the peer authenticated
MAX_FRAME = 64 * 1024 * 1024           # ... and after (see module doc)
PRE_AUTH_TIMEOUT = 5.0                 # seconds an incoming connection may take to authenticate
MAX_PENDING = 64                       # incoming connections waiting to authenticate at once
_LOG_EVERY = 10.0                      # seconds between two warnings about dropped strangers

_OVERRIDDEN = {
    SyncObj: ("_SyncObj__onMessageReceived", "_SyncObj__deleteEntriesFrom", "_SyncObj__getEntries",  # follower.py
              "_SyncObj__sendNextNodeIdx", "_SyncObj__getCurrentLogIndex", "_SyncObj__changeCluster",
              "_SyncObj__doChangeCluster", "_SyncObj__parseChangeClusterRequest",
              "_onTick", "_applyCommand", "_doDestroy", "_SyncObj__sendAppendEntries",          # eager.py
              "_SyncObj__onNodeDisconnected"),
    TcpConnection: ("_TcpConnection__tryReadBuffer", "_TcpConnection__processRead",
                    "_TcpConnection__processParseMessage"),
    TcpServer: ("_TcpServer__onNewConnection",),
    TCPTransport: ("_onTick", "_onNewIncomingConnection", "_onIncomingMessageReceived",
                   "_onOutgoingConnected", "_onOutgoingMessageReceived", "_createServer", "addNode"),
}


def check_pysyncobj() -> None:
    """Raise RuntimeError unless pysyncobj is the version whose internals this module and
    follower.py override (another one could silently bypass them). adapter.py calls it."""
    if PYSYNCOBJ_VERSION != "0.3.17":
        raise RuntimeError(f"node/raft/transport.py guards pysyncobj 0.3.17's transport, found "
                           f"{PYSYNCOBJ_VERSION}: review the overridden methods, then update the pin")
    for cls, names in _OVERRIDDEN.items():
        missing = [name for name in names if not hasattr(cls, name)]
        if missing:
            raise RuntimeError(f"pysyncobj's {cls.__name__} has no {', '.join(missing)}: "
                               "node/raft/transport.py needs review")


class _Throttle:
    """At most one log line per `every` seconds; counts what it held back."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = -every
        self.held = 0

    def warn(self, message: str, *args: Any) -> None:
        now = monotonic_time()
        if now - self.last < self.every:
            self.held += 1
            return
        held, self.held, self.last = self.held, 0, now
        log.warning(message + (f" (and {held} more like it since the last warning)" if held else ""), *args)


_strangers = _Throttle(_LOG_EVERY)


class GuardedConnection(TcpConnection):
    """pysyncobj's TcpConnection with a bounded, linear-time read path (module doc, 1)."""

    # pysyncobj's (set in its __init__), declared for the type checker
    _TcpConnection__readBuffer: bytes | bytearray
    recvLastTimestamp: int

    def __init__(self, *args: Any, peer: str = "", **kwargs: Any) -> None:
        self.authenticated = False
        self.opened_at = monotonic_time()
        self.peer = peer                    # "host:port" of an accepted connection, for logs
        super().__init__(*args, **kwargs)

    def max_frame(self) -> int:
        return MAX_FRAME if self.authenticated else PRE_AUTH_MAX_FRAME

    def _buffer(self) -> bytearray:
        buf = self._TcpConnection__readBuffer
        if type(buf) is not bytearray:      # pysyncobj resets it to bytes() on (dis)connect
            buf = self._TcpConnection__readBuffer = bytearray(buf)
        return buf

    def _TcpConnection__tryReadBuffer(self) -> None:
        # Stop once a whole frame of the allowed size could be parsed: the rest stays in
        # the kernel (the poller is level-triggered) until the frames are consumed.
        limit = self.max_frame() + 4
        while len(self._buffer()) < limit and self._TcpConnection__processRead():
            pass
        self._TcpConnection__lastReadTime = monotonic_time()

    def _TcpConnection__processRead(self) -> bool:
        sock = self._TcpConnection__socket
        try:
            incoming = sock.recv(self._TcpConnection__recvBufferSize)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or not incoming:
            self.disconnect()
            return False
        self._buffer().extend(incoming)
        return True

    def _TcpConnection__processParseMessage(self) -> Any:
        buf = self._TcpConnection__readBuffer
        if len(buf) < 4:
            return None
        (size,) = struct.unpack_from("i", buf, 0)
        if size < 0 or size > self.max_frame():
            self._refuse(size)
            return None
        if len(buf) - 4 < size:
            return None
        data = bytes(buf[4:4 + size])
        try:   # pysyncobj's own decoding, unchanged
            if self.encryptor:
                timestamp = self.encryptor.extract_timestamp(data)
                assert timestamp >= self.recvLastTimestamp
                self.recvLastTimestamp = timestamp
                data = self.encryptor.decrypt(data)
            message = pysyncobj_pickle.loads(zlib.decompress(data))
            if self.recvRandKey:
                rand_key, message = message
                assert rand_key == self.recvRandKey
        except Exception:  # noqa: BLE001 - as pysyncobj: undecodable means unauthenticated
            if not self.authenticated:
                _strangers.warn("Raft port: closed a connection from %s that did not authenticate "
                                "(a message it sent does not decrypt with the cluster secret)", self.peer or "?")
            self.disconnect()
            return None
        del self._buffer()[:4 + size]
        return message

    def _refuse(self, size: int) -> None:
        if self.authenticated:
            log.error("Raft connection to %s closed: it announced a %d-byte message, above the %d-byte "
                      "bound (node/raft/transport.py MAX_FRAME); if a peer really sends such messages, "
                      "raise the bound", self.peer or "a peer", size, MAX_FRAME)
        else:
            _strangers.warn("Raft port: closed a connection from %s that announced a %d-byte message before "
                            "authenticating (at most %d allowed)", self.peer or "?", size, PRE_AUTH_MAX_FRAME)
        self.disconnect()


class GuardedServer(TcpServer):
    """pysyncobj's TcpServer, accepting with GuardedConnection (module doc, 4)."""

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, addr = self._TcpServer__socket.accept()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._TcpServer__sendBufferSize)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._TcpServer__recvBufferSize)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(0)
                conn = GuardedConnection(
                    poller=self._TcpServer__poller, socket=sock, timeout=self._TcpServer__connectionTimeout,
                    sendBufferSize=self._TcpServer__sendBufferSize, recvBufferSize=self._TcpServer__recvBufferSize,
                    keepalive=self._TcpServer__keepalive, peer=f"{addr[0]}:{addr[1]}")
                self._TcpServer__onNewConnectionCallback(conn)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    # pysyncobj unbinds here (and rebinds on a later tick); EMFILE is the
                    # usual cause: say so rather than go quiet
                    log.error("Raft port: accept failed (%s); the server rebinds shortly", e)
                    self.unbind()
                    return
        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()


class GuardedTCPTransport(TCPTransport):
    """pysyncobj's TCPTransport with the guards of the module doc (2-4)."""

    _server: Any     # pysyncobj's (set in its __init__), declared for the type checker

    def _createServer(self) -> None:
        super()._createServer()
        plain: TcpServer = self._server
        conf = self._syncObj.conf
        self._server = GuardedServer(
            self._syncObj._poller, plain._TcpServer__host, plain._TcpServer__port,
            onNewConnection=self._onNewIncomingConnection, sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize, connectionTimeout=conf.connectionTimeout)

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        plain = self._connections.get(node)
        if plain is not None and type(plain) is TcpConnection:   # an outgoing connection object (unconnected)
            conn = GuardedConnection(
                poller=self._syncObj._poller, timeout=self._syncObj.conf.connectionTimeout,
                sendBufferSize=self._syncObj.conf.sendBufferSize, recvBufferSize=self._syncObj.conf.recvBufferSize,
                keepalive=self._syncObj.conf.tcp_keepalive, peer=node.address)
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _onNewIncomingConnection(self, conn: GuardedConnection) -> None:
        if not self._syncObj.encryptor:
            conn.authenticated = True
        super()._onNewIncomingConnection(conn)
        waiting = [c for c in self._unknownConnections if isinstance(c, GuardedConnection)]
        if len(waiting) > MAX_PENDING:
            oldest = min(waiting, key=lambda c: c.opened_at)
            _strangers.warn("Raft port: %d connections waiting to authenticate; closed the oldest (from %s)",
                            len(waiting), oldest.peer or "?")
            self._drop_pending(oldest)

    def _onIncomingMessageReceived(self, conn: GuardedConnection, message: Any) -> None:
        super()._onIncomingMessageReceived(conn, message)
        if conn.state == CONNECTION_STATE.CONNECTED and conn not in self._unknownConnections:
            conn.authenticated = True    # associated with a node: see module doc

    def _onOutgoingConnected(self, conn: GuardedConnection) -> None:
        if not self._syncObj.encryptor:
            conn.authenticated = True
        super()._onOutgoingConnected(conn)

    def _onOutgoingMessageReceived(self, conn: GuardedConnection, message: Any) -> None:
        conn.authenticated = True        # the peer's key, decrypted with the cluster secret
        super()._onOutgoingMessageReceived(conn, message)

    def _onTick(self) -> None:
        super()._onTick()
        now = monotonic_time()
        for conn in [c for c in self._unknownConnections
                     if isinstance(c, GuardedConnection) and now - c.opened_at > PRE_AUTH_TIMEOUT]:
            _strangers.warn("Raft port: closed a connection from %s that did not authenticate within %.0fs",
                            conn.peer or "?", PRE_AUTH_TIMEOUT)
            self._drop_pending(conn)

    def _drop_pending(self, conn: GuardedConnection) -> None:
        conn.disconnect()                # calls _onDisconnected, which forgets it
        self._unknownConnections.discard(conn)
