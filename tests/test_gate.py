"""The cluster key can do nothing but deliver scatter files: real sshd, real ssh, the key setup authorized."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WORDJOBS, make_context, write_lines
from reductio import tasks
from reductio.gate import COMMENT, Refused, _granted, request, result_line
from reductio.protocol import RESULT, Reply

HOMES = ["/srv/reductio/a", "/srv/reductio/b", "/srv/reductio/with space"]
ATTEMPT = "20261202T040135-2f3c96b7"
RECEIVE = {"attempt": ATTEMPT, "dead_after": 30.0, "home": "/srv/reductio/b"}


def test_the_gate_grants_exactly_scatters_receive_into_a_home_of_its_line():
    assert _granted(request(ATTEMPT, 30, "/srv/reductio/b"), HOMES) == RECEIVE
    assert _granted(f"reductio-receive {ATTEMPT} 30 /srv/reductio/b", HOMES) == RECEIVE
    assert _granted(request(ATTEMPT, 2.5, "/srv/reductio/b/"), HOMES) == dict(RECEIVE, home="/srv/reductio/b/",
                                                                              dead_after=2.5)
    assert _granted(request(ATTEMPT, 30, "/srv/reductio/with space"), HOMES)["home"] == "/srv/reductio/with space"


@pytest.mark.parametrize("asked, why", [
    (None, "a login"),
    ("id", "not a receive"),
    ("sh -c id", "not a receive"),
    (f"reductio-send {ATTEMPT} 30 /srv/reductio/b", "not a receive"),
    (f"reductio-receive {ATTEMPT} 30", "not a receive"),
    (request(ATTEMPT, 30, "/srv/reductio/b") + " ; id", "a home this key does not serve"),
    (request(ATTEMPT, 30, "/srv/other"), "a home this key does not serve"),
    (request(ATTEMPT, 30, "/srv/reductio/a/../b/../../x"), "a home this key does not serve"),
    (request("../../etc", 30, "/srv/reductio/b"), "attempt"),
    (request("-x", 30, "/srv/reductio/b"), "attempt"),
    (f"reductio-receive {ATTEMPT} nan /srv/reductio/b", "dead_after"),
    (f"reductio-receive {ATTEMPT} -1 /srv/reductio/b", "dead_after"),
    (f"reductio-receive {ATTEMPT} 1e400 /srv/reductio/b", "dead_after"),
    (f"reductio-receive {ATTEMPT} soon /srv/reductio/b", "could not convert"),
    ("python -m reductio.worker receive '{\"attempt\": \"a\"}'", "not a receive"),  # the request before 2026-12
    ("x" * 70_000, "longer than"),
])
def test_the_gate_refuses_anything_else_saying_what(asked, why):
    with pytest.raises(Refused, match=why):
        _granted(asked, HOMES)


def test_the_gates_result_line_is_what_json_writes_and_what_a_sender_reads():
    files = {"p00001.w00002-1": {"bytes": 12, "lines": 3, "sha256": "ab" * 32, "sorted": True},
             "empty": {"bytes": 0, "lines": 0, "sha256": "cd" * 32, "sorted": False}}
    assert result_line(files) == RESULT + json.dumps({"files": files}) + "\n"
    reply = Reply()
    reply.feed(result_line(files).encode())
    reply.close()
    assert reply.outcome(0) == {"files": files}


def test_the_gate_and_its_receive_import_nothing_that_costs_more_than_the_receive():
    # Every scatter connection starts one: json (with re and enum), pathlib, shlex and the worker's own
    # modules doubled its CPU. Run as the forced command runs it (-I -S), the package found by hand.
    root = str(Path(__file__).resolve().parent.parent)
    probe = (f"import sys; sys.path.append({root!r}); import reductio.gate;"
             " print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in"
             " ('json', 're', 'enum', 'pathlib', 'shlex', 'shutil', 'threading', 'queue', 'runpy')"
             " or m in ('reductio.store', 'reductio.worker', 'reductio.protocol', 'reductio.heartbeat'))))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


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
    for asked in (["id"], ["sh", "-c", "id"], [request(ATTEMPT, 30, str(tmp_path))], ["x" * 70_000]):
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
    frame = b"file ../escaped 1\nx"
    argv = ["-p", str(sshd_cluster.daemons[1].port), f"{sshd_cluster.user}@127.0.0.1",
            request(ATTEMPT, 30, str(sshd_cluster.homes / "ssh-1"))]
    known = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    done = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                           "-o", f"UserKnownHostsFile={known}", *argv], input=frame, capture_output=True, timeout=30)
    assert done.returncode != 0 and b"escaped" in done.stderr, done.stderr
    assert not list(sshd_cluster.homes.glob("ssh-1/**/escaped"))
    shutil.rmtree(sshd_cluster.homes / "ssh-1" / "tmp" / ATTEMPT)  # as the head's discard would


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
    assert line.startswith('restrict,command="') and "from reductio.gate import main" in line
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
