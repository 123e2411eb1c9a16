"""The SSH workers as a user's machines are: Debian's stock sshd (MaxStartups 10:30:100), another account."""

from __future__ import annotations

import gc
import os
import subprocess
import time

import pytest
from invoke import Exit

from conftest import WORDJOBS, make_context
from reductio import tasks
from sshd import STOCK_CONFIG


def connections_to(port: int) -> int:
    """This machine's established TCP connections to ``port`` (the test's own daemon: only the head connects)."""
    listed = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"], capture_output=True,
                            text=True, timeout=30, check=True)
    return len(listed.stdout.splitlines())


def test_the_workers_are_another_account_behind_the_stock_sshd_config(ssh_workers, sshd_cluster):
    """As root the suite logs in as an account of its own, through the machine's own sshd_config."""
    assert os.geteuid() == 0, "run the suite as root: it makes the SSH workers' account (useradd)"
    ssh_workers(1)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    home = sshd_cluster.homes / "ssh-0"
    assert home.stat().st_uid != 0 and home.owner() == sshd_cluster.user
    config = sshd_cluster.daemons[0].config.read_text()
    assert config.endswith(STOCK_CONFIG.read_text()) and "StrictModes no" not in config


def test_a_refused_host_key_leaves_no_connection_open_on_the_workers_sshd(ssh_workers, sshd_cluster, isolated_home):
    """A connection left open before authentication holds one of sshd's MaxStartups slots for LoginGraceTime
    (120 s): ten of them and the stock sshd drops new connections at random, other users' too."""
    ssh_workers(1)
    (isolated_home / ".ssh" / "known_hosts").write_text("")  # the worker's host key is unknown
    port = sshd_cluster.daemons[0].port
    before = connections_to(port)
    with pytest.raises(Exit, match="is unknown"):
        tasks.status(make_context(project=WORDJOBS, retries=0))
    gc.collect()
    deadline = time.monotonic() + 10
    while connections_to(port) > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connections_to(port) == before, "the refused connections are still open, waiting to authenticate"
