"""While a scatter runs, the cluster key delivers to a worker only what the head planned from each sender.

Three SSH workers, real sshd on loopback, the key setup authorized. The
sender ssh-2 is held before it sends anything (the test holds its source
version's folder, as a publish removing it would: every reader waits), so
ssh-1's attempt is open to senders and still lacks ssh-2's files: a file
planted now is what the old gate kept, and the real sender's own delivery
then failed on it or carried it to publish.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from test_gate import deliver, frame

from conftest import WORDJOBS, Background, make_context, write_lines
from reductio import tasks
from reductio.head import shuffle
from reductio.wire.gate_request import request

LINES = [f"k{i:06d}\t{'v' * 40}" for i in range(30_000)]


def token_line(token: str) -> bytes:
    return f"token {token}\n".encode()


def frame_claiming(name: str, data: bytes, sha256: str) -> bytes:
    """A file's frames whose end claims ``sha256``, whatever its bytes are."""
    return f"file {name} {len(data)}\n".encode() + data + f"end {name} {len(data)} {sha256} unsorted\n".encode()


def plants(case: str, tokens: list, name: str, real: bytes) -> list:
    """(stream, what the gate says) for each delivery of ``case``: tokenless first, as a key holder of the old
    protocol would send it, then with a sender's token; ``name`` and ``real`` are ssh-2's file for ssh-1."""
    other = bytes(reversed(real[:-1])) + b"\n"  # as long as the real one, other lines
    unknown = name.split(".")[0] + ".w00009"
    without = "a delivery without a sender's token"
    expects = "is not a file this worker expects from this sender"
    return {
        "same size, other bytes": [
            (frame(name, other), without),
            (token_line(tokens[2]) + frame(name, other), "is not the file the head expects"),
            (token_line(tokens[2]) + frame_claiming(name, other, hashlib.sha256(real).hexdigest()), "arrived damaged"),
        ],
        "another sender's token": [
            (frame(name, real), without),
            (token_line(tokens[0]) + frame(name, real), expects),
            (token_line(tokens[1]) + frame(name, real), "a token this attempt's permit does not hold"),
            (token_line(secrets.token_hex(32)) + frame(name, real), "a token this attempt's permit does not hold"),
        ],
        "a file no sender has": [
            (frame(unknown, real), without),
            (token_line(tokens[2]) + frame(unknown, real), expects),
            (token_line(tokens[0]) + frame(unknown, real), expects),
        ],
        "more bytes": [
            (frame(name, real + b"k\tmore\n"), without),
            (token_line(tokens[2]) + frame(name, real + b"k\tmore\n"), f"more bytes of {name} than the {len(real):,}"),
        ],
        "a second copy": [
            (frame(name, real) + frame(name, real), without),
            (token_line(tokens[2]) + frame(name, real) + frame(name, real), f"a second copy of {name}"),
        ],
    }[case]


def kept(folder: Path) -> list:
    """The files a receive kept in an attempt folder (not those still arriving)."""
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))


@pytest.mark.parametrize("case", ["same size, other bytes", "another sender's token", "a file no sender has",
                                  "more bytes", "a second copy"])
def test_a_delivery_the_head_did_not_plan_is_refused_in_one_line_and_the_scatter_is_exact(
        case, ssh_workers, sshd_cluster, tmp_path, monkeypatch):
    ssh_workers(3)
    c = make_context(project=WORDJOBS)
    tasks.setup(c)
    tasks.load(c, str(write_lines(tmp_path / "in.txt", LINES)), "input")
    tasks.map(c, "wordjobs.identity", "input", "pairs")
    homes = [sshd_cluster.homes / f"ssh-{i}" for i in range(3)]
    key = homes[0] / "cluster_key"
    version = (homes[2] / "data" / "pairs").resolve()
    (name,) = [n for n in json.loads((version / "_SUCCESS").read_text())["files"] if n.startswith("p00001.")]
    real = (version / name).read_bytes()
    tokens = []

    def recording(nbytes=None):  # the head's own tokens, as it makes them: one per worker, in order
        tokens.append(secrets.token_hex(nbytes))
        return tokens[-1]

    monkeypatch.setattr(shuffle, "secrets", types.SimpleNamespace(token_hex=recording), raising=False)
    log = homes[1] / "logs" / "gate.log"
    logged = log.read_text().count("failed") if log.exists() else 0
    held = os.open(version, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # ssh-2's sender waits for its source: it opens its attempt, sends nothing
    try:
        running = Background(lambda: tasks.scatter(c, "pairs", "here"))
        deadline, opening = time.monotonic() + 120, None
        while opening is None and running.ended is None and time.monotonic() < deadline:
            opening = next((path for path in (homes[1] / "tmp").glob("*.gate") if (path / "expect").exists()), None)
            time.sleep(0.05)
        assert opening is not None, running.error
        attempt = opening.name[:-len(".gate")]
        arrived = homes[1] / "tmp" / attempt
        mine_and_ssh0s = ["p00001.w00000", "p00001.w00001"]  # ssh-1's own file, linked; ssh-0's, delivered
        while kept(arrived) != mine_and_ssh0s and running.ended is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kept(arrived) == mine_and_ssh0s, running.error
        permit = (opening / "expect").read_text()
        for token in tokens:  # the permit holds what the tokens hash to, never a token
            assert token not in permit
        if tokens:
            assert f"{hashlib.sha256(tokens[2].encode()).hexdigest()} {name} {len(real)} " in permit
        for stream, says in plants(case, tokens or [secrets.token_hex(32)] * 3, name, real):
            done = deliver(key, sshd_cluster, 1, request(attempt, 30, str(homes[1]), 10 ** 9), stream)
            assert done.returncode == 1 and says.encode() in done.stderr, (says, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1 and str(homes[1]).encode() not in done.stderr
            found = sorted(path.name for path in arrived.iterdir())  # a refused delivery leaves no partial file
            assert found == mine_and_ssh0s or (case == "a second copy" and found == sorted([*mine_and_ssh0s, name]))
            if name in found:  # a second copy's first: whole, and the very bytes the head planned
                assert (arrived / name).read_bytes() == real
        assert running.ended is None, running.error
        for pid in os.listdir("/proc"):  # tokens reach senders on stdin: no command line shows one
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert not any(token.encode() in cmdline for token in tokens)
    finally:
        os.close(held)
    running.join(180)
    assert running.error is None, running.error
    assert log.read_text().count("failed") >= logged + len(plants(case, [""] * 3, name, real))
    published = (homes[1] / "data" / "here").resolve()
    assert sorted(json.loads((published / "_SUCCESS").read_text())["files"]) == [f"p00001.w0000{i}" for i in range(3)]
    assert (published / name).read_bytes() == real
    tasks.merge(c, "here", str(tmp_path / "here.tsv"))
    assert sorted((tmp_path / "here.tsv").read_text().splitlines()) == sorted(LINES)


def gate(home: Path, attempt: str, dead_after: float = 1, **popen) -> subprocess.Popen:
    """The gate as sshd runs it for the cluster key, asked for a receive into ``attempt`` of ``home``."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, SSH_ORIGINAL_COMMAND=request(attempt, dead_after, str(home), 0),
               SSH_CLIENT="127.0.0.9 1 22")
    return subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r});"
                             f" from reductio.gate import main; sys.exit(main([{str(home)!r}]))"],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **popen)


def test_one_delivery_per_token_at_a_time_and_a_retry_brings_only_the_same_bytes(tmp_path):
    home, attempt, token = tmp_path / "home", "20261207T170000-0000cafe", secrets.token_hex(32)
    for folder in ("data", "tmp"):
        (home / folder).mkdir(parents=True)
    data = b"a\t1\n" * 1000
    sha256 = hashlib.sha256(data).hexdigest()
    permit = [[hashlib.sha256(token.encode()).hexdigest(), "p00001.w00000", len(data), sha256]]
    root = str(Path(__file__).resolve().parent.parent)
    holder = subprocess.Popen(  # a running scatter step holding its attempt open with the head's permit
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); from reductio.worker.receiving import"
                               f" open_to_senders; open_to_senders({str(home)!r}, {attempt!r}, {permit!r});"
                               " print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = None
    try:
        assert holder.stdout.readline() == "open\n"
        first = gate(home, attempt, dead_after=120)  # a sender still sending; the second waits 5 s for it
        first.stdin.write(token_line(token) + f"file p00001.w00000 {len(data)}\n".encode() + data[:100])
        first.stdin.flush()
        partial = home / "tmp" / attempt / ".p00001.w00000.part"
        deadline = time.monotonic() + 30
        while not partial.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert partial.exists(), first.stderr.read()
        second = gate(home, attempt)
        _, said = second.communicate(token_line(token) + frame("p00001.w00000", data), timeout=60)
        assert second.returncode == 1 and b"another delivery with this sender's token is running" in said, said
        first.stdin.write(data[100:] + f"end p00001.w00000 {len(data)} {sha256} unsorted\n".encode())
        _, said = first.communicate(timeout=60)
        assert first.returncode == 0, said
        retry = gate(home, attempt)  # the sender's retry after a cut: the same bytes, taken again
        _, said = retry.communicate(token_line(token) + frame("p00001.w00000", data), timeout=60)
        assert retry.returncode == 0, said
        other = gate(home, attempt)
        _, said = other.communicate(token_line(token) + frame("p00001.w00000", data[::-1]), timeout=60)
        assert other.returncode == 1 and b"is not the file the head expects" in said, said
        assert (home / "tmp" / attempt / "p00001.w00000").read_bytes() == data
        assert [p.name for p in (home / "tmp" / attempt).iterdir()] == ["p00001.w00000"]
        assert (home / "logs" / "gate.log").read_text().count("from 127.0.0.9 failed") == 2
    finally:
        if first is not None and first.poll() is None:
            first.kill()
            first.wait(30)
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
