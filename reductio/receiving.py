"""Every worker's ``receive``: a framed stream of files (framing.py) on stdin, written into an attempt.

The stream is every file one scatter sender has for this worker (through
the gate, gate.py), one shard of ``load`` or ``initialize``, or what the
head relays (``python -m reductio.worker receive``). Every scatter
connection starts one, so this module and what it imports keep clear of
json, re and pathlib, whose imports would cost more than the work.

The gate takes files only into an attempt that this worker's own scatter
step opened to senders (``open_to_senders``): beside the attempt folder,
``tmp/ATTEMPT.gate/`` says which partition's files may arrive, and the
step holds a lock on it while it runs. A folder no running step holds, or
a map's attempt, takes nothing from the gate. Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import time

from reductio import framing
from reductio.errors import DatasetError, ReductioError
from reductio.layout import GATE_OPENING, TMP, attempt_folder, check_attempt, check_home, hold_lock

EXPECT = "expect"  # in it: the prefix of every file name a sender may deliver, one line
MAX_NAME = 128  # characters of a file name through the gate: scatter's are p00001.w00002-3
OPEN_WAIT = (5.0, 60.0)  # seconds a gate waits for the step to open its attempt: dead_after, within these


def step_receive(params: dict) -> dict:
    """``receive`` as the head starts it (load, initialize, the head's relay): the worker's heartbeat runs."""
    return receive(params["home"], params["attempt"], (params.get("head") or {}).get("dead_after"))


def receive(home: str, attempt: str, dead_after: float | None) -> dict:
    """Take a framed stream of files on stdin into an attempt; a sender silent for ``dead_after`` s is gone."""
    folder = attempt_folder(home, attempt)
    _widen_pipe(0)
    return {"files": framing.receive(framing.Reader(lambda size: _read(0, size, dead_after)), folder)}


def receive_expected(home: str, attempt: str, dead_after: float, announced: int) -> dict:
    """The gate's receive: only into an attempt a running scatter step opened (waiting a little for it),
    only files of the partition it expects, and at most the ``announced`` bytes."""
    folder, prefix = _opened(home, attempt, dead_after)
    _widen_pipe(0)
    reader = _Expected(lambda size: _read(0, size, dead_after), folder, prefix, announced)
    return {"files": framing.receive(reader, folder)}


def open_to_senders(home: str, attempt: str, partition: int) -> None:
    """Open ``attempt`` to the gate for as long as this process (a scatter step) runs: senders may deliver
    files of ``partition`` into it. The opening goes when the process ends; a killed one's, with ``clean``."""
    folder = attempt_folder(home, attempt)
    opening = folder + GATE_OPENING
    try:
        os.mkdir(opening, 0o700)
    except FileExistsError:
        pass
    partial = os.path.join(opening, f".{EXPECT}.{os.getpid()}")
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as out:
        out.write(f"p{int(partition):05d}.\n")
    os.replace(partial, os.path.join(opening, EXPECT))
    hold_lock(opening)  # only now may the gate read it: a held opening is whole
    import atexit

    atexit.register(_close, opening)


def _close(opening: str) -> None:
    try:
        for name in os.listdir(opening):
            os.unlink(os.path.join(opening, name))
        os.rmdir(opening)
    except FileNotFoundError:  # the head discarded the attempt first (store.Home.discard)
        pass


def _opened(home: str, attempt: str, dead_after: float) -> tuple:
    """The attempt folder (held by this process from now on) and the expected prefix, once the step has
    opened it; an attempt not opened within OPEN_WAIT is refused."""
    folder = os.path.join(check_home(home), TMP, check_attempt(attempt))
    deadline = time.monotonic() + min(max(dead_after, OPEN_WAIT[0]), OPEN_WAIT[1])
    pause = 0.005
    while True:
        prefix = _expected_prefix(folder + GATE_OPENING)
        if prefix is not None:
            hold_lock(folder)
            return folder, prefix
        if time.monotonic() >= deadline:
            raise NotOpen(f"attempt {attempt} is not open to senders here: no running scatter step opened it")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class NotOpen(DatasetError):
    """A gate request into an attempt that no running scatter step opened."""


def _expected_prefix(opening: str) -> str | None:
    """The prefix a running step wrote into its opening; None if there is none or no running step holds it."""
    try:
        descriptor = os.open(opening, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None  # we could take it: no step holds it (closing lets it go again)
        except BlockingIOError:
            pass
        try:
            expect = os.open(EXPECT, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=descriptor)
        except OSError:
            return None
        with open(expect, "rb") as text:
            prefix = text.read(64).decode("ascii", "replace").strip()
    finally:
        os.close(descriptor)
    return prefix or None


class _Expected(framing.Reader):
    """Frames whose files are of the expected partition, ``announced`` bytes at most in all; a file that
    arrived whole already is replaced only by the same bytes (a sender's retry), never by others."""

    def __init__(self, read, folder: str, prefix: str, announced: int) -> None:
        super().__init__(read)
        self.folder, self.prefix, self.left, self.announced = folder, prefix, announced, announced

    def header(self) -> dict | None:
        header = super().header()
        if header is None or "file" not in header:
            return header
        name = header["file"]
        if len(name) > MAX_NAME:
            raise DatasetError(f"a file name of {len(name)} characters (at most {MAX_NAME})")
        if not name.startswith(self.prefix):
            raise DatasetError(f"{name!r} is not a file this worker expects (its partition's: {self.prefix}*)")
        self.left -= header.get("bytes", 0)
        if self.left < 0:
            raise DatasetError(f"more bytes than the {self.announced:,} the sender announced")
        if "end" in header and _digest(os.path.join(self.folder, name)) not in (None, header["end"]["sha256"]):
            raise DatasetError(f"{name} arrived whole already, with other bytes; not replaced")
        return header


def _digest(path: str) -> str | None:
    """The SHA-256 of a file already received, None if there is none."""
    import hashlib

    try:
        data = open(path, "rb")
    except FileNotFoundError:
        return None
    digest = hashlib.sha256()
    with data:
        for block in iter(lambda: data.read(framing.CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class SilentSender(ReductioError):
    """A data stdin fell silent for longer than dead_after."""


def _read(fd: int, size: int, dead_after: float | None) -> bytes:
    """Up to ``size`` bytes of a data stdin; a sender silent for dead_after seconds is an error."""
    if dead_after is not None:
        readable, _, _ = select.select([fd], [], [], float(dead_after))
        if not readable:
            raise SilentSender(f"the sender sent nothing for {float(dead_after):g} s (dead_after); it is gone")
    return os.read(fd, size)


def _widen_pipe(fd: int) -> None:
    """Let a pipe hold 1 MB, not 64 KB: sshd then hands data over in fewer, larger writes (a third faster here)."""
    if _F_SETPIPE_SZ is None:
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, 1 << 20)
    except OSError:  # not a pipe, or above the system's pipe-max-size: the default size still works
        pass


# Linux only; named in fcntl from Python 3.10.
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031 if sys.platform.startswith("linux") else None)
