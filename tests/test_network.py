"""A host that drops off the network never hangs a job: real hosts in network namespaces, cut silently.

Three test hosts (netns.py), each with its own address, sshd and a link slowed
to 16 Mbit/s so transfers last long enough to be cut in the middle. For each
step, one host's packets are dropped while its part of the step runs; the head
must exit 1 within dead_after and a few seconds naming that host, publish
nothing anywhere, leave no reductio process running on any host once healed,
and give the exact output when the job is run again. Two hosts parted from
each other while the head hears both fail scatter saying which path broke.
"""

from __future__ import annotations

import getpass
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from invoke import Exit

from conftest import Background, end_run, fabric_context, write_lines
from netns import Network, wait_until
from reductio import tasks

DEAD_AFTER = 3.0
WITHIN = DEAD_AFTER + 8  # seconds from the cut to the head's exit
STEPS = ["input", "pairs", "here", "sorted", "counts"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = Network(tmp_path_factory.mktemp("net"), 3, rate="16mbit")
    net.homes = tmp_path_factory.mktemp("hosts")
    net.create()
    yield net
    net.remove()


@pytest.fixture
def job(network, isolated_home, tmp_path):
    """A set-up context on the three hosts, the input, and its expected output."""
    ssh = isolated_home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "known_hosts").write_text(network.known_hosts())
    Path("workers.cfg").write_text(network.workers_cfg(network.homes))
    c = fabric_context(dead_after=DEAD_AFTER, progress_interval=0.5, retry_delay=0.2)
    tasks.setup(c)
    for name in STEPS:
        tasks.delete(c, name)
    keys = [f"w{(i * 7919) % 60000:06d}" for i in range(240_000)]
    data = write_lines(tmp_path / "input.txt", [f"{key}\t1" for key in keys])
    expected = "".join(f"{key}\t{n}\n" for key, n in sorted(Counter(keys).items())).encode()
    yield c, data, expected
    network.heal_all()
    end_run(c)


def run_job(c, data: Path, output: Path) -> None:
    tasks.load(c, str(data), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "reductio.reducers.sum", "sorted", "counts")
    tasks.merge(c, "counts", str(output))


def steps_running(host) -> list:
    """The host's reductio commands other than the head's control session."""
    return [command for command in host.processes() if "reductio.worker session" not in command]


class Running:
    """The moment to cut a host: ``word`` runs there."""

    def __init__(self, word: str) -> None:
        self.word, self.what = word, f"'{word}' to run"

    def __call__(self, host) -> bool:
        return bool(host.processes(self.word))

    def cut(self, host) -> None:
        host.cut()


class RunningCutFromHead(Running):
    """The moment ``word`` runs there, the head loses its route to the host (and the host drops everything)."""

    def cut(self, host) -> None:
        host.cut_from_head()
        host.cut()


class OnlyReceiving:
    """The moment to cut a host in scatter: its own sending is over (its ssh clients came and went), so its
    send step has returned and waits for the verdict, while the others still send to it. To hold that
    moment open, each gate receiving on the host is paused (SIGSTOP) until the cut, then let go."""

    what = "its sending to end while a gate still receives"

    def __init__(self) -> None:
        self.sent = False

    def __call__(self, host) -> bool:
        host.signal(signal.SIGSTOP, "reductio.gate")
        sending = bool(host.processes("ssh -F /dev/null"))
        self.sent = self.sent or sending
        return self.sent and not sending and bool(host.processes("reductio.gate"))

    def cut(self, host) -> None:
        host.cut()
        # Every process of the host, not only the gates: a gate's login shell forks for its .bashrc (pyenv init
        # here), and a child stopped while it still bore the gate's command line may since have exec'd another.
        host.signal(signal.SIGCONT, "")


def cut_during(network, job, host: int, moment, target: str, capsys, before=None):
    """Run the job, cut ``host`` at ``moment``, and check everything the issue asks."""
    c, data, expected = job
    output = Path("counts.tsv")
    if before:
        before(c, data)
    victim = network.hosts[host]
    run = Background(lambda: run_job(c, data, output))
    try:
        wait_until(lambda: moment(victim), 120, f"{moment.what} on host{host}", every=0.005)
    finally:
        moment.cut(victim)  # after a failed wait too: nothing stays paused (the job fixture heals)
    cut = time.monotonic()
    run.join(WITHIN + 30)
    assert not run.is_alive(), f"the head still runs {WITHIN + 30:g} s after host{host} was cut"
    assert isinstance(run.error, Exit) and run.error.code == 1, run.error
    assert run.ended - cut <= WITHIN, f"the head took {run.ended - cut:.1f} s to give up"
    assert f"host{host}" in run.error.message and "lost" in run.error.message, run.error.message
    for other in network.hosts:
        assert not (network.homes / f"host{other.index}" / "data" / target).exists(), f"{target} on host{other.index}"
    assert not output.exists()
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if f"host{host}: no report for" in line]
    assert progress, f"no progress line named host{host} as quiet before it was declared lost"
    assert "retrying" not in err, err  # a silent host already had dead_after to answer

    victim.heal()
    for each in network.hosts:  # while the head lives, it keeps a control session on the hosts it still reaches
        wait_until(lambda each=each: not (each.processes() if each is victim else steps_running(each)),
                   DEAD_AFTER + 10,
                   f"the dead job's reductio processes on host{each.index} to stop ({each.processes()})", every=0.2)
    end_run(c)  # as the head's exit does
    for each in network.hosts:
        wait_until(lambda each=each: not each.processes(), DEAD_AFTER + 10,
                   f"the head's sessions on host{each.index} to stop ({each.processes()})", every=0.2)
    capsys.readouterr()
    run_job(c, data, output)
    assert output.read_bytes() == expected
    return capsys.readouterr().out


def test_a_host_cut_off_mid_load_fails_the_load_and_a_rerun_is_exact(network, job, capsys):
    cut_during(network, job, 1, Running("reductio.worker receive"), "input", capsys)


def test_a_host_cut_off_mid_map_fails_the_step_and_a_rerun_skips_what_was_done(network, job, capsys):
    out = cut_during(network, job, 2, Running("reductio.worker map"), "pairs", capsys)
    assert "load: input is up to date; skipped" in out


def test_a_head_that_loses_its_route_to_a_host_mid_map_stops_within_dead_after_without_retrying(
        network, job, capsys):
    out = cut_during(network, job, 2, RunningCutFromHead("reductio.worker map"), "pairs", capsys)
    assert "load: input is up to date; skipped" in out


def test_a_head_that_loses_its_route_to_a_sender_mid_scatter_stops_within_dead_after(network, job, capsys):
    out = cut_during(network, job, 0, RunningCutFromHead("reductio.worker send"), "here", capsys)
    assert "map: pairs is up to date from input; skipped" in out


def test_a_head_that_loses_its_route_to_a_host_mid_merge_writes_no_output(network, job, capsys):
    out = cut_during(network, job, 0, RunningCutFromHead("reductio.worker cat"), "no-such-dataset", capsys)
    assert "reduce: counts is up to date from sorted; skipped" in out


def test_a_host_the_head_has_no_route_to_before_a_step_is_one_line_naming_it_never_retried(network, job, capsys):
    c, data, expected = job
    tasks.load(c, str(data), "input")
    end_run(c)  # a new head: the step must connect
    network.hosts[1].cut_from_head()
    started = time.monotonic()
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.identity", "input", "pairs")
    assert time.monotonic() - started <= 5, "a connect refused by the head's own kernel took its time"
    message = failure.value.message
    assert "host1" in message and "198.18.2.2:22" in message and "no route" in message, message
    assert "retrying" not in capsys.readouterr().err
    network.hosts[1].heal()
    run_job(c, data, Path("counts.tsv"))
    assert Path("counts.tsv").read_bytes() == expected


def test_a_host_cut_off_mid_scatter_as_a_sender(network, job, capsys):
    out = cut_during(network, job, 0, Running("reductio.worker send"), "here", capsys)
    assert "map: pairs is up to date from input; skipped" in out


def test_a_host_cut_off_mid_scatter_as_a_receiver(network, job, capsys):
    out = cut_during(network, job, 1, Running("reductio.gate"), "here", capsys,  # scatter's receive: the gate
                     before=lambda c, data: (tasks.load(c, str(data), "input"),
                                             tasks.map(c, "wordjobs.identity", "input", "pairs")))
    assert "map: pairs is up to date from input; skipped" in out


def test_a_host_cut_off_in_scatter_after_its_own_sending_while_it_still_receives(network, job, capsys):
    """Its send step has returned and waits for the verdict: the head hears it only by that step's beats."""
    out = cut_during(network, job, 1, OnlyReceiving(), "here", capsys,
                     before=lambda c, data: (tasks.load(c, str(data), "input"),
                                             tasks.map(c, "wordjobs.identity", "input", "pairs")))
    assert "map: pairs is up to date from input; skipped" in out


def test_workers_that_cannot_reach_each_other_fail_scatter_saying_which_while_the_head_hears_both(
        network, job, capsys):
    c, data, expected = job
    tasks.load(c, str(data), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    network.hosts[0].part_from(network.hosts[1])
    started = time.monotonic()
    with pytest.raises(Exit) as failure:
        tasks.scatter(c, "pairs", "here")
    assert time.monotonic() - started <= WITHIN
    message = failure.value.message
    assert "host0: sending to host1 (198.18.2.2:22) failed: host1 did not answer (" in message, message
    assert "host1: sending to host0 (198.18.1.2:22) failed: host0 did not answer (" in message, message
    assert "lost" not in message and "host2:" not in message, message  # the head hears all three
    for each in network.hosts:
        assert not (network.homes / f"host{each.index}" / "data" / "here").exists()
    network.heal_all()
    run_job(c, data, Path("counts.tsv"))
    assert Path("counts.tsv").read_bytes() == expected


def test_a_host_cut_off_mid_sort(network, job, capsys):
    out = cut_during(network, job, 2, Running("reductio.worker sort"), "sorted", capsys)
    assert "scatter: here is up to date from pairs; skipped" in out


def test_a_host_cut_off_mid_merge_writes_no_output(network, job, capsys):
    out = cut_during(network, job, 0, Running("reductio.worker cat"), "no-such-dataset", capsys)
    assert "reduce: counts is up to date from sorted; skipped" in out


def test_a_host_unreachable_before_a_step_fails_it_within_dead_after(network, job, capsys):
    c, data, expected = job
    tasks.load(c, str(data), "input")
    network.hosts[1].cut()
    started = time.monotonic()
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.identity", "input", "pairs")
    assert time.monotonic() - started <= WITHIN
    assert "host1" in failure.value.message, failure.value.message
    assert "retrying" not in capsys.readouterr().err  # a silent host already had dead_after to answer
    network.hosts[1].heal()
    run_job(c, data, Path("counts.tsv"))
    assert Path("counts.tsv").read_bytes() == expected


def test_a_proxyjump_gateway_cut_mid_load_loses_the_worker_behind_it_within_dead_after(network, isolated_home,
                                                                                      tmp_path, capsys):
    """host1 is reached only through host0 (ProxyJump); host0 is cut while host1 loads. Giving host1 up must not
    wait on the dead gateway: the step stops within dead_after and a few seconds, naming host1."""
    gateway, behind, direct = network.hosts
    ssh = isolated_home / ".ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "known_hosts").write_text(network.known_hosts())
    (ssh / "config").write_text(
        f"Host {behind.address}\n    ProxyJump {gateway.address}\n"
        f"Host {gateway.address}\n    IdentityFile {network.user_key}\n")
    Path("workers.cfg").write_text("".join(  # host0 is only the gateway
        f"[host{h.index}]\nhost = {h.address}\nusername = {getpass.getuser()}\nkey_filename = {network.user_key}\n"
        f"home = {network.homes / f'host{h.index}'}\nauthorized_keys = {network.authorized_keys}\n\n"
        for h in (behind, direct)))
    c = fabric_context(dead_after=DEAD_AFTER, progress_interval=0.5, retry_delay=0.2)
    tasks.setup(c)
    tasks.delete(c, "input")
    data = write_lines(tmp_path / "input.txt", [f"w{i:07d}\t{'v' * 100}" for i in range(240_000)])
    run = Background(lambda: tasks.load(c, str(data), "input"))  # the head writes through the gateway
    try:
        wait_until(lambda: behind.processes("reductio.worker receive"), 120, "the load to run on host1",
                   every=0.005)
    finally:
        gateway.cut()
    cut = time.monotonic()
    try:
        run.join(WITHIN + 30)
        assert not run.is_alive(), f"the head still runs {WITHIN + 30:g} s after the gateway was cut"
        assert isinstance(run.error, Exit) and run.error.code == 1, run.error
        assert run.ended - cut <= WITHIN, f"the head took {run.ended - cut:.1f} s to give host1 up"
        assert "host1" in run.error.message and "lost" in run.error.message, run.error.message
        assert "retrying" not in capsys.readouterr().err
    finally:
        network.heal_all()
        end_run(c)
