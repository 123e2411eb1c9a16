"""How long a worker step took, in wall and CPU seconds (worker side, standard library only)."""

from __future__ import annotations

import os
import time


class Clock:
    """When a step started, in wall and CPU seconds; CPU counts the children it waited for (sort, shares, ssh).

    A worker's CPU seconds beside its wall seconds tell a step slowed by
    a busy machine (same CPU, more wall) from one doing more work.
    """

    def __init__(self) -> None:
        self.wall, self.cpu = time.time(), _cpu_seconds()

    def counters(self) -> dict[str, float]:
        return {"seconds": round(time.time() - self.wall, 3), "cpu seconds": round(_cpu_seconds() - self.cpu, 3)}


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
