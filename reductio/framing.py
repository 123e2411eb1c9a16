"""Several files on one byte stream: how data reaches a worker's ``receive``.

A stream is a sequence of frames, each a JSON header line and maybe bytes:

    {"file": NAME, "bytes": K}\\n  then K bytes   more of NAME (created on first use)
    {"file": NAME, "end": FACTS}\\n               NAME is whole: checked, then visible
    {"ping": true}\\n                             nothing to send just now; still here

``FACTS`` holds the ``bytes`` and ``sha256`` the sender expects (and whether
the file is ``sorted``). A file is written under a temporary name and only
renamed to NAME once it arrived whole and matching; a file sent again
replaces the old one. The end of the stream with a file still open is a
truncated stream, refused. One stream carries one shard of ``load``, or
every file one scatter sender has for one destination. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from reductio.errors import DatasetError

CHUNK = 1 << 20
MAX_HEADER = 1 << 16  # bytes: a header names one file and its facts


def file_header(name: str, size: int) -> bytes:
    return _line({"file": name, "bytes": size})


def end_header(name: str, facts: dict | None) -> bytes:
    return _line({"file": name, "end": facts})


def _line(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True).encode("utf-8") + b"\n"


PING = _line({"ping": True})


def frames(path: Path, facts: dict) -> Iterator[bytes]:
    """One whole file as frames: its bytes in one frame, then its end with ``facts``."""
    with open(path, "rb") as data:
        size = os.fstat(data.fileno()).st_size
        yield file_header(path.name, size)
        left = size
        while left:
            block = data.read(min(CHUNK, left))
            if not block:
                raise DatasetError(f"{path.name} shrank while it was being sent")
            yield block
            left -= len(block)
    yield end_header(path.name, facts)


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
                try:
                    header = json.loads(line)
                except ValueError:
                    header = None
                if not isinstance(header, dict):
                    raise DatasetError(f"the stream is garbled: a frame header reads {line[:80]!r}")
                return header
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


class _Incoming:
    """One file being received: its temporary file, digest, size and lines."""

    def __init__(self, folder: Path, name: str) -> None:
        self.partial = folder / f".{name}.part"
        self.out = open(self.partial, "wb")
        self.digest, self.size, self.lines = hashlib.sha256(), 0, 0

    def add(self, block: bytes) -> None:
        self.out.write(block)
        self.digest.update(block)
        self.size += len(block)
        self.lines += block.count(b"\n")


def receive(reader: Reader, folder: Path) -> dict[str, dict]:
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
            name = _checked_name(header.get("file"))
            if "end" in header:
                incoming = open_files.pop(name, None) or _Incoming(folder, name)  # an empty file has no bytes
                received[name] = _finish(incoming, folder / name, header["end"])
                continue
            size = header.get("bytes")
            if not isinstance(size, int) or size < 0:
                raise DatasetError(f"the stream is garbled: frame of {name} has no byte count")
            if name not in open_files:
                open_files[name] = _Incoming(folder, name)
            for block in reader.payload(size):
                open_files[name].add(block)
        if open_files:
            raise DatasetError(f"the stream ended before {', '.join(sorted(open_files))} was whole")
    finally:
        for incoming in open_files.values():
            incoming.out.close()
            incoming.partial.unlink(missing_ok=True)
    return received


def _finish(incoming: _Incoming, target: Path, expected: dict | None) -> dict:
    incoming.out.close()
    facts = {"bytes": incoming.size, "lines": incoming.lines, "sha256": incoming.digest.hexdigest(),
             "sorted": bool(expected and expected.get("sorted"))}
    if expected and (facts["bytes"], facts["sha256"]) != (expected.get("bytes"), expected.get("sha256")):
        incoming.partial.unlink()
        same = "matches" if facts["sha256"] == expected.get("sha256") else "differs"
        raise DatasetError(f"{target.name} arrived damaged: {facts['bytes']} of {expected.get('bytes')} bytes,"
                           f" checksum {same}")
    os.replace(incoming.partial, target)
    return facts


def _checked_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or "\0" in name:
        raise DatasetError(f"bad file name {name!r}")
    return name
