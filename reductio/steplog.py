"""HOME/logs/steps.log: one line per step a worker ran, for whoever looks at the worker later.

Written by hand rather than with logging's RotatingFileHandler: importing
logging.handlers cost a worker command 19 ms (socket, pickle, queue), and
every scatter connection starts one. Rotated at 1 MB, three old files kept.
"""

from __future__ import annotations

import os
import time

from reductio.store import Home

MAX_BYTES = 1 << 20
KEPT = 3


def log(params: dict, text: str) -> None:
    """Append ``text`` about the step of ``params`` to its home's steps.log, if it has a home."""
    home = params.get("home")
    if not home or not Home(home).data.is_dir():
        return
    folder = Home(home).root / "logs"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / "steps.log"
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {params.get('attempt', '-')} {text}\n".encode("utf-8", "replace")
    try:
        if path.stat().st_size + len(line) > MAX_BYTES:
            _rotate(path)
    except FileNotFoundError:
        pass
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


def _rotate(path) -> None:
    for index in range(KEPT - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
