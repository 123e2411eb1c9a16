"""What one command costs on each SSH worker, measured by ``setup``: a slow login shell costs every scatter
connection, and nothing else would tell the user why scatter is slow.

Every command ssh starts runs the worker account's shell first, with its startup files (bash reads
``~/.bashrc`` for ssh commands). A ``pyenv init`` or ``conda`` hook there adds a tenth of a second or more to
each command, and a scatter opens N - 1 connections per worker. Head side.
"""

from __future__ import annotations

import time
from typing import Dict, List

SLOW_COMMAND = 0.1  # seconds: a login shell that returns at once costs a few milliseconds
_TRIES = 2  # the quickest of these counts: one slow try may be the machine's, not the shell's


def measure(cluster, workers) -> Dict[str, float]:
    """The quickest of a few runs of ``true`` on each of ``workers``, in seconds, channel and shell included."""

    def quickest(worker) -> float:
        best = float("inf")
        for _ in range(_TRIES):
            started = time.monotonic()
            worker.run("true")
            best = min(best, time.monotonic() - started)
        return best

    return cluster.each("setup (timing one command)", quickest, workers)


def advice(costs: Dict[str, float], size: int, limit: float = SLOW_COMMAND) -> List[str]:
    """One line per worker whose command costs more than ``limit`` seconds, saying what to do."""
    return [f"{name}: one command costs {seconds:.3f} s there, most of it its login shell's start-up; scatter opens"
            f" {max(size - 1, 1)} connection(s) per worker, each paying it: make ~/.bashrc return at once when the"
            " shell is not interactive (README \"Real clusters over SSH\"; slow_command sets this limit)"
            for name, seconds in sorted(costs.items()) if seconds > limit]
