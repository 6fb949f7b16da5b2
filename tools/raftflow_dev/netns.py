"""Test hosts in network namespaces, for real partitions on one machine (the partition
test, tools/jepsen).

Each node gets its own namespace with one veth into a bridge (in a namespace of
its own); the test process joins the bridge through one more veth, so it can
reach every node. `partition(i)` takes node i's link to the bridge down: node i
is then cut off from the other nodes and from the test, as on a real network.
`cut(i, j)` drops the traffic between two nodes only (a blackhole route to the
other in each one's namespace), so any split of the nodes can be made while the
test still reaches all of them; `mend(i, j)` undoes it. Everything is named after
this process's PID and removed by `destroy`. Each topology takes a /24 of 10.213.0.0/16
that no interface on the host uses (chosen under a file lock), so topologies of several
test processes (pytest-xdist workers, two checkouts) can exist at once.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SUBNET_PREFIX = "10.213"
_LOCK_FILE = Path("/run/lock/raftflow-netns.lock")
_topologies = itertools.count(1)
# A folder to put on a node's PYTHONPATH to shift its wall clock (clock_offset/sitecustomize.py).
CLOCK_OFFSET_DIR = Path(__file__).resolve().parent / "clock_offset"


def available() -> str | None:
    """None if namespaces can be used here, else the reason they cannot."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"rfprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def _host_addresses_locked() -> Iterator[None]:
    """Held while a topology picks its subnet and claims it on the host."""
    _LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_subnet() -> str:
    shown = subprocess.run(["ip", "-4", "-o", "addr", "show"], check=True, capture_output=True, text=True).stdout
    used = {int(m) for m in re.findall(rf"inet {re.escape(SUBNET_PREFIX)}\.(\d+)\.", shown)}
    free = next((n for n in range(1, 255) if n not in used), None)
    if free is None:
        raise RuntimeError(f"every {SUBNET_PREFIX}.N.0/24 is in use on this host: remove stale test links")
    return f"{SUBNET_PREFIX}.{free}"


class Topology:
    def __init__(self, nodes: int) -> None:
        # Interface names are at most 15 bytes: "rf" + 5 digits of PID + a counter + a suffix.
        tag = f"rf{os.getpid() % 100000}{next(_topologies) % 10}"
        self.bridge_ns = f"{tag}br"
        self.namespaces = [f"{tag}n{i + 1}" for i in range(nodes)]
        self.root_link = f"{tag}r"
        self._created: list[str] = []
        self._cuts: set[tuple[int, int]] = set()
        try:
            with _host_addresses_locked():
                self.subnet = _free_subnet()
                self.hosts = [f"{self.subnet}.{i + 1}" for i in range(nodes)]
                self._build(tag)
        except subprocess.CalledProcessError as e:
            self.destroy()
            raise RuntimeError(f"building the test network failed: {' '.join(e.cmd)}: {e.stderr}") from None

    def _build(self, tag: str) -> None:
        _ip("netns", "add", self.bridge_ns)
        self._created.append(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        for i, ns in enumerate(self.namespaces):
            _ip("netns", "add", ns)
            self._created.append(ns)
            host_end, bridge_end = f"{tag}h{i + 1}", f"{tag}b{i + 1}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", bridge_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", bridge_end, "netns", self.bridge_ns)
            _ip("-n", ns, "addr", "add", f"{self.hosts[i]}/24", "dev", host_end)
            _ip("-n", ns, "link", "set", host_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.bridge_ns, "link", "set", bridge_end, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", bridge_end, "up")
        _ip("link", "add", self.root_link, "type", "veth", "peer", "name", f"{tag}rb")
        _ip("link", "set", f"{tag}rb", "netns", self.bridge_ns)
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")
        _ip("-n", self.bridge_ns, "link", "set", f"{tag}rb", "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", f"{tag}rb", "up")
        self._tag = tag

    def launcher(self) -> dict[str, list[str]]:
        """Command prefixes that start node `nK` inside its namespace."""
        return {f"n{i + 1}": ["ip", "netns", "exec", ns] for i, ns in enumerate(self.namespaces)}

    def _bridge_end(self, index: int) -> str:
        return f"{self._tag}b{index + 1}"

    def partition(self, index: int) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self._bridge_end(index), "down")

    def heal(self, index: int) -> None:
        _ip("-n", self.bridge_ns, "link", "set", self._bridge_end(index), "up")

    def cut(self, i: int, j: int) -> None:
        """Drop every packet between nodes i and j (both ways); each still reaches the rest."""
        for a, b in ((i, j), (j, i)):
            if (a, b) not in self._cuts:
                _ip("-n", self.namespaces[a], "route", "add", "blackhole", f"{self.hosts[b]}/32")
                self._cuts.add((a, b))

    def mend(self, i: int, j: int) -> None:
        for a, b in ((i, j), (j, i)):
            if (a, b) in self._cuts:
                _ip("-n", self.namespaces[a], "route", "del", "blackhole", f"{self.hosts[b]}/32")
                self._cuts.discard((a, b))

    def heal_all(self) -> None:
        """Mend every cut and bring every node's link back up."""
        for a, b in list(self._cuts):
            self.mend(a, b)
        for index in range(len(self.namespaces)):
            self.heal(index)

    def destroy(self) -> None:
        subprocess.run(["ip", "link", "del", self.root_link], capture_output=True)
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._created.clear()
