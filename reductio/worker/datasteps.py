"""The steps that read a dataset's files and write new ones: map, transform, reduce and sort.

Each is ``step_NAME(params) -> result`` run by worker.py in its own
process; map, transform and reduce may run over several share processes
(shares.py). Standard library only.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import heapq
import itertools
import subprocess
from pathlib import Path

from reductio import reducers
from reductio.counters import snapshot
from reductio.errors import DatasetError, InputError, ReductioError, UserCodeError, sort_failure
from reductio.wire.datasets import FILES, TEXT, total
from reductio.wire.records import decode_error, lines_before, open_slice, read_lines, record_limit, split_record
from reductio.wire.sorting import sort_argv, sort_env, sort_key
from reductio.wire.user_counters import labelled, totals
from reductio.wire.usercode import load_function
from reductio.worker import heartbeat, shares, streaming
from reductio.worker.clock import Clock
from reductio.worker.control import source_facts
from reductio.worker.machine import cores_each
from reductio.worker.output import PartitionedOutput
from reductio.worker.shares import Range
from reductio.worker.steps import (
    check_sorted,
    combine_into,
    map_into,
    reduce_into,
    sum_into,
    sum_runs_into,
    transform_lines,
    unsorted,
)
from reductio.worker.store import Home, check_name, file_facts


class _Position:
    """Where the step is reading: for error messages and progress reports."""

    file = "?"
    line = 0  # lines read of this file, or of this share of it
    finished = 0  # lines of the files already read
    path, start = None, 0  # the file, and the byte a share of it starts at
    status = ""  # what a command last said of itself (streaming.py)

    def at_file(self, path: Path, start: int = 0) -> None:
        self.finished += self.line
        self.path, self.file, self.line, self.start = path, path.name, 0, start

    def number(self, line: int = None) -> int:
        """A line's number as the whole file counts it: a share's lines before it are counted only for errors."""
        line = self.line if line is None else line
        return line + lines_before(self.path, self.start) if self.start else line

    @property
    def done(self) -> int:
        return self.finished + self.line


def _records(ranges: list[Range], position: _Position, text: bool):
    """(key, value) per line; in a text dataset a line with no tab is a key with an empty value."""
    for path, start, end in ranges:
        position.at_file(path, start)
        for lineno, line in enumerate(read_lines(path, start, end), 1):
            position.line = lineno
            key, tab, value = line.partition("\t")
            if not tab and not text:
                split_record(line, path, position.number())  # raises the InputError naming file and line
            yield key, value


def _raw_lines(ranges: list[Range], position: _Position):
    for path, start, end in ranges:
        position.at_file(path, start)
        for lineno, line in enumerate(read_lines(path, start, end), 1):
            position.line = lineno
            yield line


def _sorted_records(ranges: list[Range], position: _Position, text: bool):
    """Records of sorted files, merged into one sorted stream and checked on the way.

    One file or share of one (the usual case, after sort) is read by
    _sorted_file directly. heapq.merge reads ahead, so each line carries its
    own file and line number, and ``position`` follows what is consumed, not
    what is read.
    """
    if len(ranges) == 1:
        return _sorted_file(ranges[0], position, text)
    return _merged_records([path for path, _, _ in ranges], position, text)


def _merged_records(files: list[Path], position: _Position, text: bool):
    streams = [_numbered(path) for path in files]
    for consumed, (line, path, lineno) in enumerate(heapq.merge(*streams, key=_first), 1):
        position.file, position.line, position.finished = path.name, lineno, consumed - lineno
        yield _record(line, path, lineno, text)


def _sorted_file(part: Range, position: _Position, text: bool):
    """Records of one sorted file (or share of one): read_lines, check_sorted and split_record fused into one loop.

    reduce reads every line this way, so the loop is kept flat; the
    shared functions still phrase every error.
    """
    path, start, end = part
    position.at_file(path, start)
    previous = last = ""
    with open_slice(path, start, end) as lines:
        try:
            for lineno, line in enumerate(lines, 1):
                if line[-1:] == "\n":
                    line = line[:-1]
                position.line = lineno
                key, tab, value = line.partition("\t")
                if key < last or (key == last and line < previous):  # sort's order: key, then line (sorting.py)
                    raise unsorted(path.name, position.number(), line, previous)
                previous, last = line, key
                if not tab and not text:
                    split_record(line, path, position.number())  # raises the InputError naming file and line
                yield key, value
        except UnicodeDecodeError:
            raise decode_error(path) from None


def _sorted_runs(part: Range, position: _Position, text: bool):
    """Runs of equal lines of one sorted file (or share of one), as (key, value, times), checked as _sorted_file is.

    Equal lines are found by groupby in C, so reductio.reducers.sum splits,
    checks and converts each distinct line once, however often it repeats.
    """
    path, start, end = part
    position.at_file(path, start)
    previous = last = ""
    with open_slice(path, start, end) as lines:
        try:
            for line, run in itertools.groupby(lines):
                if line[-1:] == "\n":
                    line = line[:-1]
                key, tab, value = line.partition("\t")
                if key < last or (key == last and line < previous):  # sort's order: key, then line (sorting.py)
                    raise unsorted(path.name, position.number(position.line + 1), line, previous)
                previous, last = line, key
                if not tab and not text:
                    split_record(line, path, position.number(position.line + 1))  # raises, naming file and line
                times = sum(1 for _ in run)  # counted, not listed: a run may be longer than memory
                position.line += times
                yield key, value, times
        except UnicodeDecodeError:
            raise decode_error(path) from None


def _numbered(path: Path):
    """(line, path, line number) of one sorted file, checked as it is read."""
    own = _Position()
    for line in check_sorted(_raw_lines([(path, 0, None)], own), path.name):
        yield line, path, own.line


def _first(item):
    return sort_key(item[0])


def _record(line: str, path: Path, lineno: int, text: bool):
    if text:
        key, _, value = line.partition("\t")
        return key, value
    return split_record(line, path, lineno)


def _source(home: Home, params: dict):
    """The source's marker and files: the version the head's survey saw (``source_attempt``), held while read."""
    return home.version(check_name(params["source"]), params.get("source_attempt"))


def _run_function_step(step: str, params: dict, write, by_key: bool = False) -> dict:
    """Shared body of map, transform and reduce: read source, ``write(function, path, ranges, position, text,
    output)`` the partitions; or, with several processes, have each do so for its share and add them up.

    ``by_key``: the input is sorted and a key's lines must stay in one process.
    """
    home = Home(params["home"])
    marker, files = _source(home, params)
    if "share" in params:
        ranges = _share(params, marker, files)
    else:
        count = _processes(params)
        cuts = shares.cut(files, count, by_key, marker.get("format") == FILES) if count > 1 and (
            len(files) == 1 or not by_key) else []
        if len(cuts) > 1:
            return _run_shares(step, params, marker, cuts)
        ranges = [(path, 0, None) for path in files]
    function_path = params["function"]
    folder = home.attempt_dir(params["attempt"])
    function = _function(function_path, params, home, folder, "function", marker)
    output = PartitionedOutput(folder, int(params["partitions"]), params["origin"],
                               record_limit(params.get("max_record")))
    position = _Position()
    text = marker.get("format") == TEXT
    started = Clock()
    _report_progress(position, marker)
    try:
        write(function, function_path, ranges, position, text, output)
        written = output.close()
    except UserCodeError as err:
        output.abandon()
        if isinstance(function, streaming.UserCommand):  # it reads ahead: where it failed is its own to say
            raise
        raise UserCodeError(f"{_where(position, marker)}: {err}", err.details) from None
    except BaseException:
        output.abandon()
        raise
    return {"files": written, "source": source_facts(marker),
            "counters": _counters(marker, written, position.done, started)}


def _where(position: _Position, marker: dict) -> str:
    """Where a step was reading, as the user knows it: in a shard of load, the input file and its own line."""
    where = f"{position.file} line {position.number()}" if position.line else position.file
    facts = marker["files"].get(position.file) or {}
    if not facts.get("input"):
        return where
    starts = facts.get("input_lines")  # [line in the shard, line in the input] where each block starts
    if not position.line or not starts:
        return f"{facts['input']} ({where})"
    line = position.number()
    shard_start, input_start = starts[bisect.bisect_left(starts, [line, -1]) - 1]
    return f"{facts['input']} line {input_start + line - shard_start} ({where})"


def _function(spec: str, params: dict, home: Home, folder: Path, role: str, source: dict = None):
    """The function a step names, imported; or the command it names, ready to run over ``source`` (its marker:
    which input file each data file came from, whole files or lines; streaming.py)."""
    if streaming.command_of(spec) is not None:
        return streaming.UserCommand(spec, params, folder, home.shipped, role, source)
    return load_function(spec)


def _report_progress(position, marker: dict) -> None:
    """Let the heartbeat report input lines done (``position.done``) out of the source's lines, and a status."""
    lines = total(marker["files"].values(), "lines")

    def report():
        status = getattr(position, "status", "")
        return {"done": position.done, "total": lines, "status": status} if status else {
            "done": position.done, "total": lines}

    heartbeat.progress = report


def _processes(params: dict) -> int:
    """How many processes a step may use: as configured, else the cores it may use over the workers sharing them."""
    if params.get("processes"):
        return int(params["processes"])
    return cores_each(params.get("sharing"))


def _share(params: dict, marker: dict, files: list[Path]) -> list[Range]:
    """The byte ranges a share process was given, refused unless the source is the version they were cut from."""
    by_name = {path.name: path for path in files}
    if marker.get("attempt") != params["source_attempt"] or any(
            name not in by_name or end > marker["files"][name]["bytes"] for name, _, end in params["share"]):
        raise DatasetError(f"dataset {params['source']!r} changed while the step was starting; run it again")
    return [(by_name[name], int(start), int(end)) for name, start, end in params["share"]]


def _run_shares(step: str, params: dict, marker: dict, cuts: list[list[Range]]) -> dict:
    """The step over several processes, one per share; their files, lines and counters added up."""
    started = Clock()
    done = shares.Progress(len(cuts))
    _report_progress(done, marker)
    results = shares.run(step, dict(params, source_attempt=marker.get("attempt")), cuts, done)
    written = {name: facts for result in results for name, facts in result["files"].items()}
    user = labelled(totals(result["counters"] for result in results))
    lines_in = sum(result["counters"]["lines in"] for result in results)
    return {"files": written, "source": source_facts(marker),
            "counters": _counters(marker, written, lines_in, started, user)}


def _counters(marker: dict, written: dict[str, dict], lines_in: int, started: Clock, user: dict = None) -> dict:
    """The built-in counters of a step on one worker, and the user's (``user``: already added up)."""
    counters = {
        "lines in": lines_in,
        "lines out": total(written.values(), "lines"),
        "bytes in": total(marker["files"].values(), "bytes"),
        "bytes out": total(written.values(), "bytes"),
        **started.counters(),
    }
    if user is None:
        user = labelled(snapshot())
    return dict(counters, **user)


COMBINE_LIMIT = 100_000


def step_map(params: dict) -> dict:
    combine = params.get("combine")
    if streaming.command_of(params["function"]) is not None:
        return _run_function_step("map", params, functools.partial(_map_command, params))
    if not combine:
        return _run_function_step("map", params, lambda fn, name, ranges, pos, text, output: map_into(
            fn, name, _records(ranges, pos, text), output))
    reducer = load_function(combine)
    limit = int(params.get("combine_limit") or COMBINE_LIMIT)
    if reducer is reducers.sum:
        return _run_function_step("map", params, lambda fn, name, ranges, pos, text, output: sum_into(
            fn, name, _records(ranges, pos, text), limit, output))
    return _run_function_step("map", params, lambda fn, name, ranges, pos, text, output: combine_into(
        fn, name, _records(ranges, pos, text), reducer, combine, limit, output))


def _map_command(params: dict, command, _name: str, ranges: list[Range], position: _Position, _text: bool,
                 output) -> None:
    """Map by a command: its output routed as it is, or through a combiner command or function."""
    combine = params.get("combine")
    if not combine:
        command.map(ranges, position, output)
    elif streaming.command_of(combine) is not None:
        combiner = _function(combine, params, Home(params["home"]), output.folder, "combine")
        command.map(ranges, position, output, combiner)
    else:
        limit = int(params.get("combine_limit") or COMBINE_LIMIT)
        with contextlib.closing(command.pairs(ranges, position)) as pairs:
            combine_into(_pass_on, command.name, pairs, load_function(combine), combine, limit, output)


def _pass_on(key: str, value: str):
    """The mapper combine_into calls on a command's output: each pair as it is."""
    return ((key, value),)


def step_transform(params: dict) -> dict:
    return _run_function_step("transform", params, lambda fn, name, ranges, pos, text, output: output.write_all(
        transform_lines(fn, name, _raw_lines(ranges, pos))))


def step_reduce(params: dict) -> dict:
    if streaming.command_of(params["function"]) is not None:  # a command reads bytes: the marker vouches for order
        marker, _ = _source(Home(params["home"]), params)
        unsorted_files = sorted(name for name, facts in marker["files"].items() if not facts.get("sorted"))
        if unsorted_files:
            raise InputError(f"dataset {params['source']!r} is not sorted ({unsorted_files[0]});"
                             " run sort on it first")
    return _run_function_step("reduce", params, _reduce, by_key=True)


def _reduce(function, name: str, ranges: list[Range], position: _Position, text: bool, output) -> None:
    if isinstance(function, streaming.UserCommand):
        function.reduce(ranges, position, output)
    elif function is reducers.sum and len(ranges) == 1:  # the usual case: one file that sort made
        sum_runs_into(_sorted_runs(ranges[0], position, text), output)
    else:
        reduce_into(function, name, _sorted_records(ranges, position, text), output)


def step_sort(params: dict) -> dict:
    """Sort every file of the source into one file with the worker's own sort."""
    home = Home(params["home"])
    marker, files = _source(home, params)
    folder = home.attempt_dir(params["attempt"])
    sort_tmp = folder / ".sort-tmp"
    sort_tmp.mkdir(exist_ok=True)
    output = folder / f"sorted.{params['origin']}"
    started = Clock()
    try:
        argv = sort_argv(files, sort_tmp, output=output, unique=bool(params.get("unique")),
                         buffer=params.get("buffer"), parallel=params.get("parallel"))
    except ValueError as err:
        raise ReductioError(str(err)) from None
    _run_sort(argv, folder, total(marker["files"].values(), "bytes"), params["home"])
    sort_tmp.rmdir()
    written = {output.name: file_facts(output, is_sorted=True)}
    return {"files": written, "source": source_facts(marker),
            "counters": _counters(marker, written, total(marker["files"].values(), "lines"), started)}


def _run_sort(argv: list[str], folder: Path, needed: int, home: str) -> None:
    """Run sort, writing in ``folder`` what ``needed`` bytes of input make; its stdin is not ours (the head's
    beats): with no files (a worker with an empty part) it reads nothing."""
    done = subprocess.run(argv, env=sort_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise sort_failure(done.returncode, done.stderr, folder, needed, home)
