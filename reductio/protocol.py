"""The lines a worker command writes on stderr, and how the head reads them back.

One JSON object per line, after a fixed prefix, so they survive any
transport (a pipe, an SSH channel) and mix safely with other stderr:

    reductio-result: {...}   what the step made (files, counters)
    reductio-error: {...}    a ReductioError, rebuilt on the head
"""

from __future__ import annotations

import json
import sys

from reductio.errors import ReductioError

RESULT = "reductio-result: "
ERROR = "reductio-error: "
_TAIL = 20


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
    tail = [line for line in lines if not line.startswith(RESULT)][-_TAIL:]
    last = tail[-1] if tail else "no output"
    raise ReductioError(f"worker command failed (exit {exit_code}): {last}", "\n".join(tail))
