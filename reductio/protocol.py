"""How a worker command is spelled, what it writes on stderr, and how that is read back.

A step runs as ``PYTHON -m reductio.worker STEP PARAMS_JSON``, every word
quoted for the worker's shell.

One JSON object per line, after a fixed prefix, so they survive any
transport (a pipe, an SSH channel) and mix safely with other stderr:

    reductio-result: {...}   what the step made (files, counters)
    reductio-error: {...}    a ReductioError, rebuilt on the head
    reductio-progress: {...} input lines done so far, and the total
"""

from __future__ import annotations

import json
import shlex
import signal
import sys

from reductio.errors import ReductioError

RESULT = "reductio-result: "
ERROR = "reductio-error: "
PROGRESS = "reductio-progress: "
_TAIL = 20


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


def parse_reply(stderr: str, exit_code: int) -> dict:
    """The result a worker command reported, or the error it reported, raised."""
    lines = stderr.splitlines()
    for line in reversed(lines):
        if line.startswith(ERROR):
            raise ReductioError.from_dict(json.loads(line[len(ERROR):]))
    if exit_code == 0:
        for line in reversed(lines):
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
    tail = [line for line in lines if not line.startswith((RESULT, PROGRESS))][-_TAIL:]
    last = tail[-1] if tail else "no output"
    if exit_code == 127:
        raise ReductioError(f"reductio is not installed there ({last}); run the setup task", "\n".join(tail))
    if exit_code < 0 or exit_code > 128:
        number = -exit_code if exit_code < 0 else exit_code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        raise ReductioError(f"the worker process was killed by {name}", "\n".join(tail))
    raise ReductioError(f"worker command failed (exit {exit_code}): {last}", "\n".join(tail))
