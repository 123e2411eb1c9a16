"""A real SSH cluster on loopback for the tests: one sshd per worker, started and stopped by pid.

Each daemon has its own host key and port; all accept one user key. The
configs have no Subsystem line: reductio needs nothing but exec channels.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import List

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_sshd() -> str:
    """The sshd binary; its absence is a failure with the fix, never a skip."""
    for folder in SBIN + tuple(os.environ.get("PATH", "").split(os.pathsep)):
        candidate = Path(folder) / "sshd"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("sshd not found: install openssh-server (apt-get install openssh-server openssh-client)")


def keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Sshd:
    """One sshd with its own config, host key and port: on 127.0.0.1, or on a test host's address inside its
    network namespace (netns.py)."""

    def __init__(self, root: Path, index: int, authorized_keys: Path, address: str = "127.0.0.1",
                 port: int = None, namespace: str = None) -> None:
        self.root = root / f"sshd-{index}"
        self.root.mkdir()
        self.host_key = self.root / "host_key"
        keygen(self.host_key)
        self.address, self.namespace = address, namespace
        self.port = port or free_port()
        self.config = self.root / "sshd_config"
        self.write_config(authorized_keys)
        self.process = None

    def write_config(self, authorized_keys: Path) -> None:
        self.config.write_text(
            f"ListenAddress {self.address}\nPort {self.port}\nHostKey {self.host_key}\n"
            f"PidFile {self.root / 'sshd.pid'}\nAuthorizedKeysFile {authorized_keys}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n"
            "LogLevel ERROR\n"
        )

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        with open(self.root / "sshd.log", "ab") as log:
            inside = ["ip", "netns", "exec", self.namespace] if self.namespace else []  # it execs: same pid
            self.process = subprocess.Popen(inside + [find_sshd(), "-D", "-e", "-f", str(self.config)],
                                            stderr=log, stdout=log)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as conn:
                    if conn.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd on port {self.port} did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def known_hosts_line(self) -> str:
        kind, key = (self.host_key.with_suffix(".pub")).read_text().split()[:2]
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{host} {kind} {key}\n"


class SshCluster:
    """Several sshds, a user key they accept, and what a test needs to reach them."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.user_key = root / "user_key"
        keygen(self.user_key)
        self.authorized_keys = root / "authorized_keys"
        shutil.copy(self.user_key.with_suffix(".pub"), self.authorized_keys)
        self.daemons: List[Sshd] = [Sshd(root, i, self.authorized_keys) for i in range(size)]
        self.user = getpass.getuser()

    def start(self) -> None:
        for daemon in self.daemons:
            daemon.start()

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()

    def known_hosts(self) -> str:
        return "".join(daemon.known_hosts_line() for daemon in self.daemons)

    def workers_cfg(self, homes: Path, count: int = None, local: int = 0, python: str = None) -> str:
        """A workers.cfg naming ``count`` of the daemons, then ``local`` local workers; with ``python``,
        the SSH workers' environments are made by it, in homes of their own."""
        sections = []
        for i, daemon in enumerate(self.daemons[:count]):
            home = homes / (f"ssh-{i}" if python is None else f"ssh-{i}-{Path(python).name}")
            sections.append(
                f"[ssh-{i}]\nhost = 127.0.0.1\nport = {daemon.port}\nusername = {self.user}\n"
                f"key_filename = {self.user_key}\nhome = {home}\n"
                f"authorized_keys = {self.authorized_keys}\n" + (f"python = {python}\n" if python else "")
            )
        for i in range(local):
            sections.append(f"[local-{i}]\nlocal = yes\nhome = {homes / f'local-{i}'}\n")
        return "\n".join(sections)
