"""A real OpenSSH server on this machine, for the ssh task tests and `tools/up --ssh-demo`.

`LocalSSHServer(dir).start()` generates an ed25519 host key and a client key (with
the `cryptography` package, so no ssh-keygen is needed), authorises the client key
for the current user, writes a known_hosts file holding the host key, and runs
`sshd -D -e -f CONFIG` on a free loopback port. It is stopped by the PID it started
and nothing else. Layout under the directory:

    host_ed25519        the server's host key (its .pub beside it)
    client_ed25519      the key nodes log in with (authorised)
    authorized_keys
    known_hosts         "[127.0.0.1]:PORT ssh-ed25519 ..." - what a node's connection trusts
    sshd_config, sshd.log, sshd.pid

Needs OpenSSH's sshd (Debian: openssh-server); `find_sshd` says where it is or why not.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .local import LOOPBACK, free_ports

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def find_sshd() -> tuple[str | None, str]:
    """(path of sshd, '') or (None, why it cannot be used)."""
    found = shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        return None, ("OpenSSH's sshd is not installed "
                      "(Debian: apt-get install openssh-server; tools/test does it as root)")
    return found, ""


def write_key_pair(path: Path) -> str:
    """A new ed25519 key in OpenSSH format at `path` (0600) and `path`.pub; returns the public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    path.with_suffix(".pub").write_text(public + "\n")
    return public


class LocalSSHServer:
    def __init__(self, directory: Path, remote_path: str = "") -> None:
        """`remote_path`: the PATH of commands run through this server (sshd's SetEnv), e.g.
        a folder with stand-ins for programs a remote host would have; "" keeps sshd's."""
        self.dir = directory.resolve()
        self.remote_path = remote_path
        self.port = 0
        self.user = getpass.getuser()
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def client_key(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def host_key_line(self) -> str:
        """This server's known_hosts line."""
        return f"[{self.host}]:{self.port} {(self.dir / 'host_ed25519.pub').read_text().strip()}"

    def start(self, timeout: float = 15.0) -> "LocalSSHServer":
        sshd, why = find_sshd()
        if sshd is None:
            raise RuntimeError(why)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "host_ed25519").exists():
            write_key_pair(self.dir / "host_ed25519")
            (self.dir / "authorized_keys").write_text(write_key_pair(self.client_key) + "\n")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # its privilege-separation directory
        last_error = ""
        for _ in range(5):   # a free port can be taken between the probe and sshd's bind
            self.port = free_ports(1)[0]
            config = self.dir / "sshd_config"
            config.write_text("\n".join([
                f"Port {self.port}",
                f"ListenAddress {self.host}",
                f"HostKey {self.dir / 'host_ed25519'}",
                f"PidFile {self.dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",
                "LogLevel VERBOSE",
                *([f"SetEnv PATH={self.remote_path}"] if self.remote_path else []),
            ]) + "\n")
            check = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"sshd rejects its test config: {check.stderr.strip()}")
            log = open(self.dir / "sshd.log", "ab")
            self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
            log.close()
            if self._wait_banner(timeout):
                self.known_hosts.write_text(self.host_key_line + "\n")
                return self
            last_error = (self.dir / "sshd.log").read_text()[-2000:]
            self.stop()
        raise RuntimeError(f"sshd did not start on {self.host}: {last_error}")

    def recorded_pid(self) -> int | None:
        """The PID in sshd.pid if that process is an sshd running this directory's config
        (so a stale file, or a reused PID, is never signalled)."""
        try:
            pid = int((self.dir / "sshd.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()   # sshd retitles itself: one string
        except (OSError, ValueError, IndexError):
            return None
        return pid if b"sshd" in cmdline and str(self.dir / "sshd_config").encode() in cmdline else None

    def attach(self) -> bool:
        """Use the sshd an earlier `start` left running (tools/up run again): True if there is
        one, started with this remote_path."""
        if self.recorded_pid() is None:
            return False
        if self.remote_path and f"SetEnv PATH={self.remote_path}\n" not in (self.dir / "sshd_config").read_text():
            return False
        for line in (self.dir / "sshd_config").read_text().splitlines():
            if line.startswith("Port "):
                self.port = int(line.split()[1])
        return self.port != 0

    def stop_recorded(self, timeout: float = 10.0) -> bool:
        """Stop the sshd recorded in this directory (tools/down); True if one was running."""
        pid = self.recorded_pid()
        if pid is None:
            return False
        os.kill(pid, 15)
        deadline = time.monotonic() + timeout
        while self.recorded_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    def _wait_banner(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the sshd this object started (the listener; sessions it forked end with
        their connections)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
