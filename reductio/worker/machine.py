"""What a worker's machine offers one step: its cores, split among the cluster's workers on it (worker side)."""

from __future__ import annotations

import os


def cores_each(sharing) -> int:
    """This machine's usable cores over the ``sharing`` workers that run on it, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(sharing or 1))
