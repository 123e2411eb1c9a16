"""A step's output on one worker: one file per partition, in the attempt folder.

Each formatted line goes to the partition that owns its key. Lines are
gathered per partition and written in batches, hashed on the way (SHA-256,
checked wherever the file travels); the files record whether their lines
came out sorted, so merge can skip a sort it does not need.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Dict, Iterable

from reductio.store import file_facts, partition_file

_BATCH = 8192  # lines held over all partitions before they are written


class PartitionedOutput:
    """Write lines into ``partitions`` files named for ``origin`` inside ``folder``."""

    def __init__(self, folder: Path, partitions: int, origin: str) -> None:
        self.paths = [folder / partition_file(p, origin) for p in range(partitions)]
        self.files = [open(path, "wb") for path in self.paths]
        self.digests = [hashlib.sha256() for _ in range(partitions)]
        self.batches = [[] for _ in range(partitions)]
        self.lines = [0] * partitions
        self.sorted = [True] * partitions
        self.last = [b""] * partitions
        self.tracking = True

    def write_all(self, lines: Iterable[str]) -> None:
        """Route every line to its partition: the hot loop of map and reduce.

        Each line is encoded once; its key's bytes choose the partition
        (the same CRC-32 as partition.partition_of, inlined for speed).
        """
        partitions = len(self.files)
        crc32 = zlib.crc32
        appends = [batch.append for batch in self.batches]
        pending = 0
        for line in lines:
            data = line.encode("utf-8")
            p = crc32(data[: data.find(b"\t")]) % partitions if partitions > 1 else 0
            appends[p](data)
            if self.tracking:
                self._track(p, data)
            pending += 1
            if pending >= _BATCH:
                self._flush_all()
                pending = 0

    def _track(self, p: int, data: bytes) -> None:
        """Keep note of whether partition p is still in sort's order (bytes, without the LF)."""
        if self.sorted[p]:
            if data[:-1] < self.last[p]:
                self.sorted[p] = False
                self.tracking = any(self.sorted)
            self.last[p] = data[:-1]

    def _flush_all(self) -> None:
        for p in range(len(self.files)):
            self._flush(p)

    def _flush(self, p: int) -> None:
        batch = self.batches[p]
        if batch:
            data = b"".join(batch)
            self.files[p].write(data)
            self.digests[p].update(data)
            self.lines[p] += len(batch)
            batch.clear()

    def close(self) -> Dict[str, dict]:
        """Flush and close every file; return the marker facts for each."""
        for p, out in enumerate(self.files):
            self._flush(p)
            out.close()
        return {
            path.name: file_facts(path, self.lines[p], self.digests[p].hexdigest(), self.sorted[p])
            for p, path in enumerate(self.paths)
        }

    def abandon(self) -> None:
        """Close without caring about the files: the attempt is being discarded."""
        for out in self.files:
            out.close()
