"""The SSH workers as a user's machines are: Debian's stock sshd (MaxStartups 10:30:100), another account."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import mrjob.examples
import pytest

from conftest import WORDJOBS, make_context, reductio_program, skip_unless_root, write_lines
from ownership import TAG
from reductio import tasks
from reductio.worker.authorized_keys import COMMENT, _served
from sshd import STOCK_CONFIG, Account, Sshd, find_sshd

EXAMPLES = Path(mrjob.examples.__file__).parent


def test_the_workers_are_another_account_behind_the_stock_sshd_config(ssh_workers, sshd_cluster):
    """As root the suite logs in as an account of its own, through the machine's own sshd_config."""
    skip_unless_root("making the SSH workers' account (useradd)")
    ssh_workers(1)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    home = sshd_cluster.homes / "ssh-0"
    assert home.stat().st_uid != 0 and home.owner() == sshd_cluster.user
    config = sshd_cluster.daemons[0].config
    assert config.read_text().endswith(STOCK_CONFIG.read_text()) and "StrictModes no" not in config.read_text()
    effective = subprocess.run([find_sshd(), "-T", "-f", str(config)], capture_output=True, text=True, timeout=60)
    assert {"strictmodes yes", "usepam yes", "maxstartups 10:30:100", "maxsessions 10"} <= set(
        effective.stdout.splitlines()), effective.stderr


SLOW_LOGIN = "sleep 0.3  # a pyenv or conda hook, above the check for an interactive shell\n"
CHATTY = 'echo "Welcome to $(hostname), $USER"; echo "You have new mail." >&2\n'  # read by interactive shells only


@pytest.fixture(scope="module")
def machines(sshd_cluster, tmp_path_factory):
    """Twelve more stock sshds, and two more accounts made for the run, as other users' machines are: one
    whose login shell is slow (its ~/.bashrc sleeps before anything), one whose ~/.bashrc prints when the
    shell is interactive. Each account has only Debian's default files and the user's key."""
    skip_unless_root("making the SSH workers' accounts (useradd)")
    root = tmp_path_factory.mktemp("machines")
    slow, chatty = Account(f"rdx{TAG}s"), Account(f"rdx{TAG}p")
    daemons = [Sshd(root, i) for i in range(12)]
    try:
        for account, line, first in ((slow, SLOW_LOGIN, True), (chatty, CHATTY, False)):
            account.create(sshd_cluster.user_key.with_suffix(".pub"))
            bashrc = account.home / ".bashrc"
            bashrc.write_text(line + bashrc.read_text() if first else bashrc.read_text() + line)
        for daemon in daemons:
            daemon.start()
        yield daemons, slow, chatty
    finally:
        for daemon in daemons:
            daemon.stop()
        for account in (slow, chatty):
            account.remove()


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``reductio ARGV`` from the current folder, as a user runs it; what it printed, nothing of it from the
    interactive part of a ~/.bashrc."""
    done = subprocess.run(reductio_program(*argv), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"reductio {' '.join(argv)}: {done.stderr[-3000:]}"
    assert "Welcome to" not in done.stdout + done.stderr and "new mail" not in done.stdout + done.stderr
    return done


def connections_counted(output: str) -> int:
    """The total of the ``connections`` column in a step's summary table (its cells end under their names)."""
    lines = output.splitlines()
    header = next(line for line in lines if "connections" in line.split())
    end = header.index("connections") + len("connections")
    total = next(line for line in lines if line.split()[:1] == ["total"])
    return int(total[:end].split()[-1].replace(",", ""))


def dropped(daemons, since: dict) -> int:
    """Connections the daemons dropped for MaxStartups since ``since`` (their logs' sizes then)."""
    return sum((daemon.root / "sshd.log").read_bytes()[since[daemon.port]:].count(b"past MaxStartups")
               for daemon in daemons)


@pytest.mark.timeout(1200)
def test_every_command_from_an_empty_folder_on_twelve_stock_sshds_of_three_accounts(machines, sshd_cluster,
                                                                                  isolated_home, tmp_path):
    """Twelve workers named with -H, their homes each account's default ~/.reductio, run from a folder that
    holds nothing (no fabfile, no workers.cfg); two workers' users come only from ~/.ssh/config. A scatter
    over them all, each sender to every other at once: eleven connections at each sshd, more than stock
    MaxStartups (10) lets in unauthenticated, so a dropped one is tried again."""
    daemons, slow, chatty = machines
    ssh = isolated_home / ".ssh"
    ssh.mkdir(mode=0o700)
    for suffix in ("", ".pub"):
        shutil.copy(str(sshd_cluster.user_key) + suffix, ssh / f"id_ed25519{suffix}")  # as users keep theirs
    (ssh / "known_hosts").write_text("".join(daemon.known_hosts_line() for daemon in daemons))
    (ssh / "config").write_text(f"Host slow\n    HostName 127.0.0.1\n    Port {daemons[10].port}\n"
                                f"    User {slow.name}\nHost 127.0.0.1\n    User {chatty.name}\n")
    (isolated_home / ".fabric.yaml").write_text("reductio:\n  scatter_streams: 11\n")  # every destination at once
    hosts = ",".join([f"{sshd_cluster.user}@127.0.0.1:{daemon.port}" for daemon in daemons[:10]]
                     + ["slow", f"127.0.0.1:{daemons[11].port}"])
    folder = Path.cwd()
    assert list(folder.iterdir()) == []

    listing = run("--list", timeout=120)
    assert {"setup", "load", "map", "scatter", "mrjob", "status"} <= {line.split()[0] for line in
                                                                    listing.stdout.splitlines()[1:] if line.strip()}
    setup = run("-H", hosts, "setup")
    assert "12 worker(s) ready" in setup.stdout, setup.stdout
    assert re.search(r"setup: slow: one command costs 0\.[3-9]\d+ s there", setup.stdout), setup.stdout
    head_key = (isolated_home / ".reductio" / "cluster_key.pub").read_text().split()[1]
    for account, home in [(sshd_cluster.account, f".reductio/{daemons[0].port}"), (slow, ".reductio"),
                          (chatty, f".reductio/{daemons[11].port}")]:
        assert (account.home / home / "venv" / "bin" / "python").exists()
        assert (account.home / home).owner() == account.name
        lines = [line for line in (account.home / ".ssh" / "authorized_keys").read_text().splitlines()
                 if line.endswith(COMMENT) and head_key in line.split()]
        homes = {home for line in lines for _, home in _served(line)}
        assert len(lines) == 1 and homes == ({f"~/.reductio/{daemon.port}" for daemon in daemons[:10]}
                                             if account is sshd_cluster.account else {f"~/{home}"}), (account.name,
                                                                                                     homes)

    words = [f"w{(i * 7919) % 997}" for i in range(20_000)]
    write_lines(tmp_path / "words.txt", [" ".join(words[i:i + 5]) for i in range(0, len(words), 5)])
    run("-H", hosts, "load", str(tmp_path / "words.txt"), "input")
    run("-H", hosts, "map", "| tr -s ' ' '\\n'", "input", "pairs")
    logs = {daemon.port: (daemon.root / "sshd.log").stat().st_size for daemon in daemons}
    scatter = run("-H", hosts, "scatter", "pairs", "here")
    drops = dropped(daemons, logs)
    print(f"{drops} scatter connection(s) dropped past MaxStartups, each tried again")
    assert connections_counted(scatter.stdout) == 12 * 11 + drops, scatter.stdout
    run("-H", hosts, "merge", "here", str(tmp_path / "here.txt"))
    assert Counter((tmp_path / "here.txt").read_text().splitlines()) == Counter(words)

    job = run("-H", hosts, "mrjob", str(EXAMPLES / "mr_word_freq_count.py"), str(tmp_path / "words.txt"),
              "--output", str(tmp_path / "counts"))
    counted = Counter()
    for part in (tmp_path / "counts").glob("part-*"):
        for line in part.read_text().splitlines():
            key, value = line.split("\t")
            counted[json.loads(key)] += int(value)
    assert counted == Counter(words), job.stdout
    status = run("-H", hosts, "status")
    for name in ["slow", f"127.0.0.1:{daemons[11].port}", f"127.0.0.1:{daemons[0].port}"]:
        assert {"input", "pairs", "here"} <= {row.split()[1] for row in status.stdout.splitlines()
                                              if row.split()[:1] == [name]}, status.stdout
    assert list(folder.iterdir()) == [], "the commands wrote into the folder they ran in"
