"""Every worker's ``receive``: a framed stream of files (framing.py) on stdin, written into an attempt.

The stream is every file one scatter sender has for this worker (through
the gate, gate.py), one shard of ``load`` or ``initialize``, or what the
head relays (``python -m reductio.worker receive``). Every scatter
connection starts one, so this module and what it imports keep clear of
json, re and pathlib, whose imports would cost more than the work.

The gate takes files only into an attempt that this worker's own scatter
step opened to senders (``open_to_senders``): beside the attempt folder,
``tmp/ATTEMPT.gate/expect`` is the permit the head wrote through that step,
and the step holds a lock on it while it runs. The permit names, per
sender, the SHA-256 of a token the head gave that sender alone (on its
stdin) and each file it sends here with its size and SHA-256, all read
from the sender's own published marker before the step started. A gate
stream starts with its sender's token; it then takes only that sender's
files, each at most its permitted size, each kept only once its bytes
match the permitted SHA-256, one delivery per token at a time and each
file once per delivery. A folder no running step holds, or a map's
attempt, takes nothing from the gate. Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import time

from reductio.errors import DatasetError, ReductioError
from reductio.wire import framing
from reductio.wire.gate_request import TOKEN, TOKEN_HEX, is_hex, token_digest
from reductio.wire.layout import (
    GATE_OPENING,
    TMP,
    attempt_folder,
    check_attempt,
    check_file_name,
    check_home,
    hold_lock,
)

EXPECT = "expect"  # the permit: a line per file a sender may deliver, TOKEN_SHA256 NAME BYTES SHA256
MAX_PERMIT = 16 << 20  # bytes of a permit: a line is ~150 bytes, a sender's partition a few files
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


def receive_expected(home: str, attempt: str, dead_after: float) -> dict:
    """The gate's receive: only into an attempt a running scatter step opened (waiting a little for it), only
    from a sender whose token its permit holds, only that sender's files, each as the permit says."""
    folder, permit = _opened(home, attempt, dead_after)
    _widen_pipe(0)

    def read(size: int) -> bytes:
        return _read(0, size, dead_after)

    allowed = permit.allowed(_token(read), dead_after)
    return {"files": framing.receive(_Expected(read, allowed), folder)}


def open_to_senders(home: str, attempt: str, permit: list) -> None:
    """Open ``attempt`` to the gate for as long as this process (a scatter step) runs: senders may deliver
    what ``permit`` lists, ``[TOKEN_SHA256, NAME, BYTES, SHA256]`` per file (the head's, token_digest).
    The opening goes when the process ends; a killed one's, with ``clean`` or the head's discard."""
    lines = "".join(f"{_hex(digest)} {check_file_name(name)} {int(size)} {_hex(sha256)}\n"
                    for digest, name, size, sha256 in sorted(permit))
    folder = attempt_folder(home, attempt)
    opening = folder + GATE_OPENING
    try:
        os.mkdir(opening, 0o700)
    except FileExistsError:
        pass
    partial = os.path.join(opening, f".{EXPECT}.{os.getpid()}")
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "w") as out:
        out.write(lines)
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
    """The attempt folder (held by this process from now on) and its permit, once the step has opened it;
    an attempt not opened within OPEN_WAIT is refused."""
    folder = os.path.join(check_home(home), TMP, check_attempt(attempt))
    deadline = time.monotonic() + _wait(dead_after)
    pause = 0.005
    while True:
        permit = _permit(folder + GATE_OPENING)
        if permit is not None:
            hold_lock(folder)
            return folder, permit
        if time.monotonic() >= deadline:
            raise NotOpen(f"attempt {attempt} is not open to senders here: no running scatter step opened it")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _wait(dead_after: float) -> float:
    return min(max(dead_after, OPEN_WAIT[0]), OPEN_WAIT[1])


class NotOpen(DatasetError):
    """A gate request into an attempt that no running scatter step opened."""


def _permit(opening: str) -> "_Permit | None":
    """The permit a running step wrote into its opening; None if there is none or no running step holds it."""
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
        try:  # read and write: a delivery locks its token's line (_Permit.allowed)
            expect = os.open(EXPECT, os.O_RDWR | os.O_NOFOLLOW, dir_fd=descriptor)
        except OSError:
            return None
        return _Permit(expect)
    finally:
        os.close(descriptor)


class _Permit:
    """What the head permits into one attempt: per token's SHA-256, its sender's files, (bytes, SHA-256) each."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor, self.files, self.offsets = descriptor, {}, {}  # the descriptor stays open: its locks
        offset = 0
        text = os.read(descriptor, MAX_PERMIT + 1)
        if len(text) > MAX_PERMIT:
            raise DatasetError(f"a permit of more than {MAX_PERMIT:,} bytes")
        for line in text.decode("ascii", "replace").splitlines(keepends=True):
            try:
                digest, name, size, sha256 = line.split()
                self.files.setdefault(digest, {})[name] = (int(size), sha256)
            except ValueError:
                raise DatasetError("the attempt's permit is damaged") from None
            self.offsets.setdefault(digest, offset)
            offset += len(line)

    def allowed(self, token: str, dead_after: float) -> dict:
        """The files of the sender whose token this is, its deliveries one at a time; any other token is refused."""
        digest = token_digest(token)
        if digest not in self.files:
            raise DatasetError("a token this attempt's permit does not hold: no sender of this scatter delivers it")
        deadline = time.monotonic() + _wait(dead_after)  # a cut delivery's gate may still be ending
        while True:
            try:  # a lock on one byte of the permit, the first of this token's lines: one delivery per token
                fcntl.lockf(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.offsets[digest])
                return self.files[digest]
            except OSError:
                if time.monotonic() >= deadline:
                    raise DatasetError("another delivery with this sender's token is running") from None
                time.sleep(0.05)


def _token(read) -> str:
    """The sender's token: the stream's first line, exactly TOKEN, TOKEN_HEX hex digits and a newline."""
    size = len(TOKEN) + TOKEN_HEX + 1
    line = b""
    while len(line) < size:
        block = read(size - len(line))
        if not block:
            break
        line += block
    token = line[len(TOKEN):-1].decode("ascii", "replace")
    if not line.startswith(TOKEN) or not line.endswith(b"\n") or len(token) != TOKEN_HEX or not is_hex(token):
        raise DatasetError(f"a delivery without a sender's token: it starts {line[:40]!r}")
    return token


class _Expected(framing.Reader):
    """Frames of the files ``allowed`` (name: (bytes, SHA-256)) only: each at most its bytes, ending with its
    SHA-256 (framing checks the bytes against it before the file is kept), each once."""

    def __init__(self, read, allowed: dict) -> None:
        super().__init__(read)
        self.allowed, self.sizes, self.whole = allowed, {}, set()

    def header(self) -> dict | None:
        header = super().header()
        if header is None or "file" not in header:
            return header
        name = header["file"]
        if len(name) > MAX_NAME:
            raise DatasetError(f"a file name of {len(name)} characters (at most {MAX_NAME})")
        if name not in self.allowed:
            raise DatasetError(f"{name!r} is not a file this worker expects from this sender")
        if name in self.whole:
            raise DatasetError(f"a second copy of {name} in one delivery")
        size, sha256 = self.allowed[name]
        if "end" in header:
            if (header["end"]["bytes"], header["end"]["sha256"]) != (size, sha256):
                raise DatasetError(f"{name} is not the file the head expects: its size or SHA-256 differs;"
                                   " not kept")
            self.whole.add(name)
            return header
        self.sizes[name] = self.sizes.get(name, 0) + header["bytes"]
        if self.sizes[name] > size:
            raise DatasetError(f"more bytes of {name} than the {size:,} the head expects")
        return header


def _hex(text: str) -> str:
    if len(text) != TOKEN_HEX or not is_hex(text):
        raise DatasetError(f"not a SHA-256: {text[:80]!r}")
    return text


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
