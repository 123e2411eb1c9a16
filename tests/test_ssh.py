"""Every task on real SSH workers: sshd daemons on loopback started by the test suite."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from fabric import Config as FabricConfig
from invoke import Context, Exit

import programs
from conftest import SUPPORT, WORDJOBS, end_run, make_context, write_lines
from oracles import bigrams, count_table, merged_lines
from reductio import tasks

REPO = Path(__file__).resolve().parent.parent
WORDS = [f"{w}" for w in
         "listen silent enlist google banana stone tones notes onset apple paple Über über rübe".split()]


def bigram_table(words_path: Path) -> dict:
    """The example's table worked out in plain Python, not by its own mapper: a changed mapper shows too."""
    return {pair: str(count) for pair, count in bigrams(words_path.read_text(encoding="utf-8").splitlines()).items()}


def bigram_pairs(words_path: Path) -> Counter:
    """The lines the example's map writes, ``pair<TAB>1`` per pair of letters, counted."""
    counts = bigrams(words_path.read_text(encoding="utf-8").splitlines())
    return Counter({f"{pair}\t1": count for pair, count in counts.items()})


def read_table(path: Path) -> dict:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    return {key: value for key, value in rows}


def run_bigrams(c, words: Path, output: Path) -> dict:
    tasks.load(c, str(words), "words")
    tasks.map(c, "reductio.example.bigrams.letter_pairs", "words", "pairs")
    tasks.scatter(c, "pairs", "pairs-here")
    tasks.sort(c, "pairs-here", "pairs-sorted")
    tasks.reduce(c, "reductio.reducers.sum", "pairs-sorted", "counts")
    tasks.merge(c, "counts", str(output))
    return read_table(output)


@pytest.fixture
def words(tmp_path) -> Path:
    source = Path("/usr/share/dict/words")
    lines = source.read_text(encoding="utf-8").splitlines()[::7] if source.exists() else WORDS * 50
    return write_lines(tmp_path / "words.txt", lines + WORDS)


def test_bigrams_on_three_ssh_workers_match_an_independent_count_and_local_workers(ssh_workers, words, tmp_path):
    ssh_workers(3)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    over_ssh = run_bigrams(c, words, tmp_path / "ssh.tsv")
    assert over_ssh == bigram_table(words)
    os.remove("workers.cfg")
    local_context = make_context(2)
    tasks.setup(local_context)
    local = run_bigrams(local_context, words, tmp_path / "local.tsv")
    assert (tmp_path / "ssh.tsv").read_bytes() == (tmp_path / "local.tsv").read_bytes()
    assert over_ssh == local


def test_results_are_identical_on_one_two_and_three_ssh_workers(ssh_workers, words, tmp_path):
    outputs = []
    for count in (1, 2, 3):
        ssh_workers(count)
        c = make_context(project=WORDJOBS)
        tasks.setup(c)
        run_bigrams(c, words, tmp_path / f"out-{count}.tsv")
        outputs.append((tmp_path / f"out-{count}.tsv").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    assert merged_lines(tmp_path / "out-1.tsv") == count_table(bigrams(words.read_text(encoding="utf-8").splitlines()))


def test_anagram_classes_on_ssh_workers_match_a_single_process_computation(ssh_workers, words, tmp_path):
    ssh_workers(3)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(words), "words")
    tasks.map(c, "wordjobs.anagram_key", "words", "keyed")
    tasks.scatter(c, "keyed", "keyed-here")
    tasks.sort(c, "keyed-here", "keyed-sorted")
    tasks.reduce(c, "wordjobs.anagram_class", "keyed-sorted", "classes")
    tasks.merge(c, "classes", str(tmp_path / "classes.tsv"))

    expected = {}
    for word in words.read_text(encoding="utf-8").splitlines():
        if word.strip():
            expected.setdefault("".join(sorted(word.strip().lower())), set()).add(word.strip())
    expected = {k: " ".join(sorted(v)) for k, v in expected.items() if len(v) > 1}
    assert read_table(tmp_path / "classes.tsv") == expected
    assert expected["eilnst"] == "enlist listen silent"


def test_distribute_installs_the_project_into_each_worker_venv_and_skips_it_when_unchanged(
    ssh_workers, sshd_cluster, capsys
):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    for worker in ("ssh-0", "ssh-1"):
        venv_python = sshd_cluster.homes / worker / "venv" / "bin" / "python"
        found = subprocess.run([str(venv_python), "-c", "import wordjobs, reductio.worker; print(wordjobs.__file__)"],
                               capture_output=True, text=True, cwd="/", timeout=60)
        assert found.returncode == 0, found.stderr
        assert "site-packages" in found.stdout
        assert (sshd_cluster.homes / worker / "dist" / "project.digest").read_text().strip()
    capsys.readouterr()
    tasks.distribute(c)
    assert "wordjobs-0.1.tar.gz unchanged on every SSH worker" in capsys.readouterr().out


def test_mixed_local_and_ssh_workers_give_the_same_table(ssh_workers, words, tmp_path):
    ssh_workers(2, local=1)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    assert run_bigrams(c, words, tmp_path / "mixed.tsv") == bigram_table(words)


def test_a_worker_whose_sshd_is_down_fails_the_step_cleanly_and_a_rerun_succeeds(ssh_workers, sshd_cluster, words,
                                                                                  tmp_path):
    ssh_workers(3)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(words), "words")
    end_run(c)
    sshd_cluster.daemons[1].stop()
    with pytest.raises(Exit) as failure:
        tasks.map(c, "reductio.example.bigrams.letter_pairs", "words", "pairs-down")
    assert failure.value.code == 1
    assert "ssh-1" in failure.value.message
    assert "cannot reach 127.0.0.1" in failure.value.message
    assert "Traceback" not in failure.value.message
    sshd_cluster.daemons[1].start()
    for worker in ("ssh-0", "ssh-2"):
        assert not (sshd_cluster.homes / worker / "data" / "pairs-down").exists()
    tasks.map(c, "reductio.example.bigrams.letter_pairs", "words", "pairs-down")
    for worker in ("ssh-0", "ssh-1", "ssh-2"):
        assert (sshd_cluster.homes / worker / "data" / "pairs-down" / "_SUCCESS").exists()
    tasks.merge(c, "pairs-down", str(tmp_path / "pairs-down.tsv"))
    assert merged_lines(tmp_path / "pairs-down.tsv") == bigram_pairs(words)


def test_scatter_links_each_workers_own_partition_and_sends_only_the_others(ssh_workers, sshd_cluster, words, tmp_path):
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(words), "words")
    tasks.map(c, "reductio.example.bigrams.letter_pairs", "words", "pairs")
    tasks.scatter(c, "pairs", "pairs-here", force=True)
    for index in (0, 1):
        data = sshd_cluster.homes / f"ssh-{index}" / "data"
        own = sorted(path.name for path in (data / "pairs").glob(f"p{index:05d}.*"))
        other = sorted(path.name for path in (data / "pairs").glob(f"p{1 - index:05d}.*"))
        assert own and other
        for name in own:  # the same file, not a copy that went over SSH
            assert (data / "pairs-here" / name).stat().st_ino == (data / "pairs" / name).stat().st_ino
        for name in other:  # what the other worker sent it arrived as a file of its own
            arrived = sshd_cluster.homes / f"ssh-{1 - index}" / "data" / "pairs-here" / name
            assert arrived.read_bytes() == (data / "pairs" / name).read_bytes()
            assert arrived.stat().st_ino != (data / "pairs" / name).stat().st_ino
    tasks.merge(c, "pairs-here", str(tmp_path / "here.tsv"))
    assert merged_lines(tmp_path / "here.tsv") == bigram_pairs(words)


def test_a_mapper_raising_on_one_worker_names_it_and_publishes_the_target_nowhere(ssh_workers, sshd_cluster, tmp_path):
    ssh_workers(3)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    source = write_lines(tmp_path / "in.txt", [f"key{i}\tv" for i in range(300)] + ["boom\tv"])
    tasks.load(c, str(source), "booms")
    with pytest.raises(Exit) as failure:
        tasks.map(c, "wordjobs.raises_on_boom", "booms", "boomed")
    message = failure.value.message
    assert "map failed on 1 of 3 worker(s)" in message
    assert "no booms allowed" in message and "ValueError" in message
    assert "line " in message
    for worker in ("ssh-0", "ssh-1", "ssh-2"):
        home = sshd_cluster.homes / worker
        assert not (home / "data" / "boomed").exists()
        assert list((home / "tmp").iterdir()) == []


def test_an_unknown_host_key_is_refused_with_a_message_saying_so(ssh_workers, isolated_home):
    ssh_workers(1)
    (isolated_home / ".ssh" / "known_hosts").write_text("")
    with pytest.raises(Exit) as failure:
        tasks.status(make_context(project=WORDJOBS))
    assert "host key of [127.0.0.1]:" in failure.value.message and "unknown" in failure.value.message


def test_a_proxyjump_gateway_whose_host_key_is_unknown_is_refused_and_one_known_is_used(
        ssh_workers, sshd_cluster, isolated_home):
    ssh_workers(1)
    gateway, worker = sshd_cluster.daemons[0], sshd_cluster.daemons[1]
    Path("workers.cfg").write_text(
        f"[ssh-1]\nhost = localhost\nport = {worker.port}\nusername = {sshd_cluster.user}\n"
        f"key_filename = {sshd_cluster.user_key}\nhome = {sshd_cluster.homes / 'ssh-1'}\n"
        f"authorized_keys = {sshd_cluster.authorized_keys}\n")
    (isolated_home / ".ssh" / "config").write_text(
        f"Host localhost\n    ProxyJump {sshd_cluster.user}@127.0.0.1:{gateway.port}\n"
        f"Host 127.0.0.1\n    IdentityFile {sshd_cluster.user_key}\n")
    only_worker = worker.known_hosts_line().replace("127.0.0.1", "localhost")
    (isolated_home / ".ssh" / "known_hosts").write_text(only_worker)
    def context():  # Fabric's own config, as the reductio program uses: it reads ~/.ssh/config
        config = FabricConfig(overrides={"reductio": {}})
        config.set_project_location(str(WORDJOBS))
        return Context(config=config)

    with pytest.raises(Exit) as failure:
        tasks.status(context())
    assert f"host key of [127.0.0.1]:{gateway.port} is unknown" in failure.value.message, failure.value.message
    wrong = sshd_cluster.daemons[2].known_hosts_line().split(" ", 1)[1]  # another daemon's key: changed
    (isolated_home / ".ssh" / "known_hosts").write_text(only_worker + f"[127.0.0.1]:{gateway.port} {wrong}")
    with pytest.raises(Exit) as failure:
        tasks.status(context())
    assert (f"host key of [127.0.0.1]:{gateway.port}, the ProxyJump gateway to ssh-1, has CHANGED"
            in failure.value.message), failure.value.message
    (isolated_home / ".ssh" / "known_hosts").write_text(only_worker + gateway.known_hosts_line())
    tasks.setup(context())  # through the gateway, both keys checked
    tasks.status(context())


def test_a_changed_host_key_is_refused_with_a_message_saying_so(ssh_workers, sshd_cluster, isolated_home, tmp_path,
                                                                 capsys):
    ssh_workers(1)
    from sshd import keygen

    keygen(tmp_path / "other")
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    port = sshd_cluster.daemons[0].port
    (isolated_home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
    with pytest.raises(Exit) as failure:
        tasks.status(make_context(project=WORDJOBS, retry_delay=0.1))
    assert "CHANGED" in failure.value.message and "ssh-0" in failure.value.message
    assert f"ssh-keyscan -p {port} 127.0.0.1" in failure.value.message, failure.value.message
    assert "retrying" not in capsys.readouterr().err  # waiting mends no key: one line, once


def test_reductio_command_line_runs_the_example_on_the_ssh_cluster(ssh_workers, words, tmp_path, isolated_home):
    ssh_workers(2)
    done = programs.reductio("-f", str(REPO / "reductio" / "example" / "fabfile.py"), "setup", "bigrams", "--words",
                             str(words), "--output", str(tmp_path / "cli.tsv"),
                             env=dict(os.environ, HOME=str(isolated_home)))
    assert done.returncode == 0, done.stderr
    assert "ssh-0, ssh-1" in done.stdout
    assert read_table(tmp_path / "cli.tsv") == bigram_table(words)


def test_distribute_installs_dependencies_from_a_wheelhouse_on_ssh_workers(ssh_workers, sshd_cluster, tmp_path):
    from reductio.head import packaging

    wheelhouse = tmp_path / "wheels"
    packaging.build_wheel(packaging.build_sdist(SUPPORT / "tinydep", tmp_path / "sdist"), wheelhouse)
    ssh_workers(2)
    c = make_context(project=SUPPORT / "depjob", wheelhouse=str(wheelhouse))
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", ["quiet\t1", "calm\t2"])), "text")
    tasks.map(c, "depjob.shouted", "text", "loud")
    tasks.merge(c, "loud", str(tmp_path / "loud.tsv"))
    assert (tmp_path / "loud.tsv").read_text() == "CALM\t2\nQUIET\t1\n"


def test_a_key_the_worker_does_not_accept_is_one_line_naming_the_worker_and_the_key_never_retried(
        ssh_workers, tmp_path, capsys):
    from sshd import keygen

    config = ssh_workers(1)
    keygen(tmp_path / "stranger")
    config.write_text(config.read_text().replace(
        [line for line in config.read_text().splitlines() if line.startswith("key_filename")][0],
        f"key_filename = {tmp_path / 'stranger'}"))
    with pytest.raises(Exit) as failure:
        tasks.status(make_context(project=WORDJOBS, retry_delay=0.1))
    assert "ssh-0: authentication to 127.0.0.1:" in failure.value.message
    assert f"tried {tmp_path / 'stranger'}" in failure.value.message, failure.value.message
    assert "check key_filename or ssh-agent" in failure.value.message
    assert "Traceback" not in failure.value.message
    assert "retrying" not in capsys.readouterr().err


def test_an_account_with_no_key_at_all_is_told_so_in_one_line(ssh_workers, monkeypatch, capsys):
    config = ssh_workers(1)
    config.write_text("".join(line + "\n" for line in config.read_text().splitlines()
                              if not line.startswith("key_filename")))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(Exit) as failure:
        tasks.status(make_context(project=WORDJOBS, retry_delay=0.1))
    message = failure.value.message
    assert "ssh-0: authentication to 127.0.0.1:" in message and "no key at all" in message, message
    assert "retrying" not in capsys.readouterr().err


def test_the_head_offers_aes_gcm_first_and_still_reaches_a_worker_without_it(ssh_workers, sshd_cluster, tmp_path,
                                                                             isolated_home):
    from reductio.head.cluster import Cluster
    from sshd import Sshd

    ssh_workers(1)
    worker = Cluster.from_context(make_context(project=WORDJOBS)).workers[0]
    assert worker.connection().transport.remote_cipher == "aes128-gcm@openssh.com"

    older = Sshd(tmp_path, 0, sshd_cluster.authorized_keys)  # a server that offers AES-CTR only
    older.config.write_text(older.config.read_text() + "Ciphers aes128-ctr\n")
    older.start()
    try:
        with open(isolated_home / ".ssh" / "known_hosts", "a") as known:
            known.write(older.known_hosts_line())
        Path("workers.cfg").write_text(
            f"[older]\nhost = 127.0.0.1\nport = {older.port}\nusername = {sshd_cluster.user}\n"
            f"key_filename = {sshd_cluster.user_key}\nhome = {tmp_path / 'older-home'}\n")
        worker = Cluster.from_context(make_context(project=WORDJOBS)).workers[0]
        assert worker.connection().transport.remote_cipher == "aes128-ctr"
        assert worker.run("echo reached").stdout == "reached\n"
    finally:
        older.stop()


def test_a_second_job_in_the_same_process_with_other_settings_gets_connections_and_sessions_with_them(
        ssh_workers):
    import socket

    from reductio.head.cluster import Cluster

    ssh_workers(1)
    first = make_context(project=WORDJOBS, dead_after=2, progress_interval=2)
    tasks.setup(first)
    tasks.status(first)
    second = make_context(project=WORDJOBS, dead_after=120, progress_interval=2)
    tasks.status(second)
    for context, timeout, beat in ((first, 2000, 0.5), (second, 120_000, 2.0)):  # beat: min(interval, dead_after/4)
        worker = Cluster.from_context(context).workers[0]
        sock = worker.connection().transport.sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == timeout
        assert worker.session().command.beat == beat  # the head's beat on its control session


def test_workers_whose_port_and_user_come_only_from_ssh_config_are_pinned_and_scattered_to_as_reached(
        ssh_workers, sshd_cluster, isolated_home, words, tmp_path):
    from reductio.head.cluster import Cluster

    ssh_workers(2)
    cfg, ssh_config = [], []
    for i, daemon in enumerate(sshd_cluster.daemons[:2]):
        cfg.append(f"[ssh-{i}]\nhost = worker{i}\nhome = {sshd_cluster.homes / f'ssh-{i}'}\n"
                   f"authorized_keys = {sshd_cluster.authorized_keys}\n")
        ssh_config.append(f"Host worker{i}\n    HostName 127.0.0.1\n    Port {daemon.port}\n"
                          f"    User {sshd_cluster.user}\n    IdentityFile {sshd_cluster.user_key}\n")
    Path("workers.cfg").write_text("\n".join(cfg))
    (isolated_home / ".ssh" / "config").write_text("".join(ssh_config))
    config = FabricConfig(overrides={"reductio": {}})  # Fabric's own config, as the program's: it reads ~/.ssh/config
    config.set_project_location(str(WORDJOBS))
    c = Context(config=config)
    tasks.setup(c)
    for worker, daemon in zip(Cluster.from_context(c).workers, sshd_cluster.daemons):
        assert worker.host_key_line() == daemon.known_hosts_line()
        assert (worker.destination()["host"], worker.destination()["port"], worker.destination()["user"]) == (
            "127.0.0.1", daemon.port, sshd_cluster.user)
    assert run_bigrams(c, words, tmp_path / "aliased.tsv") == bigram_table(words)  # scatter reached each other


def _connections_to(port: int) -> int:
    """This machine's established TCP connections to ``port`` (the test's own daemon: only the head connects)."""
    listed = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"], capture_output=True,
                            text=True, timeout=30, check=True)
    return len(listed.stdout.splitlines())


@pytest.mark.parametrize("known_hosts", ["", "wrong"])
def test_a_refused_host_key_leaves_no_connection_open_on_the_workers_sshd(ssh_workers, sshd_cluster,
                                                                          isolated_home, known_hosts):
    """A connection left open before authentication holds one of sshd's MaxStartups slots for LoginGraceTime
    (Debian: 10 slots, 120 s): a few of them and a stock sshd drops new connections at random, other users' too."""
    ssh_workers(1)
    port = sshd_cluster.daemons[0].port
    if known_hosts == "wrong":  # another daemon's key under this one's name: a changed host key
        other = sshd_cluster.daemons[1].known_hosts_line().split(" ", 1)[1]
        known_hosts = f"[127.0.0.1]:{port} {other}"
    (isolated_home / ".ssh" / "known_hosts").write_text(known_hosts)
    before = _connections_to(port)
    with pytest.raises(Exit, match="unknown|CHANGED"):
        tasks.status(make_context(project=WORDJOBS))
    deadline = time.monotonic() + 10  # closing takes the transport's thread a moment
    while _connections_to(port) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _connections_to(port) == before, "the refused connection is still open, waiting to authenticate"


def test_setup_names_each_ssh_worker_whose_one_command_costs_more_than_slow_command(ssh_workers, capsys):
    """A slow login shell costs every scatter connection; setup says where, with the figure, and only there."""
    ssh_workers(2, local=1)
    capsys.readouterr()
    tasks.setup(make_context(slow_command=0))  # every command costs more than nothing: each SSH worker named
    said = [line for line in capsys.readouterr().out.splitlines() if "one command costs" in line]
    assert [line.split(":")[2].strip() for line in said] == ["ssh-0", "ssh-1"], said
    assert all(float(line.split("costs ")[1].split(" s")[0]) > 0 for line in said), said
    assert "scatter opens 2 connection(s) per worker" in said[0] and "~/.bashrc" in said[0]
    tasks.setup(make_context(slow_command=60))  # no shell is that slow
    assert "one command costs" not in capsys.readouterr().out
