"""HOME/logs/steps.log: one line per step a worker ran, for whoever looks at the worker later.

Written by hand rather than with logging's RotatingFileHandler: importing
logging.handlers cost a worker command 19 ms (socket, pickle, queue), and
every scatter connection starts one; for the same reason paths are strings
(layout.py), not pathlib. Rotated at 1 MB, three old files kept.

What the gate refuses goes to HOME/logs/gate.log instead (``refused``),
which is never rotated: past 1 MB further refusals are counted, not
written, so whoever holds the cluster key cannot push earlier lines of
either log away by asking for what it may not have.
"""

from __future__ import annotations

import os
import time

from reductio.errors import DatasetError
from reductio.wire.layout import LOGS, check_home

MAX_BYTES = 1 << 20
KEPT = 3


def log(params: dict, text: str) -> None:
    """Append ``text`` about the step of ``params`` to its home's steps.log, if it has a home."""
    path = _path(params, "steps.log")
    if path is None:
        return
    line = _line(params, text)
    try:
        if os.stat(path).st_size + len(line) > MAX_BYTES:
            _rotate(path)
    except FileNotFoundError:
        pass
    _append(path, line)


def refused(params: dict, text: str) -> None:
    """Append what the gate refused to the home's gate.log; once it holds MAX_BYTES, only count it (in
    gate.log.more), keeping the first refusals: the evidence of who started asking."""
    path = _path(params, "gate.log")
    if path is None:
        return
    line = _line(params, text[:2000])
    try:
        full = os.stat(path).st_size + len(line) > MAX_BYTES
    except FileNotFoundError:
        full = False
    if full:
        _append(path + ".more", b"+")  # a byte per refusal not written: its size is their count
    else:
        _append(path, line)


def _path(params: dict, name: str) -> str | None:
    """HOME/logs/NAME for the home of ``params``; None if it has no home."""
    try:
        root = check_home(params.get("home") or "")
    except DatasetError:  # no home: nowhere to log
        return None
    folder = os.path.join(root, LOGS)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    return os.path.join(folder, name)


def _line(params: dict, text: str) -> bytes:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {params.get('attempt', '-')} {text}\n".encode("utf-8", "replace")


def _append(path: str, line: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def _rotate(path: str) -> None:
    for index in range(KEPT - 1, 0, -1):
        if os.path.exists(f"{path}.{index}"):
            os.replace(f"{path}.{index}", f"{path}.{index + 1}")
    os.replace(path, f"{path}.1")
