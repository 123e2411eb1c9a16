"""HOME/logs/steps.log: one line per step a worker ran, for whoever looks at the worker later.

Written by hand rather than with logging's RotatingFileHandler: importing
logging.handlers cost a worker command 19 ms (socket, pickle, queue), and
every scatter connection starts one; for the same reason paths are strings
(layout.py), not pathlib. Rotated at 1 MB, three old files kept.
"""

from __future__ import annotations

import os
import time

from reductio.errors import DatasetError
from reductio.layout import LOGS, check_home

MAX_BYTES = 1 << 20
KEPT = 3


def log(params: dict, text: str) -> None:
    """Append ``text`` about the step of ``params`` to its home's steps.log, if it has a home."""
    try:
        root = check_home(params.get("home") or "")
    except DatasetError:  # no home: nowhere to log
        return
    folder = os.path.join(root, LOGS)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    path = os.path.join(folder, "steps.log")
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {params.get('attempt', '-')} {text}\n".encode("utf-8", "replace")
    try:
        if os.stat(path).st_size + len(line) > MAX_BYTES:
            _rotate(path)
    except FileNotFoundError:
        pass
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
