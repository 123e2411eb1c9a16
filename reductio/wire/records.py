"""The ``key<TAB>value`` wire format: reading, writing and what is refused.

Rules (README "Records"):
- a record is one UTF-8 line ``key<TAB>value<LF>``; the key ends at the first
  tab, so a value may hold tabs, a key may not;
- neither key nor value may hold a newline; a CR is an ordinary character;
- keys and values are ``str``; anything else is refused, never converted;
- a line holds at most ``max_record`` bytes besides its LF (MAX_RECORD unless
  set): load and every step's output refuse a longer one, so whatever reads
  a dataset reads lines of bounded size.
Nothing is escaped: what a function yields is what lands on disk.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

from reductio.errors import InputError, UserCodeError

READ_BUFFER = 1 << 20
MAX_RECORD = 64 << 20  # the max_record setting's default


def record_limit(setting) -> int:
    """The max_record setting as given (a step's params, the head's settings), else its default."""
    return int(setting or MAX_RECORD)


def too_long(limit: int) -> str:
    """How errors describe a line over ``max_record``."""
    return f"a line longer than max_record ({limit:,} bytes)"


def first_too_long(lines: list, limit: int, encoded: int) -> int | None:
    """The index of the first of ``lines`` (text, each ending in LF) over ``limit`` bytes without its LF, or None;
    ``encoded``: their size in UTF-8, which answers at once for most batches."""
    if encoded - len(lines) <= limit or len(max(lines, key=len)) * 4 <= limit:  # a character is 4 bytes at most
        return None
    for index, line in enumerate(lines):
        if len(line) * 4 > limit and len(line.encode("utf-8", "surrogatepass")) - 1 > limit:
            return index
    return None


def open_text(path: Path, mode: str = "r"):
    """Open a data file as UTF-8 text that splits lines on LF only."""
    return open(path, mode, encoding="utf-8", newline="\n", buffering=READ_BUFFER)


def open_slice(path: Path, start: int = 0, end: int = None):
    """Read bytes ``start`` to ``end`` of a data file as UTF-8 text split on LF: one process's share of it."""
    if not start and end is None:
        return open_text(path)
    return io.TextIOWrapper(io.BufferedReader(_Slice(path, start, end), READ_BUFFER), encoding="utf-8", newline="\n")


class _Slice(io.RawIOBase):
    """A byte range of a file as a raw stream that ends where the range ends."""

    def __init__(self, path: Path, start: int, end: int = None) -> None:
        super().__init__()
        self._file = open(path, "rb", buffering=0)
        self._left = (os.fstat(self._file.fileno()).st_size if end is None else end) - start
        self._file.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            return 0
        with memoryview(buffer) as view:
            count = self._file.readinto(view[: min(len(view), self._left)])
        self._left -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


def lines_before(path: Path, offset: int) -> int:
    """How many lines of ``path`` end before byte ``offset``: a share's first line number, less one."""
    count, left = 0, offset
    with open(path, "rb") as data:
        while left > 0:
            block = data.read(min(left, READ_BUFFER))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def read_lines(path: Path, start: int = 0, end: int = None) -> Iterator[str]:
    """Yield the lines of ``path`` (bytes ``start`` to ``end``) without their LF; invalid UTF-8 is an InputError."""
    with open_slice(path, start, end) as lines:
        try:
            for line in lines:
                yield line[:-1] if line.endswith("\n") else line
        except UnicodeDecodeError:
            raise decode_error(path) from None


def split_record(line: str, path: Path, lineno: int) -> tuple[str, str]:
    """Split one line at its first tab; a line with no tab is an InputError."""
    key, tab, value = line.partition("\t")
    if not tab:
        raise InputError(f"{path.name} line {lineno}: no tab in record {_preview(line)}")
    return key, value


def format_record(pair, function: str) -> str:
    """The line for one yielded pair; a bad pair is a UserCodeError naming ``function``."""
    key, value = check_pair(pair, function)
    return f"{key}\t{value}\n"


def check_pair(pair, function: str):
    """``(key, value)`` of a yielded pair, refusing what the format cannot hold (see module doc)."""
    if not isinstance(pair, (tuple, list)):
        raise UserCodeError(f"{function} yielded {_preview(pair)}, not a (key, value) pair")
    if len(pair) != 2:
        items = "1 item" if len(pair) == 1 else f"{len(pair)} items"
        raise UserCodeError(f"{function} yielded {_preview(pair)}, not a (key, value) pair ({items})")
    key, value = pair
    if type(key) is not str or type(value) is not str:
        bad = "key" if type(key) is not str else "value"
        raise UserCodeError(
            f"{function} yielded a {bad} of type {type(key if bad == 'key' else value).__name__}"
            f" ({_preview(pair)}); keys and values must be str"
        )
    if "\t" in key or "\n" in key:
        raise UserCodeError(
            f"{function} yielded a key holding a tab or newline ({_preview(pair)}); keys may hold neither"
        )
    if "\n" in value:
        raise UserCodeError(
            f"{function} yielded a value holding a newline ({_preview(pair)}); values may hold tabs, not newlines"
        )
    return key, value


def format_line(text, function: str) -> str:
    """The line for ``out.write(text)``: one line, its LF optional."""
    if type(text) is not str:
        raise UserCodeError(f"{function} wrote a {type(text).__name__}; out.write takes str")
    body = text[:-1] if text.endswith("\n") else text
    if "\n" in body:
        raise UserCodeError(f"{function} wrote several lines at once ({_preview(text)}); write one line per call")
    return body + "\n"


def key_of(line: str) -> str:
    """The key of a formatted line: everything before the first tab."""
    return line.partition("\t")[0]


def decode_error(path: Path) -> InputError:
    """Find the first invalid UTF-8 byte of ``path``: the slow path, taken only on error."""
    offset = 0
    with open(path, "rb") as raw:
        for lineno, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return InputError(
                    f"{path.name} line {lineno}: invalid UTF-8 at byte offset {offset + err.start}"
                )
            offset += len(line)
    return InputError(f"{path.name}: invalid UTF-8 (truncated multi-byte character at the end)")


def _preview(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


