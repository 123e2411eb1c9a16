"""How a worker command is spelled, what it writes on stderr, and how that is read back.

A step runs as ``PYTHON -m reductio.worker STEP PARAMS_JSON``, every word
quoted for the worker's shell.

One JSON object per line, after a fixed prefix, so they survive any
transport (a pipe, an SSH channel) and mix safely with other stderr:

    reductio-result: {...}   what the step made (files, counters)
    reductio-error: {...}    a ReductioError, rebuilt on the head
    reductio-progress: {...} input lines done so far, and the total
    reductio-alive: {}       nothing new, but still here (a step with no progress to report)
    reductio-answer: {...}   a control session's answer to request "id": its "result" or "error"

The head reads a worker's stderr as it arrives through a ``Reply``: bounded
per line and in what it keeps, so a chatty or broken worker costs the head
linear time and a fixed amount of memory.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
from collections import deque

from reductio.errors import ReductioError, printable

RESULT = "reductio-result: "
ERROR = "reductio-error: "
PROGRESS = "reductio-progress: "
ALIVE = "reductio-alive: "
ANSWER = "reductio-answer: "
_TAIL = 20
MAX_REPLY_LINE = 16 << 20  # bytes: a result line listing every file of a big step fits many times over
_MAX_TAIL_LINE = 2000  # characters of an ordinary stderr line kept for error messages


def shell_path(path: str) -> str:
    """Quote a path for a worker's shell, keeping a leading ``~/`` meaning its home."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


def worker_command(python: str, step: str, params: dict) -> str:
    """The shell command running ``step``; ``python`` is already shell words."""
    payload = json.dumps(params, sort_keys=True)
    return f"{python} -m reductio.worker {step} {shlex.quote(payload)}"


def emit(prefix: str, payload: dict, stream=None) -> None:
    """Write one protocol line."""
    stream = stream or sys.stderr
    stream.write(prefix + json.dumps(payload) + "\n")
    stream.flush()


class Reply:
    """A worker command's stderr, read as it arrives: protocol lines picked out, a short tail of the rest kept.

    ``on_progress(done, total, status)`` is called for each progress line (``status``: what a command
    said of itself, or None), and
    ``on_progress(None, None)`` for each heartbeat. A line
    longer than MAX_REPLY_LINE is cut there and the rest of it skipped, so
    no worker output grows the head's memory without bound.
    """

    def __init__(self, on_progress=None, on_result=None) -> None:
        self.on_progress, self.on_result = on_progress, on_result
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
            else:
                kept = printable(line[:_MAX_TAIL_LINE])  # it may reach the terminal in an error
                self.tail.append(kept + (" [cut]" if cut or len(line) > _MAX_TAIL_LINE else ""))
        except (ValueError, KeyError, TypeError, RecursionError) as err:
            why = f"the worker sent a malformed reply line ({_why(err, cut)}): {line[:200]!r}"
            self.error = {"kind": "ReductioError", "message": why, "details": ""}

    def outcome(self, exit_code: int) -> dict:
        """The result the command reported, or its error raised as a ReductioError."""
        if self.error is not None:
            raise ReductioError.from_dict(self.error)
        if exit_code == 0 and self.result is not None:
            return self.result
        tail = list(self.tail)
        last = tail[-1] if tail else "no output"
        if exit_code == 127:
            raise ReductioError(f"reductio is not installed there ({last}); run the setup task", "\n".join(tail))
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
