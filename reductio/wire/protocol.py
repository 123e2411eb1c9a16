"""How a worker command is spelled, what it writes on stderr, and how that is read back.

A step runs as ``PYTHON -m reductio.worker STEP``, every word quoted for
the worker's shell. Its parameters (``env`` and all) never go on a command
line, where every local user reads them (``ps``): the head writes them first
on the command's stdin, as their length in bytes on a line of its own, then
the JSON object and a newline (``params_frame``), before whatever that stdin
carries next (the head's beats, or data).

The parameters carry a token, random and new for each command. Each of the
worker's own lines is that token, a space, a fixed prefix and one JSON object:

    TOKEN reductio-result: {...}   what the step made (files, counters)
    TOKEN reductio-error: {...}    a ReductioError, rebuilt on the head
    TOKEN reductio-progress: {...} input lines done so far, and the total
    TOKEN reductio-alive: {}       nothing new, but still here (a step with no progress to report)
    TOKEN reductio-answer: {...}   a control session's answer to request "id": its "result" or "error"

The user's code shares that stderr, and may write anything: a line without
its newline, bytes that are not UTF-8, a line that looks like ours. So each
of our lines starts on a line of its own (a newline first; empty lines mean
nothing) and goes out in one write, and the head takes for ours only what
follows the token, found wherever it is in a line: text cannot imitate a
token it never saw, nor hide one that follows it. Everything else is the
user's, kept as text for error messages. A command started without a token
(the gate's receive, which runs no user code) writes and is read with the
bare prefixes.

The head reads a worker's stderr as it arrives through a ``Reply``: bounded
per line and in what it keeps, so a chatty or broken worker costs the head
linear time and a fixed amount of memory.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import sys
import threading
from collections import deque

from reductio.errors import ReductioError, printable
from reductio.wire import own_code

RESULT = "reductio-result: "
ERROR = "reductio-error: "
PROGRESS = "reductio-progress: "
ALIVE = "reductio-alive: "
ANSWER = "reductio-answer: "
SESSION_STEPS = ("check", "publish", "discard", "delete", "status")  # what a control session answers
_PREFIXES = (RESULT, ERROR, PROGRESS, ALIVE, ANSWER)
_TAIL = 20
MAX_REPLY_LINE = 16 << 20  # bytes: a result line listing every file of a big step fits many times over
_MAX_TAIL_LINE = 2000  # characters of an ordinary stderr line kept for error messages
_OLDER_WORKER = "usage: python -m reductio.worker {"  # what one says of a step given the head's code digest


def shell_path(path: str) -> str:
    """Quote a path for a worker's shell, keeping a leading ``~/`` meaning its home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


class WorkerCommand(str):
    """The shell command running a step (what ``--debug`` shows), with what goes first on its stdin
    (``stdin``: the parameters) and the ``token`` its protocol lines carry."""

    stdin: bytes = b""
    token: "str | None" = None


def worker_command(python: str, step: str, params: dict) -> WorkerCommand:
    """The shell command running ``step``, its parameters for its stdin; ``python`` is already shell words."""
    command = WorkerCommand(f"{python} -m reductio.worker {shlex.quote(step)} {own_code.digest()}")
    command.token = new_token()
    command.stdin = params_frame(dict(params, token=command.token))
    return command


def new_token() -> str:
    """A token no user text can guess: 128 random bits."""
    return os.urandom(16).hex()


def params_frame(params: dict) -> bytes:
    """A command's parameters as they go first on its stdin: their length on a line, then the JSON and a newline."""
    payload = json.dumps(params, sort_keys=True).encode("utf-8") + b"\n"
    return b"%d\n" % len(payload) + payload


MAX_PARAMS = 256 << 20  # bytes of a parameters frame: far above any step's
_PARAMS_WAIT = 120.0  # seconds the worker waits for its parameters: the head writes them as it starts it


def read_params(fd: int = 0) -> dict:
    """The parameters the head wrote first on ``fd`` (``params_frame``), read to their last byte and no further,
    so the rest of the stream is left whole for whoever reads it next; ValueError if they are not there."""
    header = b""
    while not header.endswith(b"\n"):
        piece = _read_some(fd, 1)
        if not piece or len(header) > 20:
            raise ValueError("no parameters on stdin" if not header and not piece
                             else "stdin does not start with the parameters")
        header += piece
    if not header[:-1].isdigit() or int(header) > MAX_PARAMS:
        raise ValueError("stdin does not start with the parameters")
    left, chunks = int(header), []
    while left:
        piece = _read_some(fd, min(left, 1 << 20))
        if not piece:
            raise ValueError("stdin ended inside the parameters")
        chunks.append(piece)
        left -= len(piece)
    params = json.loads(b"".join(chunks))
    if not isinstance(params, dict):
        raise ValueError("the parameters are not a JSON object")
    return params


def _read_some(fd: int, size: int) -> bytes:
    readable, _, _ = select.select([fd], [], [], _PARAMS_WAIT)
    if not readable:
        raise ValueError(f"no parameters on stdin within {_PARAMS_WAIT:g} s")
    return os.read(fd, size)


_token: "str | None" = None  # this process's token (``use_token``), on each line it emits
_emitting = threading.Lock()


def use_token(token: "str | None") -> None:
    """Mark every protocol line this process emits from now on with ``token`` (the head's, from the parameters)."""
    global _token
    _token = token


def emit(prefix: str, payload: dict) -> None:
    """Write one protocol line on fd 2: on a line of its own, in one write (atomic on a pipe up to PIPE_BUF), after
    whatever the user's code left in sys.stderr's buffer."""
    line = f"\n{_token} {prefix}" if _token else f"\n{prefix}"
    data = (line + json.dumps(payload) + "\n").encode("utf-8")
    with _emitting:  # the heartbeat's thread and the step's
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # the user's code closed or replaced it: fd 2 is still ours
            pass
        view = memoryview(data)
        while view:
            view = view[os.write(2, view):]


class Reply:
    """A worker command's stderr, read as it arrives: protocol lines picked out, a short tail of the rest kept.

    ``on_progress(done, total, status)`` is called for each progress line (``status``: what a command
    said of itself, or None), and
    ``on_progress(None, None)`` for each heartbeat. A line
    longer than MAX_REPLY_LINE is cut there and the rest of it skipped, so
    no worker output grows the head's memory without bound.
    """

    def __init__(self, on_progress=None, on_result=None, token: "str | None" = None) -> None:
        self.on_progress, self.on_result = on_progress, on_result
        self._mark = f"{token} " if token else None  # None: the bare prefixes (a command run without a token)
        self.on_answer = None  # a control session's: called with each answer (session.py)
        self.result = self.error = None
        self.first = None  # the first result: a step held open for its verdict reports more than once
        self.results = 0  # how many results came
        self.tail: deque[str] = deque(maxlen=_TAIL)
        self._pending = bytearray()
        self._skipping = False  # inside a line already cut at MAX_REPLY_LINE

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            self._add(data[start:end])
            self._line()
            start = end + 1
        self._add(data[start:])

    def close(self) -> None:
        """The stream ended: a last line without its newline counts too."""
        if self._pending or self._skipping:
            self._line()

    def _add(self, piece: bytes) -> None:
        room = MAX_REPLY_LINE - len(self._pending)
        if len(piece) > room:
            piece, self._skipping = piece[:max(room, 0)], True
        self._pending += piece

    def _line(self) -> None:
        line = self._pending.decode("utf-8", "replace")
        cut, self._pending, self._skipping = self._skipping, bytearray(), False
        if self._mark is not None:
            at = line.find(self._mark)
            if at < 0:
                return self._text(line, cut)
            if at:  # the user's text left without its newline, before ours
                self._text(line[:at], False)
            line = line[at + len(self._mark):]
            if not line.startswith(_PREFIXES):
                return self._malformed(ValueError("no known prefix after the token"), line, cut)
        try:
            if line.startswith(RESULT):
                self.result = _payload(line, RESULT, cut)
                self.results += 1
                if self.first is None:
                    self.first = self.result
                if self.on_result is not None:
                    self.on_result()
            elif line.startswith(ERROR):
                self.error = _payload(line, ERROR, cut)
            elif line.startswith(PROGRESS):
                report = _payload(line, PROGRESS, cut)
                if self.on_progress is not None:
                    status = printable(str(report["status"])[:200]) if report.get("status") else None
                    self.on_progress(int(report["done"]), int(report["total"]), status)
            elif line.startswith(ANSWER) and self.on_answer is not None:
                self.on_answer(_payload(line, ANSWER, cut))
            elif line.startswith(ALIVE):
                if self.on_progress is not None:
                    self.on_progress(None, None)
            elif not line.startswith(ANSWER):
                self._text(line, cut)
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            self._malformed(err, line, cut)

    def _text(self, line: str, cut: bool) -> None:
        """Anything but a protocol line: the user's (or the worker's own) stderr, kept at the tail."""
        if line.endswith("\r") and not cut:  # a CR LF line end (ssh ends its messages so) is no part of the text
            line = line[:-1]
        if line or cut:  # an empty line is what starts each protocol line
            kept = printable(line[:_MAX_TAIL_LINE])  # it may reach the terminal in an error
            self.tail.append(kept + (" [cut]" if cut or len(line) > _MAX_TAIL_LINE else ""))

    def _malformed(self, err: Exception, line: str, cut: bool) -> None:
        why = f"the worker sent a malformed reply line ({_why(err, cut)}): {printable(repr(line[:200]))}"
        self.error = {"kind": "ReductioError", "message": why, "details": ""}
        if self.on_result is not None:  # no result will count now: whoever waits for one may stop waiting
            self.on_result()

    def outcome(self, exit_code: int, ended: "str | None" = None) -> dict:
        """The result the command reported, or its error raised as a ReductioError.

        ``ended``: how the command ended when its exit code cannot say (an SSH command killed by a signal this
        machine has no number for, or one that ended with no exit status at all).
        """
        if self.error is not None:
            raise ReductioError.from_dict(self.error)
        if exit_code == 0 and self.result is not None:
            return self.result
        tail = list(self.tail)
        last = tail[-1] if tail else "no output"
        if ended:
            raise ReductioError(f"the worker process {ended}", "\n".join(tail))
        if exit_code == 127:
            raise ReductioError(f"reductio is not installed there ({last}); run the setup task", "\n".join(tail))
        if exit_code == 2 and last.startswith(_OLDER_WORKER):  # a reductio from before own_code's check
            raise ReductioError(own_code.MISMATCH, "\n".join(tail))
        if exit_code < 0 or 128 < exit_code < 128 + signal.NSIG:  # a shell says 128 + N of a signal N
            number = -exit_code if exit_code < 0 else exit_code - 128
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            raise ReductioError(f"the worker process was killed by {name}", "\n".join(tail))
        raise ReductioError(f"worker command failed (exit {exit_code}): {last}", "\n".join(tail))


def _payload(line: str, prefix: str, cut: bool) -> dict:
    if cut:
        raise ValueError(f"longer than {MAX_REPLY_LINE:,} bytes")
    payload = json.loads(line[len(prefix):])
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    return payload


def _why(err: Exception, cut: bool) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err) if isinstance(err, ValueError) and cut else f"{type(err).__name__}: {err}"[:200]
