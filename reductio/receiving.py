"""Every worker's ``receive``: a framed stream of files (framing.py) on stdin, written into an attempt.

The stream is every file one sender has for this worker, one shard of
``load`` or ``initialize``, or what the head relays. Every scatter
connection starts one, so this module imports little. Standard library only.
"""

from __future__ import annotations

import fcntl
import sys

from reductio import framing, heartbeat
from reductio.store import Home


def step_receive(params: dict) -> dict:
    """Take a framed stream of files into an attempt (load, initialize, scatter, the head's relay)."""
    home = Home(params["home"])
    folder = home.attempt_dir(params["attempt"])
    _widen_pipe(0)
    return {"files": framing.receive(framing.Reader(lambda size: heartbeat.read(0, size)), folder)}


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
