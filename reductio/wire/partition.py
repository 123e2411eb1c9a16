"""Which partition owns a key: a stable hash, the same in every process.

Python's ``hash()`` of a str is salted per process (PYTHONHASHSEED), so two
workers would disagree on where a key belongs; CRC-32 of the UTF-8 bytes
is fixed, fast (zlib, in C) and spreads keys evenly enough for a few workers.
"""

from __future__ import annotations

import zlib


def partition_of(key: str, partitions: int) -> int:
    """The index in ``range(partitions)`` of the partition that owns ``key``."""
    return zlib.crc32(key.encode("utf-8")) % partitions
