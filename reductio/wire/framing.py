"""Several files on one byte stream: how data reaches a worker's ``receive``.

A stream is a sequence of frames, each a header line of ASCII words and maybe bytes:

    file NAME K\\n  then K bytes          more of NAME (created on first use)
    end NAME K SHA256 sorted|unsorted\\n  NAME is whole: K bytes with that SHA-256, checked, then visible
    ping\\n                               nothing to send just now; still here

A file is written under a temporary name and only renamed to NAME once it
arrived whole and matching; a file sent again replaces the old one. The end
of the stream with a file still open is a truncated stream, refused. One
stream carries one shard of ``load``, or every file one scatter sender has
for one destination. Words, not JSON: every scatter connection starts a
``receive`` (gate.py), and importing json would cost it more than its work.
Names are dataset file names (letters, digits, '_', '.', '-'), so a header
never needs quoting. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator

from reductio.errors import DatasetError
from reductio.wire.layout import check_file_name

CHUNK = 1 << 20
MAX_HEADER = 1 << 10  # bytes: a header is a name, two numbers and a digest


def file_header(name: str, size: int) -> bytes:
    return f"file {check_file_name(name)} {int(size)}\n".encode("ascii")


def end_header(name: str, facts: dict) -> bytes:
    """The frame ending ``name``: the size and SHA-256 it must have, and whether its lines are sorted."""
    order = "sorted" if facts.get("sorted") else "unsorted"
    return f"end {check_file_name(name)} {int(facts['bytes'])} {facts['sha256']} {order}\n".encode("ascii")


PING = b"ping\n"


def frames(path, facts: dict) -> Iterator[bytes]:
    """One whole file as frames: its bytes in one frame, then its end with ``facts``."""
    name = os.path.basename(path)
    with open(path, "rb") as data:
        size = os.fstat(data.fileno()).st_size
        yield file_header(name, size)
        left = size
        while left:
            block = data.read(min(CHUNK, left))
            if not block:
                raise DatasetError(f"{name} shrank while it was being sent")
            yield block
            left -= len(block)
    yield end_header(name, facts)


class Reader:
    """Frames from a byte source: ``read(size)`` gives up to size bytes, b"" at the end."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read, self._buffer = read, bytearray()

    @classmethod
    def over(cls, pieces: Iterable[bytes]) -> "Reader":
        """Frames from pieces of bytes made in this process (a local destination)."""
        pieces = iter(pieces)
        return cls(lambda _size: next(pieces, b""))

    def header(self) -> dict | None:
        """The next frame's header, or None at the end of the stream."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return _parsed(line)
            if len(self._buffer) > MAX_HEADER:
                raise DatasetError(f"the stream is garbled: no frame header within {MAX_HEADER:,} bytes")
            block = self._read(CHUNK)
            if not block:
                if self._buffer:
                    raise DatasetError("the stream ended inside a frame header")
                return None
            self._buffer += block

    def payload(self, size: int) -> Iterator[bytes]:
        """The ``size`` bytes of a frame, in blocks."""
        while size:
            if self._buffer:
                block = bytes(self._buffer[:size])
                del self._buffer[:len(block)]
            else:
                block = self._read(min(CHUNK, size))
                if not block:
                    raise DatasetError(f"the stream ended {size:,} bytes short of a frame")
            yield block
            size -= len(block)


def _parsed(line: bytes) -> dict:
    """A header line as ``{"file": NAME, "bytes": K}``, ``{"file": NAME, "end": FACTS}`` or ``{"ping": True}``."""
    words = line.decode("ascii", "replace").split(" ")
    try:
        if words == ["ping"]:
            return {"ping": True}
        if words[0] == "file" and len(words) == 3:
            return {"file": check_file_name(words[1]), "bytes": _count(words[2])}
        if words[0] == "end" and len(words) == 5 and words[4] in ("sorted", "unsorted"):
            return {"file": check_file_name(words[1]),
                    "end": {"bytes": _count(words[2]), "sha256": words[3], "sorted": words[4] == "sorted"}}
    except ValueError:
        pass
    raise DatasetError(f"the stream is garbled: a frame header reads {line[:80]!r}")


def _count(word: str) -> int:
    if not word.isdigit() or not word.isascii():
        raise ValueError(word)
    return int(word)


class _Incoming:
    """One file being received: its temporary file, digest, size and lines."""

    def __init__(self, folder, name: str) -> None:
        self.partial = os.path.join(folder, f".{name}.part")
        self.out = open(self.partial, "wb")
        self.digest, self.size, self.lines = hashlib.sha256(), 0, 0

    def add(self, block: bytes) -> None:
        self.out.write(block)
        self.digest.update(block)
        self.size += len(block)
        self.lines += block.count(b"\n")


def receive(reader: Reader, folder) -> dict[str, dict]:
    """Write every file of a framed stream into ``folder``; their facts (bytes, lines, sha256, sorted)."""
    open_files: dict[str, _Incoming] = {}
    received: dict[str, dict] = {}
    try:
        while True:
            header = reader.header()
            if header is None:
                break
            if header.get("ping"):
                continue
            name = header["file"]
            if "end" in header:
                incoming = open_files.pop(name, None) or _Incoming(folder, name)  # an empty file has no bytes
                received[name] = _finish(incoming, os.path.join(folder, name), header["end"])
                continue
            if name not in open_files:
                open_files[name] = _Incoming(folder, name)
            for block in reader.payload(header["bytes"]):
                open_files[name].add(block)
        if open_files:
            raise DatasetError(f"the stream ended before {', '.join(sorted(open_files))} was whole")
    finally:
        for incoming in open_files.values():
            incoming.out.close()
            _unlink(incoming.partial)
    return received


def _finish(incoming: _Incoming, target: str, expected: dict) -> dict:
    incoming.out.close()
    facts = {"bytes": incoming.size, "lines": incoming.lines, "sha256": incoming.digest.hexdigest(),
             "sorted": expected["sorted"]}
    if (facts["bytes"], facts["sha256"]) != (expected["bytes"], expected["sha256"]):
        _unlink(incoming.partial)
        same = "matches" if facts["sha256"] == expected["sha256"] else "differs"
        raise DatasetError(f"{os.path.basename(target)} arrived damaged: {facts['bytes']} of {expected['bytes']}"
                           f" bytes, checksum {same}")
    os.replace(incoming.partial, target)
    return facts


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
