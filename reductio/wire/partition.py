"""Which partition owns a key: a stable hash, the same in every process.

Python's ``hash()`` of a str is salted per process (PYTHONHASHSEED), so two
workers would disagree on where a key belongs; CRC-32 of the UTF-8 bytes
is fixed, fast (zlib, in C) and spreads keys evenly enough for a few workers.
A partition's data files are named after it (``p00001.ORIGIN``), as the
head's scatter plan and the workers' stores both read them.
"""

from __future__ import annotations

import re
import zlib

_PARTITION_FILE = re.compile(r"p(\d{5})\.")


def partition_of(key: str, partitions: int) -> int:
    """The index in ``range(partitions)`` of the partition that owns ``key``."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def partition_file(partition: int, origin: str) -> str:
    """The name of a data file holding one partition, written by ``origin``."""
    return f"p{partition:05d}.{origin}"


def partition_of_file(name: str):
    """The partition a data file holds, or None for an unpartitioned shard."""
    match = _PARTITION_FILE.match(name)
    return int(match.group(1)) if match else None
