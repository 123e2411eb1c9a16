"""The worker side: ``python -m reductio.worker STEP PARAMS_JSON``.

The head runs one such command per worker and step, locally or over SSH.
Its result or error goes to stderr as protocol lines (protocol.py), so
stdout stays free for data (``cat``) and stdin for data (``receive``).
Any exception that is not a ReductioError is a bug in reductio and keeps
its traceback. map, transform and reduce may run as several such processes
over shares of the input, started and added up here (shares.py); files
between workers are delivery.py's. This module and the ones it imports use
only the standard library.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Dict, List

from reductio import delivery, heartbeat, reducers, shares
from reductio.clock import Clock
from reductio.machine import cores_each
from reductio.errors import DatasetError, ReductioError, UserCodeError, environment_error
from reductio.output import PartitionedOutput
from reductio.counters import snapshot
from reductio.protocol import ERROR, RESULT, emit
from reductio.records import decode_error, lines_before, open_slice, read_lines, split_record
from reductio.shares import Range
from reductio.sorting import sort_argv, sort_env
from reductio.steps import (
    check_sorted, code_digest, combine_into, load_function, map_into, reduce_into, sum_into, sum_runs_into,
    transform_lines, unsorted,
)
from reductio.store import TEXT, Home, check_name, file_facts

_CHUNK = 1 << 20


class _Position:
    """Where the step is reading: for error messages and progress reports."""

    file = "?"
    line = 0  # lines read of this file, or of this share of it
    finished = 0  # lines of the files already read
    path, start = None, 0  # the file, and the byte a share of it starts at

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


def _records(ranges: List[Range], position: _Position, text: bool):
    """(key, value) per line; in a text dataset a line with no tab is a key with an empty value."""
    for path, start, end in ranges:
        position.at_file(path, start)
        for lineno, line in enumerate(read_lines(path, start, end), 1):
            position.line = lineno
            key, tab, value = line.partition("\t")
            if not tab and not text:
                split_record(line, path, position.number())  # raises the InputError naming file and line
            yield key, value


def _raw_lines(ranges: List[Range], position: _Position):
    for path, start, end in ranges:
        position.at_file(path, start)
        for lineno, line in enumerate(read_lines(path, start, end), 1):
            position.line = lineno
            yield line


def _sorted_records(ranges: List[Range], position: _Position, text: bool):
    """Records of sorted files, merged into one sorted stream and checked on the way.

    One file or share of one (the usual case, after sort) is read by
    _sorted_file directly. heapq.merge reads ahead, so each line carries its
    own file and line number, and ``position`` follows what is consumed, not
    what is read.
    """
    if len(ranges) == 1:
        return _sorted_file(ranges[0], position, text)
    return _merged_records([path for path, _, _ in ranges], position, text)


def _merged_records(files: List[Path], position: _Position, text: bool):
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
    previous = ""
    with open_slice(path, start, end) as lines:
        try:
            for lineno, line in enumerate(lines, 1):
                if line[-1:] == "\n":
                    line = line[:-1]
                position.line = lineno
                if line < previous:
                    raise unsorted(path.name, position.number(), line, previous)
                previous = line
                key, tab, value = line.partition("\t")
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
    previous = ""
    with open_slice(path, start, end) as lines:
        try:
            for line, run in itertools.groupby(lines):
                if line[-1:] == "\n":
                    line = line[:-1]
                if line < previous:
                    raise unsorted(path.name, position.number(position.line + 1), line, previous)
                previous = line
                key, tab, value = line.partition("\t")
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
    return item[0]


def _record(line: str, path: Path, lineno: int, text: bool):
    if text:
        key, _, value = line.partition("\t")
        return key, value
    return split_record(line, path, lineno)


def _source(home: Home, source: str):
    marker = home.marker(check_name(source))
    return marker, home.files(source, marker)


def _run_function_step(step: str, params: dict, write, by_key: bool = False) -> dict:
    """Shared body of map, transform and reduce: read source, ``write(function, path, ranges, position, text,
    output)`` the partitions; or, with several processes, have each do so for its share and add them up.

    ``by_key``: the input is sorted and a key's lines must stay in one process.
    """
    home = Home(params["home"])
    marker, files = _source(home, params["source"])
    if "share" in params:
        ranges = _share(params, marker, files)
    else:
        count = _processes(params)
        cuts = shares.cut(files, count, by_key) if count > 1 and (len(files) == 1 or not by_key) else []
        if len(cuts) > 1:
            return _run_shares(step, params, marker, cuts)
        ranges = [(path, 0, None) for path in files]
    function_path = params["function"]
    function = load_function(function_path)
    folder = home.attempt_dir(params["attempt"])
    output = PartitionedOutput(folder, int(params["partitions"]), params["origin"])
    position = _Position()
    text = marker.get("format") == TEXT
    started = Clock()
    _report_progress(position, marker)
    try:
        write(function, function_path, ranges, position, text, output)
        written = output.close()
    except UserCodeError as err:
        output.abandon()
        where = f"{position.file} line {position.number()}" if position.line else position.file
        raise UserCodeError(f"{where}: {err}", err.details) from None
    except BaseException:
        output.abandon()
        raise
    return {"files": written, "source": _about(marker),
            "counters": _counters(marker, written, position.done, started)}


def _report_progress(position, marker: dict) -> None:
    """Let the heartbeat report input lines done (``position.done``) out of the source's lines."""
    total = _lines_of(marker)
    heartbeat.progress = lambda: {"done": position.done, "total": total}


def _processes(params: dict) -> int:
    """How many processes a step may use: as configured, else the cores it may use over the workers sharing them."""
    if params.get("processes"):
        return int(params["processes"])
    return cores_each(params.get("sharing"))


def _share(params: dict, marker: dict, files: List[Path]) -> List[Range]:
    """The byte ranges a share process was given, refused unless the source is the version they were cut from."""
    by_name = {path.name: path for path in files}
    if marker.get("attempt") != params["source_attempt"] or any(
            name not in by_name or end > marker["files"][name]["bytes"] for name, _, end in params["share"]):
        raise DatasetError(f"dataset {params['source']!r} changed while the step was starting; run it again")
    return [(by_name[name], int(start), int(end)) for name, start, end in params["share"]]


def _run_shares(step: str, params: dict, marker: dict, cuts: List[List[Range]]) -> dict:
    """The step over several processes, one per share; their files, lines and counters added up."""
    started = Clock()
    done = shares.Progress(len(cuts))
    _report_progress(done, marker)
    results = shares.run(step, dict(params, source_attempt=marker.get("attempt")), cuts, done)
    written = {name: facts for result in results for name, facts in result["files"].items()}
    user: Dict[str, int] = {}
    for result in results:
        for name, count in result["counters"].items():
            if name.startswith("user: "):
                user[name] = user.get(name, 0) + count
    lines_in = sum(result["counters"]["lines in"] for result in results)
    return {"files": written, "source": _about(marker),
            "counters": _counters(marker, written, lines_in, started, user)}


def _counters(marker: dict, written: Dict[str, dict], lines_in: int, started: Clock, user: dict = None) -> dict:
    """The built-in counters of a step on one worker, and the user's (``user``: already added up)."""
    counters = {
        "lines in": lines_in,
        "lines out": sum(entry["lines"] for entry in written.values()),
        "bytes in": sum(entry["bytes"] for entry in marker["files"].values()),
        "bytes out": sum(entry["bytes"] for entry in written.values()),
        **started.counters(),
    }
    if user is None:
        user = {f"user: {name}": count for name, count in snapshot().items()}
    return dict(counters, **user)


def _about(marker: dict) -> dict:
    """What the head needs to know of a step's source: its version and kind of lines."""
    return {key: marker.get(key) for key in ("attempt", "format", "partitions")}


def _lines_of(marker: dict) -> int:
    return sum(entry["lines"] for entry in marker["files"].values())


COMBINE_LIMIT = 100_000


def step_map(params: dict) -> dict:
    combine = params.get("combine")
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


def step_transform(params: dict) -> dict:
    return _run_function_step("transform", params, lambda fn, name, ranges, pos, text, output: output.write_all(
        transform_lines(fn, name, _raw_lines(ranges, pos))))


def step_reduce(params: dict) -> dict:
    return _run_function_step("reduce", params, _reduce, by_key=True)


def _reduce(function, name: str, ranges: List[Range], position: _Position, text: bool, output) -> None:
    if function is reducers.sum and len(ranges) == 1:  # the usual case: one file that sort made
        sum_runs_into(_sorted_runs(ranges[0], position, text), output)
    else:
        reduce_into(function, name, _sorted_records(ranges, position, text), output)


def step_sort(params: dict) -> dict:
    """Sort every file of the source into one file with the worker's own sort."""
    home = Home(params["home"])
    marker, files = _source(home, params["source"])
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
    _run_sort(argv)
    sort_tmp.rmdir()
    written = {output.name: file_facts(output, is_sorted=True)}
    return {"files": written, "source": _about(marker),
            "counters": _counters(marker, written, _lines_of(marker), started)}


def step_cat(params: dict) -> dict:
    """Write a dataset to stdout in sorted order: merge's worker half."""
    home = Home(params["home"])
    marker, files = _source(home, params["source"])
    folder = home.attempt_dir(params["attempt"])
    already_sorted = all(entry["sorted"] for entry in marker["files"].values())
    sys.stdout.flush()
    try:
        _run_sort(sort_argv(files, folder, merge_only=already_sorted), stdout=sys.stdout.buffer)
    finally:
        home.discard(params["attempt"])
    return {"source": _about(marker)}


def _run_sort(argv: List[str], stdout=None) -> None:
    done = subprocess.run(argv, env=sort_env(), stdout=stdout, stderr=subprocess.PIPE)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ReductioError(f"sort failed (exit {done.returncode}): {message[-1] if message else 'no message'}")


def step_read(params: dict) -> dict:
    """Write one data file of a dataset to stdout: the head relays it to a worker we cannot reach."""
    home = Home(params["home"])
    marker, files = _source(home, params["source"])
    (path,) = [p for p in files if p.name == params["name"]] or [None]
    if path is None:
        raise DatasetError(f"dataset {params['source']!r} has no file {params['name']!r}")
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(_CHUNK), b""):
            sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return {"source": _about(marker)}


def step_check(params: dict) -> dict:
    """Before a step: the target's marker (if any), the source's version, the function's code digest."""
    home = Home(params["home"])
    home.check_ready()
    target = None
    try:
        target = {key: value for key, value in home.marker(params["target"]).items() if key != "files"}
    except DatasetError:
        pass
    source = _about(home.marker(check_name(params["source"]))) if params.get("source") else None
    functions = params.get("functions") or []
    code = "-".join(code_digest(path) for path in functions) if functions else None
    return {"target": target, "source": source, "code": code}


def step_publish(params: dict) -> dict:
    home = Home(params["home"])
    marker = home.publish(params["attempt"], params["target"], params["files"], params["facts"])
    return {"published": marker["dataset"], "cleaned": home.clean()}


def step_discard(params: dict) -> dict:
    Home(params["home"]).discard(params["attempt"])
    return {}


def step_prepare(params: dict) -> dict:
    Home(params["home"]).prepare()
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0]}


def step_delete(params: dict) -> dict:
    return {"deleted": Home(params["home"]).delete(params["name"])}


def step_status(params: dict) -> dict:
    """Per dataset: files, lines, bytes and the step that made it."""
    home = Home(params["home"])
    datasets = {}
    for name in home.datasets():
        try:
            marker = home.marker(name)
        except DatasetError as err:
            datasets[name] = {"error": str(err)}
            continue
        files = marker["files"].values()
        datasets[name] = {
            "files": len(marker["files"]),
            "lines": sum(entry["lines"] for entry in files),
            "bytes": sum(entry["bytes"] for entry in files),
            "step": marker.get("step", "?"),
            "from": marker.get("source") or marker.get("path") or marker.get("function") or "",
            "published": marker.get("published", 0),
        }
    return {"datasets": datasets}


STEPS = {
    "map": step_map, "transform": step_transform, "reduce": step_reduce, "sort": step_sort,
    "cat": step_cat, "receive": delivery.step_receive, "send": delivery.step_send, "read": step_read, "publish": step_publish, "check": step_check,
    "discard": step_discard, "prepare": step_prepare, "delete": step_delete, "status": step_status,
}


def main(argv: List[str] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in STEPS:
        print(f"usage: python -m reductio.worker {{{','.join(STEPS)}}} PARAMS_JSON", file=sys.stderr)
        return 2
    os.umask(0o077)  # everything in a reductio home is its owner's alone
    params = json.loads(argv[1])
    then = params.pop("then", None)  # "publish": wait for the head's verdict after the result (job.py)
    if params.get("head"):
        heartbeat.start(params["head"])
    started = time.time()
    try:
        try:
            result = STEPS[argv[0]](params)
        except OSError as err:
            raise environment_error(err) from err
    except ReductioError as err:
        emit(ERROR, err.to_dict())
        if "share" not in params:  # the worker that started the share logs its failure
            _log(params, f"{argv[0]} failed after {time.time() - started:.1f} s: {err}\n{err.details}".rstrip())
        return 1
    except BaseException:
        _log(params, f"{argv[0]} crashed after {time.time() - started:.1f} s:\n{traceback.format_exc()}")
        raise
    if argv[0] in _WRITING and (Home(params["home"]).tmp / params["attempt"]).is_dir():
        Home(params["home"]).finished(params["attempt"])
    emit(RESULT, result)
    if argv[0] not in ("check", "status") and "share" not in params:  # a share's worker logs the step
        _log(params, f"{argv[0]} done in {time.time() - started:.1f} s")
    return _verdict(params) if then == "publish" else 0


def _verdict(params: dict) -> int:
    """After a step's result, publish its attempt when the head says so, without a new session.

    The head's only other answer is to hang up (then it discards the attempt itself).
    """
    verdict = heartbeat.message()["publish"]
    started = time.time()
    try:
        try:
            result = step_publish(dict(verdict, home=params["home"], attempt=params["attempt"]))
        except OSError as err:
            raise environment_error(err) from err
    except ReductioError as err:
        emit(ERROR, err.to_dict())
        _log(params, f"publish failed: {err}")
        return 1
    emit(RESULT, result)
    _log(params, f"publish done in {time.time() - started:.1f} s")
    return 0


_WRITING = ("map", "transform", "reduce", "sort", "receive", "send")


def _log(params: dict, text: str) -> None:
    """Keep a line about each step in HOME/logs/steps.log (rotated at 1 MB, 3 old files kept)."""
    home = params.get("home")
    if not home or not Home(home).data.is_dir():
        return
    folder = Home(home).root / "logs"
    folder.mkdir(mode=0o700, exist_ok=True)
    handler = RotatingFileHandler(folder / "steps.log", maxBytes=1 << 20, backupCount=3, encoding="utf-8")
    attempt = params.get("attempt", "-")
    record = logging.LogRecord("reductio", logging.INFO, __file__, 0, f"{attempt} {text}", None, None)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    handler.emit(record)
    handler.close()


if __name__ == "__main__":
    sys.exit(main())
