"""Scatter that scales: one connection per sender and destination, a few at a time, retried when refused."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from conftest import WORDJOBS, make_context, write_lines
from reductio import tasks
from reductio.worker.delivery import _kex_options, _streams, kex_order, liveness_options, send_order
from reductio.worker.machine import cores_each


def scatter_counters(log: Path) -> dict:
    (record,) = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["step"] == "scatter"]
    return record["workers"]


def receives_logged(home: Path) -> int:
    """How many receive commands finished in this worker's home (one per connection that delivered)."""
    return sum(1 for line in (home / "logs" / "steps.log").read_text().splitlines() if " receive done in " in line)


def counted(path: Path) -> dict:
    return dict(line.split("\t") for line in path.read_text().splitlines())


@pytest.fixture
def big_input(tmp_path) -> Path:
    """Over 2 MB on each of three workers, so map runs two processes there and writes two files per partition."""
    return write_lines(tmp_path / "in.txt", [f"k{i % 5000:05d}\t{'x' * 40}" for i in range(160_000)])


@pytest.mark.parametrize("streams", [1, 4])
def test_each_sender_opens_one_connection_per_other_worker_carrying_all_its_files(
        ssh_workers, sshd_cluster, big_input, tmp_path, streams):
    ssh_workers(3)
    log = tmp_path / "job.jsonl"
    c = make_context(project=WORDJOBS, processes=2, log=str(log), scatter_streams=streams)
    tasks.setup(c)
    tasks.load(c, str(big_input), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    homes = [sshd_cluster.homes / f"ssh-{i}" for i in range(3)]
    before = [receives_logged(home) for home in homes]
    tasks.scatter(c, "pairs", "here", force=True)
    for index, home in enumerate(homes):
        files = sorted(p.name for p in (home / "data" / "here").glob("p*"))
        senders = Counter(name.split(".")[1].split("-")[0] for name in files)
        assert senders == {f"w{i:05d}": 2 for i in range(3)}, files  # two files from each sender, itself too
        assert receives_logged(home) - before[index] == 2  # one connection from each other sender
    assert {name: counters["connections"] for name, counters in scatter_counters(log).items()} == {
        "ssh-0": 2, "ssh-1": 2, "ssh-2": 2}
    tasks.merge(c, "here", str(tmp_path / "here.tsv"))
    lines = (tmp_path / "here.tsv").read_text().splitlines()
    assert sorted(lines) == sorted(big_input.read_text().splitlines())


class Refusing(threading.Thread):
    """On a stopped daemon's port, close each connection at once (ssh: "Connection closed by") until ``enough``
    were turned away, or 60 s passed; then start the daemon again. The senders' retries, not a timer, decide."""

    def __init__(self, sshd, enough: int) -> None:
        super().__init__(daemon=True)
        self.sshd, self.enough, self.refused = sshd, enough, 0
        self.listener = socket.create_server((sshd.address, sshd.port))
        self.listener.settimeout(60)

    def run(self) -> None:
        try:
            while self.refused < self.enough:
                connection, _ = self.listener.accept()
                connection.close()
                self.refused += 1
        except socket.timeout:
            pass
        finally:
            self.listener.close()
            self.sshd.start()


def test_a_refused_connection_is_retried_with_backoff_and_the_scatter_completes(ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(3)
    log = tmp_path / "job.jsonl"
    c = make_context(project=WORDJOBS, log=str(log), retries=5, retry_delay=0.3)
    tasks.setup(c)
    keys = [f"k{i % 3000:05d}" for i in range(30_000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"{key}\t1" for key in keys])), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    daemon = sshd_cluster.daemons[2]
    daemon.stop()  # its listener: the head's open connection to ssh-2 stays, the other workers are turned away
    refusing = Refusing(daemon, enough=3)
    refusing.start()
    try:
        tasks.scatter(c, "pairs", "here")
    finally:
        refusing.join(70)
    assert refusing.refused >= 3, f"the senders reached ssh-2's port {refusing.refused} times in 60 s"
    connections = {name: counters["connections"] for name, counters in scatter_counters(log).items()}
    assert connections["ssh-2"] == 2
    assert connections["ssh-0"] > 2 and connections["ssh-1"] > 2, connections  # they tried ssh-2 again
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "reductio.reducers.sum", "sorted", "counts")
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    assert counted(tmp_path / "counts.tsv") == {key: str(n) for key, n in Counter(keys).items()}


def test_senders_start_with_different_receivers():
    for count in (2, 5, 32):
        first = [send_order(own, [i for i in range(count) if i != own], count)[0] for own in range(count)]
        assert sorted(first) == list(range(count))  # every receiver is some sender's first, none twice
        assert all(sorted(send_order(own, range(count), count)) == list(range(count)) for own in range(count))


def test_a_sender_serves_fewer_destinations_at_once_when_other_workers_share_its_cores():
    assert _streams({"streams": 7, "sharing": 16}) == 7  # scatter_streams, as configured
    assert _streams({"sharing": 1}) == min(4, cores_each(1))
    assert _streams({"sharing": cores_each(1) * 8}) == 1  # 16 loopback workers on two cores, as in the bench


def test_scatter_offers_every_key_exchange_of_its_ssh_cheapest_first():
    defaults = subprocess.run(["ssh", "-G", "-F", "/dev/null", "x.invalid"], capture_output=True, text=True,
                              timeout=60).stdout
    offered = next(line.split()[1] for line in defaults.splitlines() if line.startswith("kexalgorithms ")).split(",")
    options = _kex_options()
    if kex_order(offered) == offered:
        assert options == ()
        return
    assert options[0] == "-o" and options[1] == "KexAlgorithms=" + ",".join(kex_order(offered))
    assert sorted(kex_order(offered)) == sorted(offered)


def test_key_exchanges_go_p256_before_curve25519_and_slow_post_quantum_last_keeping_the_rest_in_order():
    openssh_9_2 = ["sntrup761x25519-sha512@openssh.com", "curve25519-sha256", "curve25519-sha256@libssh.org",
                   "ecdh-sha2-nistp256", "ecdh-sha2-nistp384", "diffie-hellman-group14-sha256"]
    assert kex_order(openssh_9_2) == ["ecdh-sha2-nistp256", "curve25519-sha256", "curve25519-sha256@libssh.org",
                                      "ecdh-sha2-nistp384", "diffie-hellman-group14-sha256",
                                      "sntrup761x25519-sha512@openssh.com"]
    openssh_9_9 = ["mlkem768x25519-sha256", "sntrup761x25519-sha512", "curve25519-sha256", "ecdh-sha2-nistp256"]
    assert kex_order(openssh_9_9) == ["mlkem768x25519-sha256", "ecdh-sha2-nistp256", "curve25519-sha256",
                                      "sntrup761x25519-sha512"]  # the cheap post-quantum one stays first
    assert kex_order(["curve25519-sha256", "diffie-hellman-group14-sha256"]) == [
        "curve25519-sha256", "diffie-hellman-group14-sha256"]
    assert kex_order(["sntrup761x25519-sha512"]) == ["sntrup761x25519-sha512"]  # never an empty offer

@pytest.mark.parametrize("dead_after", [0.5, 1, 3, 7.5, 30, 300])
def test_a_senders_ssh_gives_up_on_a_silent_destination_two_keepalives_after_the_head_would(dead_after):
    options = dict(option.split("=") for option in liveness_options({"dead_after": dead_after})[1::2])
    interval, count = int(options["ServerAliveInterval"]), int(options["ServerAliveCountMax"])
    # ssh gives up between count and count + 1 intervals after it last heard the destination
    assert dead_after + 2 * interval <= interval * count <= 1.2 * dead_after + 3 * interval
    assert int(options["ConnectTimeout"]) == interval * count
