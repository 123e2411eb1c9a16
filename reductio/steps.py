"""Map, transform and reduce as generators over records: the logic, no I/O.

Each step takes an iterator of inputs and yields output lines, calling the
user's function lazily, so a shard streams through in bounded memory. Any
exception the user's code raises becomes a UserCodeError carrying the
user's own frames; reductio's frames are trimmed away.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Tuple

from reductio.errors import InputError, UserCodeError
from reductio.records import check_pair, format_line, format_record

_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


def load_function(path: str) -> Callable:
    """Import ``package.module.function``; any failure is a UserCodeError naming the path."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise UserCodeError(f"function {path!r} is not a dotted path like 'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise user_error(f"function {path!r} does not import", exc) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UserCodeError(f"function {path!r}: module {module_name!r} has no function {attribute!r}")
    return function


def code_digest(path: str) -> str:
    """A digest of the source file defining a function: a changed module means a stale output."""
    function = load_function(path)
    module = sys.modules.get(getattr(function, "__module__", ""), None)
    filename = getattr(module, "__file__", None)
    data = Path(filename).read_bytes() if filename and os.path.exists(filename) else path.encode()
    return hashlib.sha256(data).hexdigest()[:16]


def map_lines(mapper: Callable, name: str, records: Iterable[Tuple[str, str]]) -> Iterator[str]:
    """Call ``mapper(key, value)`` per record; yield the lines of the pairs it yields."""
    for key, value in records:
        try:
            pairs = mapper(key, value)
            if pairs is None:
                continue
            for pair in pairs:
                # The common case inline (the hot path); format_record checks the rest and says what is wrong.
                if type(pair) is tuple and len(pair) == 2:
                    out_key, out_value = pair
                    if (type(out_key) is str and type(out_value) is str and "\t" not in out_key
                            and "\n" not in out_key and "\n" not in out_value):
                        yield out_key + "\t" + out_value + "\n"
                        continue
                yield format_record(pair, name)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(f"{name} raised", exc) from None


def map_pairs(mapper: Callable, name: str, records: Iterable[Tuple[str, str]]) -> Iterator[Tuple[str, str]]:
    """Like map_lines, yielding checked ``(key, value)`` pairs instead of lines (for a combiner)."""
    for key, value in records:
        try:
            pairs = mapper(key, value)
            if pairs is None:
                continue
            for pair in pairs:
                if type(pair) is tuple and len(pair) == 2:  # the common case inline, as in map_lines
                    out_key, out_value = pair
                    if (type(out_key) is str and type(out_value) is str and "\t" not in out_key
                            and "\n" not in out_key and "\n" not in out_value):
                        yield pair
                        continue
                yield check_pair(pair, name)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(f"{name} raised", exc) from None


def combine_lines(reducer: Callable, name: str, pairs: Iterable[Tuple[str, str]], limit: int) -> Iterator[str]:
    """Pre-aggregate pairs with ``reducer`` in bounded memory: a combiner.

    Values are gathered per key until ``limit`` values are held, then
    ``reducer(key, values)`` runs once per held key and its pairs are
    yielded. Correct when the reducer can take its own output as input
    (counts, sums, minima, sets), as Hadoop's and mrjob's combiners.
    """
    held: Dict[str, list] = {}
    count = 0
    for key, value in pairs:
        values = held.get(key)
        if values is None:
            held[key] = [value]
        else:
            values.append(value)
        count += 1
        if count >= limit:
            yield from _combined(reducer, name, held)
            held.clear()
            count = 0
    yield from _combined(reducer, name, held)


def _combined(reducer: Callable, name: str, held: Dict[str, list]) -> Iterator[str]:
    for key, values in held.items():
        try:
            pairs = reducer(key, iter(values))
            if pairs is None:
                continue
            for pair in pairs:
                yield format_record(pair, name)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(f"{name} raised on key {key!r}", exc) from None


def transform_lines(function: Callable, name: str, lines: Iterable[str]) -> Iterator[str]:
    """Call ``function(line, out)`` per raw line; yield what it wrote to ``out``."""
    out = Output(name)
    for line in lines:
        try:
            function(line, out)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error(f"{name} raised", exc) from None
        yield from out.written
        out.written.clear()


def reduce_lines(reducer: Callable, name: str, records: Iterable[Tuple[str, str]]) -> Iterator[str]:
    """Call ``reducer(key, values)`` once per run of equal keys, values as a lazy iterator."""
    for key, group in itertools.groupby(records, key=_first):
        values = (value for _, value in group)
        try:
            pairs = reducer(key, values)
            if pairs is None:
                continue
            for pair in pairs:
                yield format_record(pair, name)
        except (UserCodeError, InputError):
            raise
        except Exception as exc:
            raise user_error(f"{name} raised on key {key!r}", exc) from None


def check_sorted(lines: Iterable[str], where: str) -> Iterator[str]:
    """Pass lines through, stopping with an InputError at the first one out of order.

    Order is code point order, which is LC_ALL=C sort's byte order for UTF-8.
    """
    previous = ""
    for lineno, line in enumerate(lines, 1):
        if line < previous:
            raise unsorted(where, lineno, line, previous)
        previous = line
        yield line


def unsorted(where: str, lineno: int, line: str, previous: str) -> InputError:
    """The error for a line found out of sort order."""
    return InputError(f"{where} line {lineno}: input is not sorted ({line[:40]!r} after {previous[:40]!r});"
                      " run sort on it first")


class Output:
    """What ``transform`` and ``initialize`` functions write to: pairs or whole lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.written = []

    def write_pair(self, key: str, value: str) -> None:
        self.written.append(format_record((key, value), self.name))

    def write(self, text: str) -> None:
        self.written.append(format_line(text, self.name))


def _first(record):
    return record[0]


def user_error(what: str, exc: BaseException) -> UserCodeError:
    """A UserCodeError for ``exc``, with only the user's frames in its traceback."""
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__)
        if not os.path.abspath(frame.filename).startswith(_OWN_DIR + os.sep)
        and "importlib" not in frame.filename
    ]
    details = "Traceback (user code):\n" + "".join(traceback.format_list(frames))
    details += "".join(traceback.format_exception_only(type(exc), exc))
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
    return UserCodeError(f"{what} {summary}", details)
