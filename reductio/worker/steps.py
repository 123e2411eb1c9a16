"""Map, reduce, a combiner and transform over records: the logic, no file I/O.

map, reduce and the combiner share one flat hot loop (call_into) that calls
the user's function lazily and routes what it yields into a partitioned
output, so a shard streams through in bounded memory. The built-in
reductio.reducers.sum has loops of its own (sum_into, sum_runs_into) that
count equal pairs or lines before converting anything. transform yields
lines. Any exception the user's code raises becomes a UserCodeError carrying
the user's own frames (usercode.py).
"""

from __future__ import annotations

import itertools
import operator
import types
import zlib
from collections import _count_elements  # the C loop of Counter.update
from collections.abc import Callable, Iterable, Iterator

from reductio.errors import InputError, ReductioError, UserCodeError
from reductio.reducers import decimal, integer
from reductio.wire.records import check_pair, format_record
from reductio.wire.usercode import Output, user_error
from reductio.worker.output import LINE_COST, REMEMBERED, REMEMBERED_KEY, REMEMBERED_LINE

HELD = 64 << 20  # characters of keys and values a combiner holds (LINE_COST more each), whatever its combine_limit


def call_into(function: Callable, name: str, calls: Iterable[tuple], output, on_key: bool = False) -> None:
    """Call ``function(a, b)`` per item of ``calls`` and route each pair it yields into ``output``.

    The hot loop of map, reduce and a combiner, kept flat: the common
    well-formed pair is checked inline (its key once, when the output first
    routes it) and its line added to its partition's batch; a pair of a
    remembered key and its first value again adds the line made for it
    then, so a mapper's (word, "1") costs a lookup, not a new line.
    Anything else goes through format_record, which says what is wrong.
    ``on_key``: name the key in the error when the function raises
    (reducers).
    """
    routes, batches, flush, crc32, batch = output.routes, output.batches, output.flush, zlib.crc32, output.batch
    pending, cost = output.pending, LINE_COST
    for key, value in calls:
        try:
            pairs = function(key, value)
            if pairs is None:
                continue
            for pair in pairs:
                if type(pair) is tuple and len(pair) == 2:
                    out_key, out_value = pair
                    if type(out_key) is str and type(out_value) is str:
                        known = routes.get(out_key)
                        if known is not None and (known[1] is out_value or known[1] == out_value):  # no LF in it
                            part, line, size = known[0], known[2], known[3]
                        elif "\n" not in out_value:
                            line = out_key + "\t" + out_value + "\n"
                            size = cost + len(line)
                            if known is not None:
                                part = known[0]
                            else:
                                if "\t" in out_key or "\n" in out_key:
                                    format_record(pair, name)  # raises, saying what is wrong
                                # output.route, inlined: a method call per new key costs as much as the lookup
                                part = batches[crc32(out_key.encode("utf-8", "surrogatepass")) % len(batches)]
                                if len(routes) < REMEMBERED and len(out_key) <= REMEMBERED_KEY:
                                    routes[out_key] = (part, out_value, line, size) if (
                                        len(line) <= REMEMBERED_LINE) else (part, None, None, 0)
                        else:
                            part, line, size = _checked(output, pair, name)
                    else:
                        part, line, size = _checked(output, pair, name)
                else:
                    part, line, size = _checked(output, pair, name)
                count = part.count  # Batch.add, inlined: a method call per pair costs more than the rest
                try:
                    part.lines[count] = line
                except IndexError:  # no room left
                    part.add(line)
                else:
                    part.count = count + 1
                pending += size
                if pending >= batch:
                    flush()
                    pending = 0
        except ReductioError:
            raise
        except Exception as exc:
            raise user_error(f"{name} raised on key {key!r}" if on_key else f"{name} raised", exc) from None
    output.pending = pending


def _checked(output, pair, name: str) -> tuple:
    """call_into's slow path: format_record refuses a bad pair, saying why; a good one's batch, line and size."""
    line = format_record(pair, name)
    return output.route(line[: line.index("\t")]), line, LINE_COST + len(line)


def map_into(mapper: Callable, name: str, records: Iterable[tuple[str, str]], output) -> None:
    """Call ``mapper(key, value)`` per record; its pairs go into ``output``."""
    call_into(mapper, name, records, output)


def reduce_into(reducer: Callable, name: str, records: Iterable[tuple[str, str]], output) -> None:
    """Call ``reducer(key, values)`` once per run of equal keys, values a lazy iterator; pairs into ``output``."""
    groups = ((key, map(_value, group)) for key, group in itertools.groupby(records, _key))
    call_into(reducer, name, groups, output, on_key=True)


def combine_into(
    mapper: Callable, name: str, records: Iterable[tuple[str, str]], reducer: Callable, reducer_name: str,
    limit: int, output,
) -> None:
    """Map, pre-aggregating the pairs with ``reducer`` in bounded memory (a combiner), into ``output``.

    Values are gathered per key until ``limit`` values (or HELD characters,
    each value counted as LINE_COST more) are held, then
    ``reducer(key, values)`` runs once per held key and its pairs are
    written. Correct when the reducer can take its own output as input
    (counts, sums, minima, sets), as Hadoop's and mrjob's combiners.
    The loop is call_into's, holding values instead of writing lines.
    """
    held: dict[str, list] = {}
    count = size = 0
    for key, value in records:
        try:
            pairs = mapper(key, value)
            if pairs is None:
                continue
            for pair in pairs:
                if type(pair) is tuple and len(pair) == 2:
                    out_key, out_value = pair
                    if type(out_key) is str and type(out_value) is str and "\n" not in out_value:
                        values = held.get(out_key)
                        if values is not None:
                            values.append(out_value)
                        else:
                            if "\t" in out_key or "\n" in out_key:
                                check_pair(pair, name)  # raises, saying what is wrong
                            held[out_key] = [out_value]
                            size += len(out_key)
                    else:
                        out_key, out_value = check_pair(pair, name)
                        held.setdefault(out_key, []).append(out_value)
                else:
                    out_key, out_value = check_pair(pair, name)
                    held.setdefault(out_key, []).append(out_value)
                count += 1
                size += LINE_COST + len(out_value)
                if count >= limit or size >= HELD:
                    _flush_held(reducer, reducer_name, held, output)
                    count = size = 0
        except ReductioError:
            raise
        except Exception as exc:
            raise user_error(f"{name} raised", exc) from None
    _flush_held(reducer, reducer_name, held, output)


def _flush_held(reducer: Callable, name: str, held: dict[str, list], output) -> None:
    call_into(reducer, name, ((key, iter(values)) for key, values in held.items()), output, on_key=True)
    held.clear()


def sum_into(mapper: Callable, name: str, records: Iterable[tuple[str, str]], limit: int, output) -> None:
    """Map with reductio.reducers.sum as the combiner: what combine_into gives with it, several times faster.

    collections' C loop counts each distinct (key, value) pair the mapper
    yields; a pair is checked only when it is new since the last flush (the
    newest entries of the dict), so errors still name the line. At
    ``limit`` distinct pairs (or HELD characters of them), or at the end,
    each key's values are summed, each distinct value converted once, and
    one line per key is written. Where that loop is not in C (PyPy),
    _sum_loop_into does the same in a loop the JIT compiles.
    """
    if not _COUNTING_IN_C:
        _sum_loop_into(mapper, name, records, limit, output)
        return
    held: dict[tuple, int] = {}
    size = 0
    for key, value in records:
        before = len(held)
        try:
            pairs = mapper(key, value)
            if pairs is None:
                continue
            _count_elements(held, pairs)
        except ReductioError:
            raise
        except Exception as exc:
            raise _sum_error(name, exc) from None
        if len(held) > before:
            for pair in itertools.islice(reversed(held), len(held) - before):
                out_key, out_value = check_pair(pair, name)  # refuses a bad pair, saying why
                size += LINE_COST + len(out_key) + len(out_value)
            if len(held) >= limit or size >= HELD:
                _flush_sums(held, output)
                size = 0
    _flush_sums(held, output)


_COUNTING_IN_C = isinstance(_count_elements, types.BuiltinFunctionType)  # CPython's; PyPy's is a Python function


class _Sums:
    """One key's pairs held by _sum_loop_into: its first value and how often it came; other values, if any."""

    __slots__ = ("value", "times", "others")

    def __init__(self, value: str) -> None:
        self.value, self.times, self.others = value, 1, None


def _sum_loop_into(mapper: Callable, name: str, records: Iterable[tuple[str, str]], limit: int, output) -> None:
    """sum_into as a loop for PyPy's JIT: a pair whose key was held with the same value costs one dict lookup.

    Counting (key, value) tuples, as the C loop does, hashes a new tuple per
    pair; here a key's first value is counted in its _Sums, any other value
    in a dict of its own. Pairs are checked and flushed as in sum_into.
    """
    held: dict[str, _Sums] = {}
    distinct = size = 0
    for key, value in records:
        try:
            pairs = mapper(key, value)
            if pairs is None:
                continue
            for pair in pairs:
                if type(pair) is tuple and len(pair) == 2:
                    out_key, out_value = pair
                    if type(out_key) is str and type(out_value) is str:
                        sums = held.get(out_key)
                        if sums is not None and sums.value == out_value:
                            sums.times += 1
                            continue
                hash(pair)  # an unhashable pair is refused as the C loop refuses it
                out_key, out_value = check_pair(pair, name)  # refuses a bad pair, saying why
                sums = held.get(out_key)
                if sums is None:
                    held[out_key] = _Sums(out_value)
                elif sums.value == out_value:
                    sums.times += 1
                    continue
                elif sums.others is None:
                    sums.others = {out_value: 1}
                elif out_value in sums.others:
                    sums.others[out_value] += 1
                    continue
                else:
                    sums.others[out_value] = 1
                distinct += 1  # a pair new since the last flush
                size += LINE_COST + len(out_key) + len(out_value)
        except ReductioError:
            raise
        except Exception as exc:
            raise _sum_error(name, exc) from None
        if distinct >= limit or size >= HELD:
            _flush_sums(_held_pairs(held), output)
            distinct = size = 0
    _flush_sums(_held_pairs(held), output)


def _held_pairs(held: dict[str, _Sums]) -> dict[tuple, int]:
    """What _sum_loop_into holds as sum_into's C loop holds it, (key, value) -> times; ``held`` is emptied."""
    pairs = {}
    for key, sums in held.items():
        pairs[key, sums.value] = sums.times
        pairs.update(((key, value), times) for value, times in (sums.others or {}).items())
    held.clear()
    return pairs


def _sum_error(name: str, exc: Exception) -> UserCodeError:
    """What sum_into's loops say when counting stopped: the mapper raised, or what it gave is not pairs."""
    if exc.__traceback__.tb_next is None:  # raised by the counting, not in the mapper: not pairs
        return UserCodeError(f"{name} must yield (key, value) pairs of str ({exc})")
    return user_error(f"{name} raised", exc)


def _flush_sums(held: dict[tuple, int], output) -> None:
    totals: dict[str, int] = {}
    for (key, value), times in held.items():
        totals[key] = totals.get(key, 0) + integer(key, value) * times
    output.write_all(f"{key}\t{decimal(total)}\n" for key, total in totals.items())
    held.clear()


def sum_runs_into(runs: Iterable[tuple[str, str, int]], output) -> None:
    """reduce with reductio.reducers.sum over sorted input given as runs of equal lines: (key, value, times)."""
    output.write_all(_totals(runs))


def _totals(runs: Iterable[tuple[str, str, int]]) -> Iterator[str]:
    current, total = None, 0
    for key, value, times in runs:
        if key != current:
            if current is not None:
                yield f"{current}\t{decimal(total)}\n"
            current, total = key, 0
        total += integer(key, value) * times
    if current is not None:
        yield f"{current}\t{decimal(total)}\n"


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


def check_sorted(lines: Iterable[str], where: str) -> Iterator[str]:
    """Pass lines through, stopping with an InputError at the first one out of order.

    Order is sorting.sort_key's: the key, then the whole line, each in code
    point order, which is LC_ALL=C sort's byte order for UTF-8.
    """
    previous = last = ""
    for lineno, line in enumerate(lines, 1):
        key = line.partition("\t")[0]
        if key < last or (key == last and line < previous):
            raise unsorted(where, lineno, line, previous)
        previous, last = line, key
        yield line


def unsorted(where: str, lineno: int, line: str, previous: str) -> InputError:
    """The error for a line found out of sort order."""
    return InputError(f"{where} line {lineno}: input is not sorted ({line[:40]!r} after {previous[:40]!r});"
                      " run sort on it first")


_key = operator.itemgetter(0)  # of a (key, value) record; C, not a Python call per line
_value = operator.itemgetter(1)
