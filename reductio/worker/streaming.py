"""Steps whose mapper, reducer or combiner is a command: the Hadoop Streaming contract.

Where a step takes a function, ``"| COMMAND"`` names a shell command
instead (``/bin/sh -c COMMAND``). It runs in a working folder of its own
holding the files shipped with it (and the archives shipped with it,
unpacked: archives.py), its PATH starting with a folder whose python3 is
the worker's Python (as in an activated environment), and reads the step's
input lines on stdin. Over input that ``load`` made it runs once per input
file it has lines of, with ``mapreduce_map_input_file`` (and the older
``map_input_file``) naming that file, as Hadoop's map tasks do; over whole
files (``load --whole``) once per file, the file's path here and the input
file's name as its last two arguments and nothing on stdin (mrjob's
``mapper_raw``). Each line it writes is routed by its key, the text
before the first tab (a line with no tab is all key), and kept as written.
On stderr, ``reporter:counter:GROUP,COUNTER,AMOUNT`` adds to a counter,
``reporter:status:MESSAGE`` shows in the progress line, and the last other
lines are kept for the error if it exits non-zero. A combiner command
reads the mapper's output sorted (the worker's ``sort``, LC_ALL=C), as
Hadoop's combiners do. Standard library only: this runs on the workers.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from reductio.counters import increment
from reductio.errors import UserCodeError
from reductio.wire.datasets import FILES
from reductio.wire.layout import BIN
from reductio.wire.records import record_limit, too_long
from reductio.wire.sorting import sort_argv, sort_env
from reductio.wire.streamspec import check_shipped_name, command_of
from reductio.worker import archives

_COUNTER = re.compile(rb"reporter:counter:([^,\n]*),([^,\n]*),(-?\d+)\s*")
_STATUS = b"reporter:status:"
_BLOCK = 1 << 20
_TAIL = 20
_TRACEBACK = "Traceback (most recent call last):"
_MAX_STDERR_LINE = 2000
_NOT_FOUND = 127
_COUNTING = threading.Lock()


def _python_folder(home: Path) -> str:
    """A folder whose ``python3`` and ``python`` are this worker's Python, to put first on a command's PATH.

    The Python's own folder when its ``python3`` is that Python (a venv, as on SSH workers); else HOME/bin,
    holding links to it: a local worker with ``python = pypy3`` runs /usr/bin/pypy3, beside a python3 that
    is CPython, and its commands and mrjob tasks would run on that.
    """
    own = os.path.dirname(sys.executable)
    target = os.path.realpath(sys.executable)
    if os.path.realpath(os.path.join(own, "python3")) == target:
        return own
    folder = home / BIN
    folder.mkdir(mode=0o700, exist_ok=True)
    for name in ("python3", "python"):
        link = folder / name
        if os.path.realpath(link) != target:
            made = folder / f".{name}.{os.getpid()}.{threading.get_ident()}"
            made.unlink(missing_ok=True)
            os.symlink(sys.executable, made)
            os.replace(made, link)  # atomic: another process of the step may be making the same link
    return str(folder)


class UserCommand:
    """One step's command on one worker: what it runs, with which files and environment, and where."""

    def __init__(self, spec: str, params: dict, folder: Path, shipped: Path, role: str, source: dict = None) -> None:
        self.text = command_of(spec)
        self.source = source or {}  # the marker of what it reads: the format, each file's input
        self.name = f"command {self.text!r}"
        self.env = dict(os.environ, **(params.get("env") or {}))
        self.env["PATH"] = _python_folder(shipped.parent) + os.pathsep + self.env.get("PATH", os.defpath)
        self.files = {check_shipped_name(name): shipped / digest
                      for name, digest in (params.get("files") or {}).items()}
        self.archives = {check_shipped_name(name): shipped / digest
                         for name, digest in (params.get("archives") or {}).items()}
        self.folder = folder / f".work-{params['origin']}-{role}"
        self.sort_buffer = params.get("sort_buffer")
        self.unpack_limits = params.get("max_unpacked"), params.get("max_members")  # archives.unpacked
        self.max_record = record_limit(params.get("max_record"))

    def map(self, ranges, position, output, combine: UserCommand | None = None) -> None:
        """Pipe the input ``ranges`` through the command (and a combiner command) into ``output``."""
        for blocks, env, args in self._runs(ranges, position):
            with _Pipeline(self, blocks, position, combine, env, args) as pipeline:
                output.write_all(pipeline.lines())

    def pairs(self, ranges, position) -> Iterator[tuple[str, str]]:
        """The command's output as (key, value) pairs, for a Python combiner; close it when done."""
        for blocks, env, args in self._runs(ranges, position):
            with _Pipeline(self, blocks, position, None, env, args) as pipeline:
                yield from pipeline

    def _runs(self, ranges, position) -> Iterator[tuple[Iterator[bytes], dict, list]]:
        """Each run of a map command: its input blocks, the variables and the arguments it gets.

        One run over every range, unless the source says which input file each
        data file holds (load): then one run per input file, named in
        ``mapreduce_map_input_file``; or one per whole file, given as arguments.
        No run over no lines: a worker that holds none of an input file runs
        no task for it, as Hadoop runs none for a split that is not there.
        """
        files = self.source.get("files") or {}
        if self.source.get("format") == FILES:
            for path, _, _ in ranges:
                yield _named(path, files[path.name], position), {}, [str(path), files[path.name]["input"]]
            return
        ranges = [part for part in ranges if _holds_bytes(part)]
        if not ranges:
            return
        inputs = [files.get(path.name, {}).get("input") for path, _, _ in ranges]
        if not any(inputs):
            yield _blocks(ranges, position), {}, []
            return
        for name, run in itertools.groupby(zip(ranges, inputs), key=lambda pair: pair[1]):
            uri = f"file://{name}"
            yield _blocks([part for part, _ in run], position), {"mapreduce_map_input_file": uri,
                                                                 "map_input_file": uri}, []

    def reduce(self, ranges, position, output) -> None:
        """Pipe sorted input through the command into ``output``; several sorted files are merged first."""
        if len(ranges) == 1:
            with _Pipeline(self, _blocks(ranges, position), position) as pipeline:
                output.write_all(pipeline.lines())
            return
        merge = subprocess.Popen(sort_argv([path for path, _, _ in ranges], self.folder.parent, merge_only=True,
                                           buffer=self.sort_buffer), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, env=sort_env())
        try:
            with _Pipeline(self, _merged(merge, position), position) as pipeline:
                output.write_all(pipeline.lines())
        finally:
            if merge.poll() is None:
                merge.kill()
            merge.wait()
            merge.stdout.close()
        if merge.returncode:
            raise UserCodeError(f"sort -m of the reducer's input failed (exit {merge.returncode})")

    def workdir(self) -> Path:
        """A fresh working folder holding the shipped files and unpacked archives (links to the home's copies)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(mode=0o700)
        for name, path in [*self.files.items(), *self.archives.items()]:
            if not path.is_file():
                raise UserCodeError(f"shipped file {name!r} is missing on this worker; run the step again")
            os.symlink(archives.unpacked(path, name, *self.unpack_limits) if name in self.archives else path,
                       self.folder / name)
        return self.folder


class _Pipeline:
    """The running processes of one command step: input fed from a thread, output read as lines.

    Map with a combiner command is ``COMMAND | sort | COMBINER``; every
    process is in the worker's process group, so a lost head stops them all.
    """

    def __init__(self, command: UserCommand, blocks: Iterator[bytes], position, combine: UserCommand | None = None,
                 env: dict = None, args: list = ()) -> None:
        self.command, self.position = command, position
        self.stages: list[tuple[UserCommand | None, subprocess.Popen, _Stderr]] = []
        folder = command.workdir()
        env = env or {}  # this run's own variables, on top of each command's
        argv = ["/bin/sh", "-c", f'{command.text} "$@"', "sh", *args] if args else None
        first = self._start(command, folder, subprocess.PIPE, argv, {**command.env, **env})
        last = first
        if combine is not None:
            sort_tmp = folder / ".sort-tmp"
            sort_tmp.mkdir()
            argv = sort_argv([], sort_tmp, buffer=command.sort_buffer)  # no files: it reads stdin
            last = self._start(None, folder, last.stdout, argv, sort_env())
            last = self._start(combine, combine.workdir(), last.stdout, None, {**combine.env, **env})
        for _, process, _ in self.stages[:-1]:
            process.stdout.close()  # the next stage holds it: a stage that stops reading gets SIGPIPE
        self.stdout = io.TextIOWrapper(last.stdout, encoding="utf-8", newline="\n")
        self._feeder = threading.Thread(target=_feed, args=(blocks, first.stdin), daemon=True)
        self._feeder.start()
        self.lines_out = 0

    def _start(self, command, folder, stdin, argv=None, env=None) -> subprocess.Popen:
        argv = argv or ["/bin/sh", "-c", command.text]
        process = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=folder,
                                   env=env or command.env)
        self.stages.append((command, process, _Stderr(process.stderr, self.position)))
        return process

    def lines(self) -> Iterator[str]:
        """The last process's output lines, each ending in LF, read no longer than max_record allows."""
        limit, readline = self.command.max_record, self.stdout.readline
        try:
            while True:
                line = readline(limit + 1)  # characters: a line of limit bytes and its LF at most
                if not line:
                    return
                self.lines_out += 1
                if line[-1:] != "\n":
                    if len(line) > limit:
                        raise UserCodeError(f"{self._last_name()} wrote {too_long(limit)}"
                                            f" (its output line {self.lines_out})")
                    line += "\n"
                yield line
        except UnicodeDecodeError:
            raise UserCodeError(f"{self._last_name()} wrote output that is not UTF-8"
                                f" (line {self.lines_out + 1})") from None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for line in self.lines():
            key, _, value = line[:-1].partition("\t")
            yield key, value

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, kind, error, _traceback) -> None:
        if kind is not None:
            self._stop()
        for _, process, stderr in self.stages:
            process.wait()
            stderr.join()
        self._feeder.join()
        self.stdout.close()
        for command in {stage[0] for stage in self.stages if stage[0] is not None}:
            shutil.rmtree(command.folder, ignore_errors=True)
        if kind is None:
            self._check()

    def _stop(self) -> None:
        """Kill every stage and what its shell started: a pipeline's processes outlive the shell, and hold the
        stderr pipe whose end we wait for. Each is stopped before its children are looked for, so none can
        start another after the look; then all are killed."""
        held: list[int] = []
        found = [process.pid for _, process, _ in self.stages if process.poll() is None]
        while found:
            for pid in found:
                _signal(pid, signal.SIGSTOP)
            held += found
            found = [pid for pid in _descendants(held) if pid not in held]
        for pid in held:
            _signal(pid, signal.SIGKILL)

    def _check(self) -> None:
        """Raise the failure of the first stage that failed on its own. A stage killed by SIGPIPE before another
        (``sort`` before a combiner) only followed it: that one stopped reading, which is fine if it exited 0,
        and its own failure if not. The last stage's output is read to its end, so its SIGPIPE is its own."""
        last = len(self.stages) - 1
        own = [stage for index, stage in enumerate(self.stages) if stage[1].returncode and not (
            index < last and stage[1].returncode in (-signal.SIGPIPE, 128 + signal.SIGPIPE))]
        if own:
            raise _failure(*own[0])

    def _last_name(self) -> str:
        return self.stages[-1][0].name


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:  # gone already
        pass


def _descendants(pids: list[int]) -> list[int]:
    """The processes below ``pids``, found by their parents in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:  # "PID (COMM) STATE PPID ...": COMM may hold ")"
                    parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone already
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _blocks(ranges, position) -> Iterator[bytes]:
    """The bytes of the input ranges, in large blocks, lines counted as they go."""
    for path, start, end in ranges:
        position.at_file(path, start)
        with open(path, "rb") as data:
            data.seek(start)
            left = (os.fstat(data.fileno()).st_size if end is None else end) - start
            while left > 0:
                block = data.read(min(_BLOCK, left))
                if not block:
                    return
                left -= len(block)
                position.line += block.count(b"\n")
                yield block


def _holds_bytes(part) -> bool:
    path, start, end = part
    return (os.path.getsize(path) if end is None else end) > start


def _named(path: Path, facts: dict, position) -> Iterator[bytes]:
    """No input on stdin for a command given a whole file by name; its lines count as done once it starts."""
    position.at_file(path)
    position.line = facts["lines"]
    return iter(())


def _merged(merge: subprocess.Popen, position) -> Iterator[bytes]:
    """What ``sort -m`` writes, in blocks, lines counted as they go."""
    for block in iter(lambda: merge.stdout.read1(_BLOCK), b""):
        position.line += block.count(b"\n")
        yield block


def _feed(blocks: Iterator[bytes], stdin) -> None:
    """Copy the input to the first process; one that stops reading early is judged by its exit status."""
    try:
        for block in blocks:
            stdin.write(block)
    except (BrokenPipeError, ValueError):
        pass
    finally:
        try:
            stdin.close()
        except BrokenPipeError:
            pass


def _failure(command: UserCommand | None, process: subprocess.Popen, stderr: _Stderr) -> UserCodeError:
    """The error for a stage that exited non-zero: its command, exit code and last stderr lines."""
    code = process.returncode
    tail = stderr.lines()
    name = command.name if command is not None else "sort (before the combiner)"
    if code == _NOT_FOUND and command is not None:
        return UserCodeError(f"{name}: not found ({tail[-1] if tail else 'exit 127'})")
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    last = f": {tail[-1]}" if tail else " (nothing on stderr)"
    return UserCodeError(f"{name} {how}{last}", "\n".join(tail))


class _Stderr:
    """A process's stderr, read as it comes: counters and status taken out, the last other lines kept, and
    the header of the last Python traceback among them even when the traceback is longer than they are."""

    def __init__(self, stream, position) -> None:
        self.tail: deque[str] = deque(maxlen=_TAIL)
        self._header = None  # the last traceback's header line, and how many lines had come before it
        self._count = 0
        self._thread = threading.Thread(target=self._read, args=(stream, position), daemon=True)
        self._thread.start()

    def _read(self, stream, position) -> None:
        with stream:
            while True:
                line = stream.readline(_BLOCK)
                if not line:
                    return
                counter = _COUNTER.fullmatch(line)
                if counter:
                    group, name, amount = (part.decode("utf-8", "replace") for part in counter.groups())
                    with _COUNTING:  # a mapper's and a combiner's stderr are read at once
                        increment(f"{group},{name}", int(amount))
                elif line.startswith(_STATUS):
                    position.status = line[len(_STATUS):].strip().decode("utf-8", "replace")[:_MAX_STDERR_LINE]
                else:
                    text = line.rstrip(b"\n").decode("utf-8", "replace")[:_MAX_STDERR_LINE]
                    if text.startswith(_TRACEBACK):
                        self._header = (text, self._count)
                    self.tail.append(text)
                    self._count += 1

    def lines(self) -> list[str]:
        """The last lines, led by their traceback's header if it scrolled out of them (Python 3.13's
        tracebacks mark each frame and run longer than the lines kept)."""
        lines = list(self.tail)
        if self._header is not None:
            text, before = self._header
            dropped = self._count - len(lines) - before  # lines after the header that scrolled out
            if dropped > 0:
                lines = [text, f"  ... ({dropped - 1} more lines)"] + lines if dropped > 1 else [text] + lines
        return lines

    def join(self) -> None:
        self._thread.join()
