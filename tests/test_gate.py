"""The cluster key can do nothing but deliver scatter files: real sshd, real ssh, the key setup authorized."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import WORDJOBS, Background, make_context, write_lines
from reductio import tasks
from reductio.wire.gate_request import request, token_digest, token_line
from reductio.wire.protocol import RESULT, Reply
from reductio.worker import steplog
from reductio.worker.authorized_keys import COMMENT
from reductio.worker.gate import MAX_SESSIONS, Refused, _granted, result_line

HOMES = ["/srv/reductio/a", "/srv/reductio/b", "/srv/reductio/with space"]
ATTEMPT = "20261202T040135-2f3c96b7"
TOKEN = "5e" * 32  # a sender's token, as the head makes them
RECEIVE = {"attempt": ATTEMPT, "dead_after": 30.0, "home": "/srv/reductio/b", "bytes": 0}


def test_the_gate_grants_exactly_scatters_receive_into_a_home_of_its_line():
    assert _granted(request(ATTEMPT, 30, "/srv/reductio/b"), HOMES) == RECEIVE
    assert _granted(f"reductio-receive {ATTEMPT} 30 0 /srv/reductio/b", HOMES) == RECEIVE
    assert _granted(request(ATTEMPT, 30, "/srv/reductio/b", 1234), HOMES) == dict(RECEIVE, bytes=1234)
    assert _granted(request(ATTEMPT, 2.5, "/srv/reductio/b/"), HOMES) == dict(RECEIVE, home="/srv/reductio/b/",
                                                                              dead_after=2.5)
    assert _granted(request(ATTEMPT, 30, "/srv/reductio/with space"), HOMES)["home"] == "/srv/reductio/with space"


@pytest.mark.parametrize("asked, why", [
    (None, "a login"),
    ("id", "not a receive"),
    ("sh -c id", "not a receive"),
    (f"reductio-send {ATTEMPT} 30 0 /srv/reductio/b", "not a receive"),
    (f"reductio-receive {ATTEMPT} 30 0", "not a receive"),
    (f"reductio-receive {ATTEMPT} 30 /srv/reductio/b", "not a receive"),  # the request before the size
    (f"reductio-receive {ATTEMPT} 30 -1 /srv/reductio/b", "a size"),
    (f"reductio-receive {ATTEMPT} 30 1e9 /srv/reductio/b", "a size"),
    (f"reductio-receive {ATTEMPT} 30 {10 ** 20} /srv/reductio/b", "a size"),
    (f"reductio-receive {ATTEMPT} 86401 0 /srv/reductio/b", "dead_after"),
    (request(ATTEMPT, 30, "/srv/reductio/b") + " ; id", "a home this key does not serve"),
    (request(ATTEMPT, 30, "/srv/other"), "a home this key does not serve"),
    (request(ATTEMPT, 30, "/srv/reductio/a/../b/../../x"), "a home this key does not serve"),
    (request("../../etc", 30, "/srv/reductio/b"), "attempt"),
    (request("-x", 30, "/srv/reductio/b"), "attempt"),
    (f"reductio-receive {ATTEMPT} nan 0 /srv/reductio/b", "dead_after"),
    (f"reductio-receive {ATTEMPT} -1 0 /srv/reductio/b", "dead_after"),
    (f"reductio-receive {ATTEMPT} 1e400 0 /srv/reductio/b", "dead_after"),
    (f"reductio-receive {ATTEMPT} soon 0 /srv/reductio/b", "could not convert"),
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
             " or m in ('reductio.worker.store', 'reductio.worker.__main__', 'reductio.wire.protocol',"
             " 'reductio.worker.heartbeat'))))")
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
    log = (sshd_cluster.homes / "ssh-1" / "logs" / "gate.log").read_text()
    assert "gate refused a request from 127.0.0.1: not a receive" in log
    mine = ssh(sshd_cluster.user_key, port, user, "id -un")  # the user's own login is as it was
    assert mine.returncode == 0 and mine.stdout.strip() == sshd_cluster.user


def test_a_receive_naming_a_file_outside_its_attempt_is_refused_by_the_gated_receive(gated, sshd_cluster):
    c, key = gated
    with opened(sshd_cluster, sshd_cluster.homes / "ssh-1", ATTEMPT, [permitted(TOKEN, "p00001.w00000", b"x")]):
        done = deliver(key, sshd_cluster, 1, request(ATTEMPT, 30, str(sshd_cluster.homes / "ssh-1"), 1),
                       token_line(TOKEN) + b"file ../escaped 1\nx")
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


@contextlib.contextmanager
def opened(sshd_cluster, home: Path, attempt: str, permit: list):
    """A process holding ``attempt`` open to senders for what ``permit`` lists (``[TOKEN_SHA256, NAME, BYTES,
    SHA256]`` per file, as the head writes it), as a running scatter step does: the worker's own Python and
    account."""
    holder = subprocess.Popen(
        [str(home / "venv" / "bin" / "python"), "-c",
         "import sys; from reductio.worker.receiving import open_to_senders;"
         f" open_to_senders({str(home)!r}, {attempt!r}, {permit!r}); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **sshd_cluster.as_workers())
    try:
        assert holder.stdout.readline() == "open\n"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()


def permitted(token: str, name: str, data: bytes) -> list:
    """A permit's line for one file the sender holding ``token`` may deliver: what the head writes."""
    return [token_digest(token), name, len(data), hashlib.sha256(data).hexdigest()]


def deliver(key: Path, sshd_cluster, worker: int, asked: str, frames: bytes) -> subprocess.CompletedProcess:
    """What the gate of ``worker`` answers the cluster key's ``asked`` with ``frames`` on stdin."""
    known = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-p", str(sshd_cluster.daemons[worker].port),
            f"{sshd_cluster.user}@127.0.0.1", asked]
    return subprocess.run(argv, input=frames, capture_output=True, timeout=60)


def frame(name: str, data: bytes) -> bytes:
    return (f"file {name} {len(data)}\n".encode() + data
            + f"end {name} {len(data)} {hashlib.sha256(data).hexdigest()} unsorted\n".encode())


PLANTED = "20261202T040136-0badf00d"


def test_the_cluster_key_delivers_nothing_into_an_attempt_no_running_scatter_opened(gated, sshd_cluster):
    c, key = gated
    home = sshd_cluster.homes / "ssh-1"
    planted = frame("p00001.w00000", b"planted\tline\n")
    done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), len(planted)), planted)
    assert done.returncode == 1 and b"not open to senders" in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr and str(home).encode() not in done.stderr
    assert not (home / "tmp" / PLANTED).exists()
    (home / "tmp" / PLANTED).mkdir(mode=0o700)  # a map's attempt: its folder held by the running step
    sshd_cluster.give(home / "tmp" / PLANTED)
    holder = os.open(home / "tmp" / PLANTED, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_SH)
    try:
        done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), len(planted)), planted)
    finally:
        os.close(holder)
    assert done.returncode == 1 and b"not open to senders" in done.stderr, done.stderr
    assert list((home / "tmp" / PLANTED).iterdir()) == []
    with opened(sshd_cluster, home, PLANTED, [permitted(TOKEN, "p00001.w00000", b"planted\tline\n")]):
        pass  # the scatter step ended: its opening went with it
    done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), len(planted)), planted)
    assert done.returncode == 1 and b"not open to senders" in done.stderr, done.stderr
    assert list((home / "tmp" / PLANTED).iterdir()) == []
    shutil.rmtree(home / "tmp" / PLANTED)
    log = (home / "logs" / "gate.log").read_text()
    assert f"{PLANTED} gate receive from 127.0.0.1 failed" in log and "not open to senders" in log


def test_an_open_attempt_takes_only_the_files_the_head_permitted_that_sender_only_as_many_bytes(gated,
                                                                                                sshd_cluster):
    c, key = gated
    home = sshd_cluster.homes / "ssh-1"
    data = b"a\t1\n"
    ok = token_line(TOKEN) + frame("p00001.w00000", data)
    with opened(sshd_cluster, home, PLANTED, [permitted(TOKEN, "p00001.w00000", data)]):
        for frames, why in [
            (frame("p00001.w00000", data), b"a delivery without a sender's token"),
            (token_line("0" * 64) + frame("p00001.w00000", data), b"a token this attempt's permit does not hold"),
            (token_line(TOKEN) + frame("p00000.w00000", data), b"is not a file this worker expects"),
            (token_line(TOKEN) + frame("s00000.w00000", data), b"is not a file this worker expects"),
            (token_line(TOKEN) + frame("p00001.w00000", data + b"more\n"), b"more bytes of p00001.w00000 than the 4"),
            (token_line(TOKEN) + frame("p00001." + "x" * 248, data), b"a file name of 255 characters"),
        ]:
            done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), 100), frames)
            assert done.returncode == 1 and why in done.stderr, done.stderr
            assert b"Traceback" not in done.stderr and str(home).encode() not in done.stderr
            assert [p.name for p in (home / "tmp" / PLANTED).iterdir()] in ([], ["p00001.w00000"])
        done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), 100), ok)
        assert done.returncode == 0 and b'"p00001.w00000": {"bytes": 4' in done.stderr, done.stderr
        assert (home / "tmp" / PLANTED / "p00001.w00000").read_bytes() == data
        planted = token_line(TOKEN) + frame("p00001.w00000", b"b\t9\n")  # same name, same size: as a key holder
        done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), 100), planted)
        assert done.returncode == 1 and b"is not the file the head expects" in done.stderr, done.stderr
        done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), 100), ok)  # a sender's retry
        assert done.returncode == 0, done.stderr
        assert [p.name for p in (home / "tmp" / PLANTED).iterdir()] == ["p00001.w00000"]
        assert (home / "tmp" / PLANTED / "p00001.w00000").read_bytes() == data
    shutil.rmtree(home / "tmp" / PLANTED)


def test_no_more_than_max_sessions_gates_receive_into_a_home_at_once(gated, sshd_cluster):
    c, key = gated
    home = sshd_cluster.homes / "ssh-1"
    folder = home / "logs" / "gate-sessions"
    folder.mkdir(mode=0o700, exist_ok=True)
    sshd_cluster.give(folder)
    held = []
    try:
        for place in range(MAX_SESSIONS):  # each place held, as MAX_SESSIONS gates of the account hold them
            held.append(os.open(folder / str(place), os.O_RDWR | os.O_CREAT, 0o600))
            sshd_cluster.give(folder / str(place))
            fcntl.flock(held[-1], fcntl.LOCK_EX)
        done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), 0), b"")
        assert done.returncode == 1 and f"{MAX_SESSIONS} gates already receive".encode() in done.stderr, done.stderr
    finally:
        for descriptor in held:
            os.close(descriptor)
    done = deliver(key, sshd_cluster, 1, request(PLANTED, 1, str(home), 0), b"")
    assert b"not open to senders" in done.stderr, done.stderr  # a place again; then the attempt's turn


def test_refusals_go_to_a_gate_log_that_stops_growing_and_never_rotate_the_steps_log(tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    steplog.log({"home": str(home), "attempt": "A1"}, "map done in 1.0 s")
    for i in range(steplog.MAX_BYTES // 100 + 50):
        steplog.refused({"home": str(home)}, f"gate refused a request from 10.0.0.{i % 250}: " + "x" * 40)
    assert (home / "logs" / "steps.log").read_text().endswith("A1 map done in 1.0 s\n")
    assert not list((home / "logs").glob("*.1"))
    gate_log = home / "logs" / "gate.log"
    assert gate_log.stat().st_size <= steplog.MAX_BYTES
    assert "from 10.0.0.0:" in gate_log.read_text().splitlines()[0]
    assert (home / "logs" / "gate.log.more").stat().st_size > 0


def test_a_same_size_file_planted_into_a_running_scatter_is_refused_and_never_published(gated, sshd_cluster,
                                                                                         tmp_path):
    c, key = gated
    lines = [f"k{i:06d}\t{'v' * 40}" for i in range(60_000)]
    tasks.load(c, str(write_lines(tmp_path / "in.txt", lines)), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    home = sshd_cluster.homes / "ssh-1"
    before = {path.name for path in (home / "tmp").iterdir()}
    running = Background(lambda: tasks.scatter(c, "pairs", "here", force=True))
    target, deadline = None, time.monotonic() + 60
    while target is None and running.ended is None and time.monotonic() < deadline:
        # the file ssh-0 sends ssh-1, as soon as it arrived whole: planting after it is what could stick
        target = next((path / "p00001.w00000" for path in (home / "tmp").iterdir()
                       if path.name not in before and (path / "p00001.w00000").is_file()), None)
    assert target is not None, running.error
    planted = frame("p00001.w00000", b"Z" * (target.stat().st_size - 1) + b"\n")
    done = deliver(key, sshd_cluster, 1, request(target.parent.name, 1, str(home), 10 ** 9), planted)
    running.join(120)
    assert done.returncode == 1 and (b"arrived whole already, with other bytes" in done.stderr
                                     or b"not open to senders" in done.stderr), done.stderr
    assert running.error is None, running.error
    tasks.merge(c, "here", str(tmp_path / "here.tsv"))
    assert sorted((tmp_path / "here.tsv").read_text().splitlines()) == sorted(lines)
