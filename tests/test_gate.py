"""The cluster key can do nothing but deliver scatter files: real sshd, real ssh, the key setup authorized."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import WORDJOBS, make_context, write_lines
from reductio import tasks
from reductio.gate import COMMENT, Refused, _granted

HOMES = ["/srv/reductio/a", "/srv/reductio/b"]
RECEIVE = {"attempt": "20261202T040135-2f3c96b7", "head": {"beat": 1.0, "dead_after": 30, "stdin": "data"},
           "home": "/srv/reductio/b"}


def request(params: dict, words=("/srv/reductio/a/venv/bin/python", "-m", "reductio.worker", "receive")) -> str:
    return " ".join(list(words) + [f"'{json.dumps(params)}'"])


def test_the_gate_grants_exactly_scatters_receive_into_a_home_of_its_line():
    assert _granted(request(RECEIVE), HOMES) == RECEIVE
    assert _granted(request(dict(RECEIVE, home="/srv/reductio/b/")), HOMES)["home"] == "/srv/reductio/b/"


@pytest.mark.parametrize("asked, why", [
    (None, "a login"),
    ("id", "not a receive"),
    ("sh -c id", "not a receive"),
    (request(RECEIVE, ("python", "-m", "reductio.worker", "send")), "not a receive"),
    (request(RECEIVE) + " ; id", "not a receive"),
    (request(dict(RECEIVE, home="/srv/other")), "a home this key does not serve"),
    (request(dict(RECEIVE, home="/srv/reductio/a/../b/../../x")), "a home this key does not serve"),
    (request(dict(RECEIVE, attempt="../../etc")), "attempt"),
    (request(dict(RECEIVE, source="x")), "parameters other than a receive's"),
    (request(dict(RECEIVE, head={"beat": 1, "dead_after": 30, "stdin": "beats"})), "heartbeat settings"),
    ("python -m reductio.worker receive '{not json'", "not JSON"),
    ("python -m reductio.worker receive 'unbalanced", "does not parse"),
    ("x" * 70_000, "longer than"),
])
def test_the_gate_refuses_anything_else_saying_what(asked, why):
    with pytest.raises(Refused, match=why):
        _granted(asked, HOMES)


def ssh(key: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    known = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "ConnectTimeout=10", "-p", str(port), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def head_key() -> str:
    """The base64 of this head's cluster key, as setup authorized it."""
    return (Path(os.environ["HOME"]) / ".reductio" / "cluster_key.pub").read_text().split()[1]


def cluster_lines(sshd_cluster, key: str) -> list:
    """The authorized lines of one cluster key (the daemons share one file with other tests' keys)."""
    return [line for line in sshd_cluster.authorized_keys.read_text().splitlines()
            if line.endswith(COMMENT) and key in line.split()]


@pytest.fixture
def gated(ssh_workers, sshd_cluster, tmp_path):
    """Two SSH workers set up by reductio; the cluster key as a worker holds it."""
    ssh_workers(2)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    return c, sshd_cluster.homes / "ssh-0" / "cluster_key"


def test_with_the_cluster_key_no_command_shell_pty_forward_or_other_home_is_granted(gated, sshd_cluster, tmp_path):
    c, key = gated
    port = sshd_cluster.daemons[1].port
    user = f"{sshd_cluster.user}@127.0.0.1"
    for asked in (["id"], ["sh", "-c", "id"], [request(dict(RECEIVE, home=str(tmp_path)))], ["x" * 70_000]):
        done = ssh(key, port, user, *asked)
        assert done.returncode != 0 and "reductio gate: refused" in done.stderr, (asked, done.stderr)
        assert "uid=" not in done.stdout
    pty = ssh(key, port, "-t", "-t", user, "id")
    assert pty.returncode != 0 and "PTY allocation request failed" in pty.stderr and "uid=" not in pty.stdout
    forward = ssh(key, port, "-N", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:0:127.0.0.1:22", user)
    assert forward.returncode != 0, forward.stderr  # restrict: no port forwarding, so ssh gives up at once
    log = (sshd_cluster.homes / "ssh-1" / "logs" / "steps.log").read_text()
    assert "gate refused a request from 127.0.0.1: not a receive" in log
    mine = ssh(sshd_cluster.user_key, port, user, "id -u")  # the user's own login is as it was
    assert mine.returncode == 0 and mine.stdout.strip() == str(os.getuid())


def test_a_receive_naming_a_file_outside_its_attempt_is_refused_by_the_gated_receive(gated, sshd_cluster):
    c, key = gated
    params = dict(RECEIVE, home=str(sshd_cluster.homes / "ssh-1"))
    frame = json.dumps({"file": "../escaped", "bytes": 1}).encode() + b"\nx"
    argv = ["-p", str(sshd_cluster.daemons[1].port), f"{sshd_cluster.user}@127.0.0.1", request(params)]
    known = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    done = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                           "-o", f"UserKnownHostsFile={known}", *argv], input=frame, capture_output=True, timeout=30)
    assert done.returncode != 0 and b"escaped" in done.stderr, done.stderr
    assert not list(sshd_cluster.homes.glob("ssh-1/**/escaped"))
    shutil.rmtree(sshd_cluster.homes / "ssh-1" / "tmp" / RECEIVE["attempt"])  # as the head's discard would


def test_a_scatter_through_the_gate_delivers_and_setup_again_keeps_one_line(gated, sshd_cluster, tmp_path):
    c, key = gated
    keys = [f"k{i % 50}" for i in range(3000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"{k}\t1" for k in keys])), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.scatter(c, "pairs", "here")
    tasks.sort(c, "here", "sorted")
    tasks.reduce(c, "reductio.reducers.sum", "sorted", "counts")
    tasks.merge(c, "counts", str(tmp_path / "counts.tsv"))
    assert (tmp_path / "counts.tsv").read_text() == "".join(f"k{i}\t60\n" for i in sorted(range(50), key=str))
    (line,) = cluster_lines(sshd_cluster, head_key())
    assert line.startswith('restrict,command="') and "-m reductio.gate" in line
    tasks.setup(c)
    assert cluster_lines(sshd_cluster, head_key()) == [line]


def test_removing_the_head_key_and_running_setup_rotates_it_everywhere(gated, sshd_cluster, tmp_path):
    c, key = gated
    old, old_key = key.read_bytes(), head_key()
    (old_line,) = cluster_lines(sshd_cluster, old_key)
    on_head = Path(os.environ["HOME"]) / ".reductio" / "cluster_key"
    on_head.unlink()
    Path(str(on_head) + ".pub").unlink()
    (tmp_path / "old_key").write_bytes(old)
    (tmp_path / "old_key").chmod(0o600)
    tasks.setup(c)
    (new_line,) = cluster_lines(sshd_cluster, head_key())
    assert cluster_lines(sshd_cluster, old_key) == [] and new_line != old_line and key.read_bytes() != old
    port = sshd_cluster.daemons[1].port
    refused = ssh(tmp_path / "old_key", port, f"{sshd_cluster.user}@127.0.0.1", "id")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr, refused.stderr
    tasks.load(c, str(write_lines(tmp_path / "in.txt", [f"k{i}\t1" for i in range(500)])), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    tasks.scatter(c, "pairs", "here")  # with the new key
    tasks.merge(c, "here", str(tmp_path / "here.tsv"))
    assert len((tmp_path / "here.tsv").read_text().splitlines()) == 500
