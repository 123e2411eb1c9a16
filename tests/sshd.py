"""A real SSH cluster on loopback for the tests: one sshd per worker, started and stopped by pid.

Each daemon has its own host key and port; all accept one user key. Run as
root, the cluster is what a user meets: each sshd runs with Debian's own
/etc/ssh/sshd_config (StrictModes, PAM and MaxStartups as shipped) with only
its Port, ListenAddress, HostKey and PidFile set here, and the workers are
another account made for the run (its own ~/.ssh/authorized_keys), removed
at the end. Otherwise the daemons run as the tester, with a config of
their own.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import List, Optional

from ownership import TAG

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
STOCK_CONFIG = Path("/etc/ssh/sshd_config")


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

    def __init__(self, root: Path, index: int, authorized_keys: Path = None, address: str = "127.0.0.1",
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

    def write_config(self, authorized_keys: Path = None) -> None:
        """Without ``authorized_keys``: the machine's stock config, ours only where sshd takes the first value."""
        ours = (f"ListenAddress {self.address}\nPort {self.port}\nHostKey {self.host_key}\n"
                f"PidFile {self.root / 'sshd.pid'}\n")
        if authorized_keys is None:
            self.config.write_text(ours + STOCK_CONFIG.read_text())
            return
        self.config.write_text(
            ours + f"AuthorizedKeysFile {authorized_keys}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nMaxStartups 100\nMaxSessions 100\n"
            "LogLevel ERROR\n"
        )

    def start(self) -> None:
        if os.geteuid() == 0:  # root's sshd needs its privilege separation dir; another user's runs without it
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
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


class Account:
    """A login made for the run (root only), as a worker's account is on a user's machine: a home with Debian's
    default files (/etc/skel: .bashrc, .profile), a key in ~/.ssh/authorized_keys; removed with its files and
    processes (all of them this run's: the account is)."""

    def __init__(self, name: str) -> None:
        self.name, self.home = name, Path("/home") / name

    def create(self, public_key: Path) -> None:
        # "*": no password, not locked; sshd without PAM refuses a locked ("!") account even with a key
        subprocess.run(["useradd", "-m", "-d", str(self.home), "-s", "/bin/bash", "-p", "*", self.name],
                       check=True, capture_output=True, timeout=60)
        ssh = self.folder(".ssh")
        shutil.copy(public_key, ssh / "authorized_keys")
        self.own(ssh / "authorized_keys", 0o600)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    def folder(self, name: str) -> Path:
        path = self.home / name
        path.mkdir(mode=0o700, exist_ok=True)
        self.own(path, 0o700)
        return path

    def own(self, path: Path, mode: int) -> None:
        shutil.chown(path, self.name, self.name)
        path.chmod(mode)

    def runs(self, python: str) -> bool:
        """Whether this account can run ``python`` and make a venv with it."""
        try:
            done = subprocess.run([python, "-c", "import venv"], user=self.name, group=self.name, extra_groups=[],
                                  cwd="/", capture_output=True, timeout=60)
        except PermissionError:  # a folder on its path is closed to the account
            return False
        return done.returncode == 0

    def python(self, python: str) -> str:
        """``python``, or when this account cannot run it (pyenv's under /root, mode 0700) the same Python
        installed in its home, as a user of that machine would have it: hard links to the files, but for the
        interpreter, whose library path is written into it (pyenv: RUNPATH PREFIX/lib), made relative."""
        if self.runs(python):
            return python
        asked = subprocess.run([python, "-c", "import sys; print(sys.base_prefix, sys.version_info[0],"
                                " sys.version_info[1])"], capture_output=True, text=True, timeout=60, check=True)
        prefix, major, minor = asked.stdout.split()
        copy = self.home / "pythons" / Path(prefix).name
        interpreter = copy / "bin" / f"python{major}.{minor}"
        if not copy.exists():
            copy.parent.mkdir(exist_ok=True)
            subprocess.run(["cp", "-al", prefix, str(copy)], check=True, capture_output=True, timeout=120)
            code = interpreter.read_bytes()
            interpreter.unlink()  # a hard link to the original: never write through it
            old = f"{prefix}/lib".encode() + b"\0"
            new = b"$ORIGIN/../lib\0"
            if len(new) <= len(old) and code.count(b"\0" + old) == 1:
                code = code.replace(b"\0" + old, b"\0" + new.ljust(len(old), b"\0"))
            interpreter.write_bytes(code)
            interpreter.chmod(0o755)
        if not self.runs(str(interpreter)):
            raise RuntimeError(f"{self.name} cannot run {python}, nor a copy of it in {copy}")
        return str(interpreter)

    def remove(self) -> None:
        """End what runs as the account (sessions sshd left behind), then remove it and its home."""
        try:
            uid = self.uid
        except KeyError:  # never made
            return
        for _ in range(50):
            running = [pid for pid in _pids() if _uid(pid) == uid]
            if not running:
                break
            for pid in running:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        # The login first, then its files by ourselves: userdel -r removes the home before the login, and once,
        # on a busy machine, it left both behind with the home half removed (under a 60 s timeout, likely hit).
        subprocess.run(["userdel", "-f", self.name], capture_output=True, timeout=300, check=True)
        shutil.rmtree(self.home, ignore_errors=True)


def _pids() -> List[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _uid(pid: int) -> Optional[int]:
    """The real uid of ``pid``, or None when it ended meanwhile."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))


class SshCluster:
    """Several sshds, a user key they accept, and what a test needs to reach them: ``user``, ``authorized_keys``
    and ``homes`` (a folder the workers' homes go in, writable by ``user``)."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.user_key = root / "user_key"
        keygen(self.user_key)
        self.account = Account(f"rdx{TAG}") if os.geteuid() == 0 else None
        if self.account:
            self.user, self.authorized_keys = self.account.name, self.account.home / ".ssh" / "authorized_keys"
            self.homes = self.account.home / "homes"
            self.daemons: List[Sshd] = [Sshd(root, i) for i in range(size)]
        else:
            self.user, self.authorized_keys = getpass.getuser(), root / "authorized_keys"
            shutil.copy(self.user_key.with_suffix(".pub"), self.authorized_keys)
            self.homes = root / "homes"
            self.homes.mkdir()
            self.daemons = [Sshd(root, i, self.authorized_keys) for i in range(size)]

    def start(self) -> None:
        """Make the account (as root), then start the daemons; ``stop`` undoes both, whatever got done."""
        if self.account:
            self.account.create(self.user_key.with_suffix(".pub"))
            self.account.folder(self.homes.name)
        for daemon in self.daemons:
            daemon.start()

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        if self.account:
            self.account.remove()

    def python(self, python: str) -> str:
        """An interpreter the workers' account can run: ``python``, or the same Python in its home."""
        return self.account.python(python) if self.account else python

    def as_workers(self) -> dict:
        """subprocess arguments that run a command as the workers' account, from its home."""
        if not self.account:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": [], "cwd": str(self.account.home)}

    def give(self, path: Path) -> Path:
        """``path``, made by the test, now the workers' account's, as if a step of theirs had made it."""
        if self.account:
            shutil.chown(path, self.user, self.user)
        return path

    def shared(self, name: str) -> Path:
        """A new folder that the workers' account can see and write and the test can too (a test's own
        tmp_path is private to the tester's account): where a pause file goes that a worker marks."""
        folder = self.homes / f"shared-{name}"
        folder.mkdir()
        return self.give(folder)

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
                + ("" if self.account else f"authorized_keys = {self.authorized_keys}\n")
                + (f"python = {python}\n" if python else "")
            )
        for i in range(local):
            sections.append(f"[local-{i}]\nlocal = yes\nhome = {homes / f'local-{i}'}\n")
        return "\n".join(sections)
