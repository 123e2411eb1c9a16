"""The worker's half of liveness: it tells the head it is alive, and stops when the head falls silent.

A command started by the head gets ``head: {"beat": B, "dead_after": D,
"stdin": ...}`` in its parameters. Every B seconds it writes a protocol line
on stderr (its progress, or ``reductio-alive``), so the head can tell a busy
worker from a lost one. The head writes a byte on the command's stdin as
often (``stdin: "beats"``); a command that hears nothing for D seconds, or
sees its stdin close, stops at once with every process it started. A head
that drops off the network therefore leaves nothing running on the worker.
A command whose stdin carries data (``stdin: "data"``, ``receive``) checks
the silence where it reads instead (receiving.py). Lines other than beats
are messages: how the head tells a step that finished to publish its
attempt in the same session. Standard library only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from reductio.wire.protocol import ALIVE, PROGRESS, emit

#: What the step reports as its progress, when it has any: a callable giving {"done": n, "total": n}.
progress: Callable[[], dict] | None = None


def start(head: dict) -> None:
    """Begin beating and watching stdin as ``head`` says.

    ``stdin``: "beats" (the head's), "data" (checked where it is read), or
    "eof" (a share process, whose worker holds its stdin: only its closing counts).
    """
    if head["stdin"] != "eof":
        try:
            os.setpgid(0, 0)  # our own process group: stopping it stops sort, ssh and share processes too
        except PermissionError:  # a session leader (sshd's child) leads its group already
            pass
    threading.Thread(target=_beat, args=(float(head["beat"]),), daemon=True).start()
    if head["stdin"] in ("beats", "eof"):
        silence = float(head["dead_after"]) if head["stdin"] == "beats" else None
        threading.Thread(target=_watch, args=(silence,), daemon=True).start()


def _beat(every: float) -> None:
    while True:
        time.sleep(every)
        if progress is not None:
            emit(PROGRESS, progress())
        else:
            emit(ALIVE, {})


def _watch(silence: float | None) -> None:
    """Read stdin until it closes or stays silent for ``silence`` seconds; then stop everything.

    A beat is an empty line; any other line is a message for the step (``message()``).
    """
    pending = bytearray()
    while True:
        readable, _, _ = select.select([0], [], [], silence)
        if not readable:
            _stop(f"no word from the head for {silence:g} s")
        data = os.read(0, 1 << 16)  # raw reads: a buffered stdin would block interpreter shutdown
        if not data:
            _stop(None)
        start, end = 0, data.find(b"\n")
        while end >= 0:  # a long message arrives in many reads: each byte is looked at once
            pending += data[start:end]
            if pending:
                _messages.append(json.loads(pending))
                _arrived.release()
            pending.clear()
            start, end = end + 1, data.find(b"\n", end + 1)
        pending += data[start:]


# The head's messages as they arrive, one release each (a queue.Queue would import heapq for every command).
_messages: deque = deque()
_arrived = threading.Semaphore(0)


def message() -> dict:
    """The head's next message (a JSON line on stdin); the watcher stops us if the head goes silent first."""
    _arrived.acquire()
    return _messages.popleft()


def _stop(why: str | None) -> None:
    if why:
        try:
            sys.stderr.write(f"reductio: {why}; stopping\n")
            sys.stderr.flush()
        except OSError:
            pass
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)  # our children first, and us with them
    os._exit(3)
