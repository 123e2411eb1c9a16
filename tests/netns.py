"""Test hosts that are real hosts: one network namespace each, its own address, link and sshd.

Host i lives in namespace ``rdxTAG-i`` with address 198.18.(i+1).2 on a veth
whose other end (198.18.(i+1).1) is in the test's own namespace; that end
forwards between the hosts' links, so hosts reach each other through it as
through a router. 198.18.0.0/15 is the range set aside for testing network
devices (RFC 2544); a blackhole route for all of it keeps every packet
addressed there on this machine, and the hosts have no route anywhere else.

``cut(i)`` drops every packet to and from host i silently (no reset, no ICMP),
as a pulled cable or a dead switch port does; ``heal(i)`` undoes it. Each
link can be slowed with a token bucket so a transfer lasts long enough to be
cut in the middle. All of it needs root and iproute2: run as another user,
the tests skip saying they need root; as root without iproute2 they fail
saying so, never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import List, Tuple

from conftest import skip_unless_root
from ownership import TAG
from sshd import Sshd, keygen

RANGE = "198.18.0.0/15"
HOSTS_NET = "198.18.0.0/16"


def ip(*args: str, namespace: str = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", namespace] if namespace else []) + list(args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done


class Host:
    """One test host: a namespace, its link to us, its address and its sshd."""

    def __init__(self, root: Path, tag: str, index: int, authorized_keys: Path) -> None:
        self.index = index
        self.namespace = f"rdx{tag}-{index}"
        self.link = f"rdx{tag}v{index}"  # our end of the veth; at most 15 characters
        self.gateway = f"198.18.{index + 1}.1"
        self.address = f"198.18.{index + 1}.2"
        self.sshd = Sshd(root, index, authorized_keys, address=self.address, port=22, namespace=self.namespace)

    def create(self, rate: str = None) -> None:
        ip("netns", "add", self.namespace)
        ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.namespace)
        ip("addr", "add", f"{self.gateway}/24", "dev", self.link)
        ip("link", "set", self.link, "up")
        Path(f"/proc/sys/net/ipv4/conf/{self.link}/forwarding").write_text("1")  # this link only
        inside = self.namespace
        ip("addr", "add", f"{self.address}/24", "dev", "eth0", namespace=inside)
        ip("link", "set", "eth0", "up", namespace=inside)
        ip("link", "set", "lo", "up", namespace=inside)
        ip("route", "add", HOSTS_NET, "via", self.gateway, namespace=inside)
        # Local delivery after our cut rules, so a cut drops packets to the host's own address too.
        ip("rule", "add", "pref", "100", "lookup", "local", namespace=inside)
        ip("rule", "del", "pref", "0", namespace=inside)
        if rate:
            for device, where in ((self.link, None), ("eth0", inside)):
                bucket = ["tbf", "rate", rate, "burst", "64kb", "latency", "400ms"]
                subprocess.run(["tc"] + (["-n", where] if where else []) + ["qdisc", "add", "dev", device, "root"]
                               + bucket, check=True, capture_output=True, timeout=60)

    def cut(self) -> None:
        """Drop everything to and from this host, silently."""
        ip("rule", "add", "pref", "10", "iif", "eth0", "blackhole", namespace=self.namespace)
        ip("rule", "add", "pref", "11", "to", HOSTS_NET, "blackhole", namespace=self.namespace)

    def cut_from_head(self) -> None:
        """Take away the head's route to this host (a blackhole route in the test's own namespace), as when the
        head's interface or VPN drops: its kernel refuses to send there, and a connect fails at once (EINVAL)."""
        ip("route", "add", "blackhole", f"{self.address}/32")

    def part_from(self, other: "Host") -> None:
        """Drop everything between this host and ``other``, silently (each drops what arrives from the other);
        both still reach everyone else. ``heal`` both to undo it."""
        for one, two in ((self, other), (other, self)):
            ip("rule", "add", "pref", "12", "iif", "eth0", "from", two.address, "blackhole", namespace=one.namespace)

    def heal(self) -> None:
        for pref in ("10", "11", "12"):
            ip("rule", "del", "pref", pref, namespace=self.namespace, check=False)
        ip("route", "del", "blackhole", f"{self.address}/32", check=False)

    def processes(self, *words: str) -> List[str]:
        """Command lines of this host's processes that contain one of ``words``; by default, reductio's: its
        worker commands and the scatter gate's receives."""
        return [command for _, command in self._matching(words or ("reductio.worker", "reductio.gate"))]

    def signal(self, number: int, *words: str) -> None:
        """Send signal ``number`` to this host's processes whose command line contains one of ``words``."""
        for pid, _ in self._matching(words):
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass

    def _matching(self, words) -> List[Tuple[int, str]]:
        inode = os.stat(f"/run/netns/{self.namespace}").st_ino
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "net") != f"net:[{inode}]":
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:  # it ended meanwhile
                continue
            if any(word in command for word in words):
                found.append((int(entry.name), command))
        return found

    def remove(self) -> None:
        self.heal()
        self.sshd.stop()
        ip("link", "del", self.link, check=False)
        ip("netns", "del", self.namespace, check=False)


class Network:
    """``size`` test hosts, each with an sshd that accepts one user key."""

    def __init__(self, root: Path, size: int, rate: str = None) -> None:
        skip_unless_root("making test hosts in network namespaces")
        if shutil.which("ip") is None or shutil.which("tc") is None:
            raise RuntimeError("the network tests make namespaces: run them as root with iproute2 installed"
                               " (apt-get install iproute2)")
        self.root, self.rate = root, rate
        self.user_key = root / "user_key"
        keygen(self.user_key)
        self.authorized_keys = root / "authorized_keys"
        shutil.copy(self.user_key.with_suffix(".pub"), self.authorized_keys)
        self.hosts = [Host(root, TAG, i, self.authorized_keys) for i in range(size)]
        self._added_range = False

    def create(self) -> None:
        _remove_leftovers()
        _refuse_others()
        try:
            self._added_range = ip("route", "add", "blackhole", RANGE, check=False).returncode == 0
            for host in self.hosts:
                host.create(self.rate)
                host.sshd.start()
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for host in self.hosts:
            host.remove()
        if self._added_range:
            ip("route", "del", "blackhole", RANGE, check=False)

    def heal_all(self) -> None:
        for host in self.hosts:
            host.heal()

    def known_hosts(self) -> str:
        return "".join(host.sshd.known_hosts_line() for host in self.hosts)

    def workers_cfg(self, homes: Path) -> str:
        import getpass

        return "\n".join(
            f"[host{h.index}]\nhost = {h.address}\nusername = {getpass.getuser()}\nkey_filename = {self.user_key}\n"
            f"home = {homes / f'host{h.index}'}\nauthorized_keys = {self.authorized_keys}\n"
            for h in self.hosts
        )


def _remove_leftovers() -> None:
    """This run's namespaces and links that an earlier test left (their addresses are ours), and only those:
    another run's are not ours to remove (``_refuse_others``)."""
    for line in ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if re.fullmatch(rf"rdx{TAG}-\d+", name):
            ip("netns", "del", name, check=False)
    for line in ip("-br", "link").stdout.splitlines():
        name = line.split()[0].split("@")[0] if line.split() else ""
        if re.fullmatch(rf"rdx{TAG}v\d+", name):
            ip("link", "del", name, check=False)


def _refuse_others() -> None:
    """Stop, naming it, at another run's link holding the test hosts' addresses: both runs would fail oddly."""
    for line in ip("-br", "addr").stdout.splitlines():
        name = line.split()[0].split("@")[0] if line.split() else ""
        if " 198.18." in line and not re.fullmatch(rf"rdx{TAG}v\d+", name):
            raise RuntimeError(f"link {name} holds an address of the test hosts' range {RANGE}: another run's"
                               f" (ip -br addr show {name}); run the network tests once that run is over")


def wait_until(condition, timeout: float, what: str, every: float = 0.02):
    """Poll ``condition`` until it gives something true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"waited {timeout:g} s for {what}")
