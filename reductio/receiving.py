"""Every worker's ``receive``: a framed stream of files (framing.py) on stdin, written into an attempt.

The stream is every file one scatter sender has for this worker (through
the gate, gate.py), one shard of ``load`` or ``initialize``, or what the
head relays (``python -m reductio.worker receive``). Every scatter
connection starts one, so this module and what it imports keep clear of
json, re and pathlib, whose imports would cost more than the work.
Standard library only.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys

from reductio import framing
from reductio.errors import ReductioError
from reductio.layout import attempt_folder


def step_receive(params: dict) -> dict:
    """``receive`` as the head starts it (load, initialize, the head's relay): the worker's heartbeat runs."""
    return receive(params["home"], params["attempt"], (params.get("head") or {}).get("dead_after"))


def receive(home: str, attempt: str, dead_after: float | None) -> dict:
    """Take a framed stream of files on stdin into an attempt; a sender silent for ``dead_after`` s is gone."""
    folder = attempt_folder(home, attempt)
    _widen_pipe(0)
    return {"files": framing.receive(framing.Reader(lambda size: _read(0, size, dead_after)), folder)}


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
