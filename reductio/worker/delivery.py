"""Scatter's ``send``: partition i of the source goes to worker i (worker side, standard library only).

The other end is receiving.py. A sender's own partition is hard-linked; a
local destination is written directly; an SSH destination gets one
connection carrying all of its files, through the worker's own ``ssh``
with the cluster key. At most ``streams`` destinations are served
at once, in an order that starts after the sender itself, so the senders do
not all call on the same receiver first; a connection that is refused or
dropped before it finished is tried again with doubling delays.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reductio.errors import DatasetError, ReductioError, environment_error
from reductio.wire import framing
from reductio.wire.gate_request import request as gate_request
from reductio.wire.gate_request import token_line
from reductio.wire.layout import CLUSTER_KEY, KNOWN_HOSTS
from reductio.wire.partition import partition_of_file
from reductio.wire.protocol import Reply
from reductio.worker.clock import Clock
from reductio.worker.machine import cores_each
from reductio.worker.receiving import open_to_senders
from reductio.worker.store import Home, check_name

DEFAULT_STREAMS = 4

# AES-GCM first: with the AES instructions of any recent x86 or ARM CPU it is the cheapest cipher, and
# two scatters at once moved 777 MB/s over loopback here with it against 551 MB/s with ssh's default,
# chacha20-poly1305. Every cipher listed is in OpenSSH since 6.5 (2014), so any worker shares one.
SCATTER_CIPHERS = "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes256-ctr"

# Post-quantum key exchange last among the defaults when it is sntrup761 (OpenSSH 9.0 to 9.8): it cost the
# client 80 ms of CPU per connection here against 14 ms for curve25519, and a scatter opens N x (N - 1)
# connections. mlkem768x25519 (OpenSSH 9.9 on) is as cheap as curve25519 and keeps its place first.
_SLOW_KEX = ("sntrup761",)
# Among the classical exchanges, NIST P-256 before curve25519: OpenSSL computes the first, OpenSSH's own
# portable code the second. P-256 cost the two ends 5 ms less CPU per connection here: for a whole
# `ssh host true`, 12.2 ms against 14.7 in the client and 24.2 against 26.8 in sshd and its shell.
_OPENSSL_KEX = "ecdh-sha2-nistp256"

# What ssh says when a connection was refused or dropped before any work was done: worth another try.
# A timeout is not: the destination already had dead_after seconds to answer.
_RETRYABLE = ("Connection refused", "Connection closed by", "Connection reset", "kex_exchange_identification",
              "Broken pipe")
# What ssh says when the destination fell silent: ServerAliveCountMax ran out, or ConnectTimeout did.
_SILENT = ("not responding", "timed out")
# ssh's own failure, as opposed to the exit status of the command it ran.
_SSH_FAILED = 255


def step_send(params: dict) -> dict:
    """Scatter's sender: partition i of the source goes to destination i.

    It first opens its own attempt to the other senders' gates with the
    head's ``permit`` for this worker (receiving.open_to_senders); its own
    deliveries through their gates start with its ``gate_token``. It reads
    the version of the source the head planned with (``source_attempt``).
    Returns, per destination index, the files it now holds for this attempt;
    the files left for the head to relay; how many connections were opened;
    and the sender's seconds and CPU seconds (``clock``).
    """
    clock = Clock()
    open_to_senders(params["home"], params["attempt"], params.get("permit") or [])  # first: the others' gates wait
    home = Home(params["home"])
    source = check_name(params["source"])
    marker, files = home.version(source, params.get("source_attempt"))  # the version the head's survey saw
    destinations = params["destinations"]
    if marker.get("partitions") != len(destinations):
        raise DatasetError(
            f"dataset {source!r} has {marker.get('partitions') or 'no'} partitions,"
            f" the cluster has {len(destinations)} workers; re-run the step that made it"
        )
    by_index: dict[int, list[Path]] = {}
    for path in files:
        by_index.setdefault(partition_of_file(path.name), []).append(path)
    own = int(params["self"])
    attempt = params["attempt"]
    sent: dict[str, dict] = {}
    relay: dict[str, dict] = {}
    if own in by_index:
        sent[str(own)] = _link(home, by_index.pop(own), attempt, marker)
    for index, _ in list(by_index.items()):
        if destinations[index]["kind"] == "relay":
            relay[str(index)] = {path.name: marker["files"][path.name] for path in by_index.pop(index)}
    order = send_order(own, by_index, len(destinations))
    sender = _Sender(home, attempt, marker, _streams(params), int(params.get("retries") or 0),
                     float(params.get("retry_delay") or 0), params.get("gate_token"))
    for index, facts in zip(order, sender.send([(destinations[i], by_index[i]) for i in order])):
        sent[str(index)] = facts
    return {"sent": sent, "relay": relay, "connections": sender.connections,
            "source": {key: marker.get(key) for key in ("attempt", "format", "partitions")},
            "clock": clock.counters()}


def _streams(params: dict) -> int:
    """Destinations served at once: as configured, else DEFAULT_STREAMS, fewer when this machine's cores are
    shared with other workers (each connection costs a handshake and a process on both ends)."""
    if params.get("streams"):
        return int(params["streams"])
    return min(DEFAULT_STREAMS, cores_each(params.get("sharing")))


def send_order(own: int, indices, count: int) -> list[int]:
    """Destinations starting with the one after the sender: at any moment each receiver serves a few senders."""
    return sorted(indices, key=lambda index: (index - own) % count)


def _link(home: Home, paths: list[Path], attempt: str, marker: dict) -> dict[str, dict]:
    """A worker's own partition never leaves the disk: hard links into the attempt."""
    folder = home.attempt_dir(attempt)
    for path in paths:
        target = folder / path.name
        if target.exists():  # a retried send: link again, never append
            target.unlink()
        os.link(path, target)
    return {path.name: dict(marker["files"][path.name]) for path in paths}


class _Sender:
    """Sends each destination its files, ``streams`` destinations at a time."""

    def __init__(self, home: Home, attempt: str, marker: dict, streams: int, retries: int, delay: float,
                 token: str | None) -> None:
        self.home, self.attempt, self.marker, self.token = home, attempt, marker, token
        self.streams, self.retries, self.delay = max(1, streams), retries, delay
        self.connections = 0
        self._running: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._failed = threading.Event()

    def send(self, work: list[tuple]) -> list[dict[str, dict]]:
        """Per (destination, files), the facts of the files now there; the first failure stops the rest."""
        if not work:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.streams, len(work)))
        futures = [pool.submit(self._deliver, destination, paths) for destination, paths in work]
        try:
            return [future.result() for future in futures]
        except BaseException:
            self._failed.set()
            with self._lock:
                for process in self._running:
                    process.kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _deliver(self, destination: dict, paths: list[Path]) -> dict[str, dict]:
        if self._failed.is_set():
            raise ReductioError("stopped: another destination failed")
        facts = {path.name: self.marker["files"][path.name] for path in paths}
        if destination["kind"] == "local":
            pieces = (piece for path in paths for piece in framing.frames(path, facts[path.name]))
            folder = Home(destination["home"]).attempt_dir(self.attempt)
            try:
                return framing.receive(framing.Reader.over(pieces), folder)
            except OSError as err:  # the destination's disk, not ours: name it
                full = environment_error(err, home=destination["home"])
                if not isinstance(full, ReductioError):
                    raise
                raise ReductioError(f"sending to {destination.get('name', 'a local worker')} failed: {full}") from err
        return self._over_ssh(destination, paths, facts)

    def _over_ssh(self, destination: dict, paths: list[Path], facts: dict[str, dict]) -> dict[str, dict]:
        """Stream files to another worker's ``receive`` over one connection of the worker's own ssh.

        Only the cluster key and the host keys pinned at setup are used: no
        user ssh config, no agent, no prompt, no unknown host accepted.
        """
        for round_ in range(self.retries + 1):
            code, reply = self._connect_and_send(destination, paths, facts)
            if code == 0 or self._failed.is_set():
                break
            tail = " ".join(reply.tail)
            if code != _SSH_FAILED or round_ == self.retries or not any(word in tail for word in _RETRYABLE):
                break
            time.sleep(self.delay * 2 ** round_)
        name = destination.get("name") or destination["host"]
        where = f"{name} ({destination['host']}:{destination['port']})"
        if code == _SSH_FAILED and reply.result is None and reply.error is None:
            raise ReductioError(f"sending to {where} failed: {ssh_failure(name, list(reply.tail))}",
                                "\n".join(reply.tail))
        try:
            return reply.outcome(code)["files"]
        except ReductioError as err:
            raise ReductioError(f"sending to {where} failed: {err}", err.details) from None

    def _connect_and_send(self, destination: dict, paths: list[Path], facts: dict[str, dict]):
        remote = gate_request(self.attempt, destination.get("dead_after") or 30, destination["home"],
                              sum(facts[path.name]["bytes"] for path in paths))
        token = token_line(self.token or "")  # the gate takes nothing without it; never on ssh's command line
        reply = Reply()
        process = subprocess.Popen(ssh_argv(self.home, destination) + [remote], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with self._lock:
            self.connections += 1
            self._running.append(process)
        reader = threading.Thread(target=_read_all, args=(process.stderr, reply), daemon=True)
        reader.start()
        try:
            process.stdin.write(token)
            for path in paths:
                for piece in framing.frames(path, facts[path.name]):
                    process.stdin.write(piece)
            process.stdin.close()
        except BrokenPipeError:  # ssh gave up: its stderr says why
            pass
        code = process.wait()
        reader.join()
        reply.close()
        with self._lock:
            self._running.remove(process)
        return code, reply


def ssh_failure(name: str, tail: list) -> str:
    """Why ssh itself gave up, in its own last words; a destination ``name`` that fell silent is named.

    Silence is all a sender can see: whether the destination dropped off
    (the head then names it lost) or only this path between workers broke.
    """
    last = tail[-1] if tail else "no message"
    if any(word in last for word in _SILENT):
        return f"{name} did not answer ({last})"
    return last if last.startswith("ssh") else f"ssh: {last}"


def _read_all(stream, reply: Reply) -> None:
    for block in iter(lambda: stream.read1(1 << 16), b""):
        reply.feed(block)


def ssh_argv(home: Home, destination: dict) -> list[str]:
    """The worker's ssh to another worker: cluster key, pinned host keys, liveness as the head's."""
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(home.root / CLUSTER_KEY), "-o", "IdentitiesOnly=yes",
        *liveness_options(destination),
        "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"Ciphers={SCATTER_CIPHERS}",
        *_kex_options(),
        "-o", f"UserKnownHostsFile={home.root / KNOWN_HOSTS}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-p", str(destination["port"]),
    ]
    if destination.get("compress"):
        argv += ["-o", "Compression=yes"]
    if destination.get("user"):
        argv += ["-l", destination["user"]]
    return argv + ["--", destination["host"]]


@functools.lru_cache(maxsize=1)
def _kex_options() -> tuple:
    """ssh's own key exchange list in ``kex_order``; nothing if ssh will not say or the order stands."""
    try:
        config = subprocess.run(["ssh", "-G", "-F", "/dev/null", "reductio.invalid"], capture_output=True,
                                text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    names = next((line.split()[1].split(",") for line in config.splitlines()
                  if line.startswith("kexalgorithms ")), [])
    ordered = kex_order(names)
    return () if ordered == names else ("-o", "KexAlgorithms=" + ",".join(ordered))


def kex_order(names: list[str]) -> list[str]:
    """The same key exchanges, cheapest first: P-256 just before curve25519, the slow post-quantum one last."""
    slow = [name for name in names if name.startswith(_SLOW_KEX)]
    if len(slow) == len(names):
        return names
    ordered = [name for name in names if name not in slow]
    if _OPENSSL_KEX in ordered:
        ordered.remove(_OPENSSL_KEX)
        ordered.insert(next((i for i, name in enumerate(ordered) if name.startswith("curve25519")), len(ordered)),
                       _OPENSSL_KEX)
    return ordered + slow


def liveness_options(destination: dict) -> list[str]:
    """ssh options that give up on a silent destination a little after the head would (dead_after and two
    keepalives), so a host that dropped off is named lost by the head, which hears it too; a sender's own
    timeout then speaks only of a path between workers that broke."""
    dead_after = float(destination.get("dead_after") or 30)
    interval = max(1, round(dead_after / 6))
    count = math.ceil(dead_after / interval) + 2
    return ["-o", f"ConnectTimeout={interval * count}", "-o", f"ServerAliveInterval={interval}",
            "-o", f"ServerAliveCountMax={count}"]
