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

_BATCH = 4096


class PartitionedOutput:
    """Write lines into ``partitions`` files named for ``origin`` inside ``folder``."""

    def __init__(self, folder: Path, partitions: int, origin: str) -> None:
        self.paths = [folder / partition_file(p, origin) for p in range(partitions)]
        self.files = [open(path, "wb") for path in self.paths]
        self.digests = [hashlib.sha256() for _ in range(partitions)]
        self.batches = [[] for _ in range(partitions)]
        self.lines = [0] * partitions
        self.sorted = [True] * partitions
        self.last = [""] * partitions

    def write_all(self, lines: Iterable[str]) -> None:
        """Route every line to its partition: the hot loop of map and reduce."""
        partitions = len(self.files)
        batches, last, is_sorted = self.batches, self.last, self.sorted
        for line in lines:
            if partitions == 1:
                p = 0
            else:
                p = zlib.crc32(line[: line.find("\t")].encode("utf-8")) % partitions
            if is_sorted[p]:  # compared without the LF, as sort compares them
                if line[:-1] < last[p]:
                    is_sorted[p] = False
                last[p] = line[:-1]
            batch = batches[p]
            batch.append(line)
            if len(batch) >= _BATCH:
                self._flush(p)

    def _flush(self, p: int) -> None:
        batch = self.batches[p]
        data = "".join(batch).encode("utf-8")
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
