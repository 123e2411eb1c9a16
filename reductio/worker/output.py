"""A step's output on one worker: one file per partition, in the attempt folder.

Each formatted line goes to the partition that owns its key. The partition
of a key is remembered (a bounded cache, short keys only), and with it the
line of the key's first value when short, which a pair yielding that
value again writes as it is; lines are
gathered per partition and encoded and written in batches of bounded size,
hashed on the way (SHA-256, checked wherever the file travels); a line over
``max_record`` stops the step. The files record whether their lines came
out sorted, so merge can skip a sort it does not need.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from pathlib import Path

from reductio.errors import UserCodeError, environment_error
from reductio.wire.partition import partition_file
from reductio.wire.records import MAX_RECORD, first_too_long, too_long
from reductio.wire.sorting import sort_key
from reductio.worker.store import file_facts

# Lines are held over all partitions until they add up to BATCH, each counted as its characters and LINE_COST,
# about what a str costs besides them: some 8,000 short lines, or a few long ones.
BATCH = 1 << 20
LINE_COST = 100
REMEMBERED = 10_000  # keys whose partition is remembered: enough for skewed keys, cheap when keys are many
TAB = "\t"
REMEMBERED_KEY = 200  # the longest key remembered: the cache stays small, and a long key's hash costs little beside it
REMEMBERED_LINE = 64  # the longest line remembered with its key (LF included): counts and flags, not long values
ROOM = 256  # lines a partition's batch has room for at first; the room doubles when full


class Batch:
    """One partition's lines waiting to be written, ``lines[:count]``; the rest of ``lines`` is room, all "".

    Filled by index and blanked after each flush, not appended to and
    emptied: a list emptied at every flush grows again from nothing, and a
    new one per flush costs PyPy's garbage collector more than the appends
    themselves. The hot loops (write_all, steps.call_into) inline ``add``.
    """

    __slots__ = ("lines", "count")

    def __init__(self) -> None:
        self.lines, self.count = [""] * ROOM, 0

    def add(self, line: str) -> None:
        if self.count == len(self.lines):
            self.lines += [""] * len(self.lines)
        self.lines[self.count] = line
        self.count += 1


class PartitionedOutput:
    """Write lines into ``partitions`` files named for ``origin`` inside ``folder``.

    ``routes`` maps a key to what is remembered of it: ``(batch, value,
    line, cost)``, its partition's Batch, then the key's first value, its
    line and what that line counts towards ``batch``, or ``None, None, 0``
    when that line is longer than REMEMBERED_LINE or was not made from a
    pair. Hot loops (write_all here, steps.call_into) look a key up there
    first, call ``route`` for a key not found, add up what they add (each
    line's length and LINE_COST) from ``pending``, what earlier loops left
    unwritten, call ``flush`` at ``batch`` and leave ``pending`` as they end:
    a combiner's loop per flush adds a few lines each time. A line over
    max_record is refused by the flush it starts (``batch`` is no more than
    max_record), while the input line that made it is the one being read.
    """

    def __init__(self, folder: Path, partitions: int, origin: str, max_record: int = MAX_RECORD) -> None:
        self.folder, self.max_record = folder, max_record
        self.batch = min(BATCH, max_record + 1)
        self.paths = [folder / partition_file(p, origin) for p in range(partitions)]
        self.files = [open(path, "wb") for path in self.paths]
        self.digests = [hashlib.sha256() for _ in range(partitions)]
        self.batches = [Batch() for _ in range(partitions)]
        self.blank = [""] * (self.batch // (LINE_COST + 1) + 1)  # as many lines as a batch holds: LINE_COST + LF each
        self.routes: dict[str, tuple] = {}
        self.pending = 0  # what the batches hold, counted as the hot loops count it
        self.lines = [0] * partitions
        self.sorted = [True] * partitions
        self.last = [("", "")] * partitions

    def route(self, key: str) -> Batch:
        """The batch of the partition owning ``key`` (partition.partition_of, inlined).

        The first REMEMBERED keys (up to REMEMBERED_KEY characters long) are
        remembered: with skewed keys the frequent ones come early, and memory
        stays bounded whatever the keys. steps.call_into inlines this.
        """
        # surrogatepass: a lone surrogate still gets a partition; flush then refuses the line, saying why.
        batch = self.batches[zlib.crc32(key.encode("utf-8", "surrogatepass")) % len(self.batches)]
        if len(self.routes) < REMEMBERED and len(key) <= REMEMBERED_KEY:
            self.routes[key] = (batch, None, None, 0)
        return batch

    def write_all(self, lines: Iterable[str]) -> None:
        """Route every formatted line (LF-terminated) to its partition: the key is all before the first tab."""
        routes, route, flush, batch, cost = self.routes, self.route, self.flush, self.batch, LINE_COST
        pending = self.pending
        for line in lines:
            key = line[: line.find("\t")]  # no tab: find is -1, the key is the line without its LF
            known = routes.get(key)
            part = route(key) if known is None else known[0]
            count = part.count  # Batch.add, inlined: on CPython a method call per line costs a fifth of the loop
            try:
                part.lines[count] = line
            except IndexError:  # no room left
                part.add(line)
            else:
                part.count = count + 1
            pending += cost + len(line)
            if pending >= batch:
                flush()
                pending = 0
        self.pending = pending

    def flush(self) -> None:
        """Encode and write every partition's batch."""
        self.pending = 0
        for p, batch in enumerate(self.batches):
            if batch.count:
                lines = batch.lines[: batch.count]
                batch.lines[: batch.count] = self.blank[: batch.count]  # no line held past its flush; the room stays
                batch.count = 0
                if self.sorted[p]:
                    self._track(p, lines)
                data = _encode("".join(lines))
                index = first_too_long(lines, self.max_record, len(data))
                if index is not None:
                    raise self.too_long(lines[index])
                try:
                    self.files[p].write(data)
                except OSError as err:  # a ReductioError, so the hot loop never takes it for the user's
                    raise environment_error(err, writing=self.paths[p]) from err
                self.digests[p].update(data)
                self.lines[p] += len(lines)

    def too_long(self, line: str) -> UserCodeError:
        return UserCodeError(f"wrote {too_long(self.max_record)}, whose key starts {line[:line.find(TAB)][:60]!r}")

    def _track(self, p: int, batch: list) -> None:
        """Keep note of whether partition p is still in sort's order (sorting.sort_key, without the LF)."""
        keys = [sort_key(line[:-1]) for line in batch]
        if keys[0] < self.last[p] or keys != sorted(keys):
            self.sorted[p] = False
        else:
            self.last[p] = keys[-1]

    def close(self) -> dict[str, dict]:
        """Flush and close every file; return the marker facts for each."""
        self.flush()
        for out in self.files:
            out.close()
        return {
            path.name: file_facts(path, self.lines[p], self.digests[p].hexdigest(), self.sorted[p])
            for p, path in enumerate(self.paths)
        }

    def abandon(self) -> None:
        """Close without caring about the files: the attempt is being discarded."""
        for out in self.files:
            out.close()


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        around = text[max(0, err.start - 30): err.end + 30]
        raise UserCodeError(f"yielded text that is not valid Unicode (a lone surrogate) near {around!r};"
                            " keys and values must be encodable as UTF-8") from None
