"""Several processes per worker: the worker's input cut into shares, one process each.

A share is a list of byte ranges ``(path, start, end)`` of the worker's data
files, every cut at the start of a line; whole files (``load --whole``) are
cut only between files. For sorted input (reduce) a cut also
falls between two different keys, so each key's values stay in one process,
and the two lines around it are checked to be in order: each process checks
its own share. Each share runs as the same step in its own ``python -m
reductio.worker`` process, writing its own partition files (``origin-K``),
and the worker adds their results up: progress, files, counters.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from reductio.wire.protocol import Reply, new_token, params_frame
from reductio.wire.records import lines_before
from reductio.worker.steps import unsorted

MIN_SHARE = 1 << 20  # bytes: below this a process costs more to start than it saves

Range = tuple[Path, int, int]


def cut(files: Sequence[Path], count: int, by_key: bool = False, whole_files: bool = False) -> list[list[Range]]:
    """Up to ``count`` shares of about equal bytes, covering every byte of ``files`` once, in order."""
    sizes = [path.stat().st_size for path in files]
    total = sum(sizes)
    count = max(1, min(count, total // MIN_SHARE))
    points = [(0, 0)]
    for k in range(1, count):
        index, offset = _locate(sizes, total * k // count)
        if whole_files:
            offset = sizes[index] if offset else 0
        else:
            offset = (_key_start if by_key else _line_start)(files[index], offset, total // count)
        if offset is None:
            continue
        point = (index, offset) if offset < sizes[index] else (index + 1, 0)
        if point > points[-1]:
            points.append(point)
    points.append((len(files), 0))
    shares = []
    for (first, start), (last, end) in zip(points, points[1:]):
        ranges = [(files[i], start if i == first else 0, end if i == last else sizes[i])
                  for i in range(first, min(last, len(files) - 1) + 1)]
        shares.append([r for r in ranges if r[2] > r[1]])
    return [share for share in shares if share]


def _locate(sizes: list[int], position: int) -> tuple[int, int]:
    """(file index, offset in it) of a byte position in the files laid end to end."""
    for index, size in enumerate(sizes):
        if position < size:
            return index, position
        position -= size
    return len(sizes) - 1, sizes[-1]


def _line_start(path: Path, offset: int, _limit: int) -> int:
    """The first line start at or after ``offset`` (the file's size if none)."""
    if offset == 0:
        return 0
    with open(path, "rb") as data:
        data.seek(offset - 1)
        data.readline()
        return data.tell()


def _key_start(path: Path, offset: int, limit: int) -> int | None:
    """The first start of a line at or after ``offset`` whose key differs from the line before it.

    None when no such line comes within ``limit`` bytes (one key that big
    stays whole in one share). Raises the InputError of unsorted input when
    the two lines around the cut are out of order.
    """
    with open(path, "rb") as data:
        data.seek(offset - 1 if offset else 0)
        if offset:
            data.readline()
        previous = data.readline()
        while previous and data.tell() - offset <= limit:
            start = data.tell()
            line = data.readline()
            if not line:
                return start
            if _key(line) != _key(previous):
                before, after = previous.rstrip(b"\n"), line.rstrip(b"\n")
                if _key(line) < _key(previous):  # sort's order: the key first (sorting.sort_key)
                    lineno = lines_before(path, start) + 1
                    raise unsorted(path.name, lineno, after.decode("utf-8", "replace"),
                                   before.decode("utf-8", "replace"))
                return start
            previous = line
    return None


def _key(line: bytes) -> bytes:
    return line.rstrip(b"\n").partition(b"\t")[0]


class Progress:
    """Input lines done, added up over the share processes, and a status (what the worker's progress thread reads)."""

    def __init__(self, count: int) -> None:
        self.each = [0] * count
        self.status = ""  # what a share's command said of itself last

    @property
    def done(self) -> int:
        return sum(self.each)


def run(step: str, params: dict, shares: list[list[Range]], progress: Progress) -> list[dict]:
    """Run ``step`` once per share, each in its own process; their results, in share order.

    If any fails, the others are stopped and the failure of the earliest
    share among those that failed on their own is raised, as its process
    reported it. Each process's stdin stays open until this one ends, so
    none outlives the worker (its heartbeat watches for stdin "eof").
    """
    children: list[_Child] = []
    failed = threading.Event()
    try:
        for k, share in enumerate(shares):
            head = dict(params.get("head") or {"beat": 1.0}, stdin="eof")
            child = dict(params, origin=f"{params['origin']}-{k}", processes=1, head=head,
                         share=[[path.name, start, end] for path, start, end in share])
            token = new_token()  # the share's own lines, told from its user code's stderr (protocol.py)
            process = subprocess.Popen([sys.executable, "-m", "reductio.worker", step], stdin=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            children.append(_Child(process, k, progress, failed, token))
            try:  # its parameters first on its stdin, never in its argv (protocol.py)
                process.stdin.write(params_frame(dict(child, token=token)))
                process.stdin.flush()
            except BrokenPipeError:  # it is gone already: its stderr says why
                pass
        while not all(child.over.is_set() for child in children) and not failed.wait(0.2):
            pass
        if failed.is_set():
            for child in children:
                child.stop()
            next(child for child in children if child.failed).result()  # raises what it reported
        return [child.result() for child in children]
    finally:
        for child in children:
            child.stop()
            child.close()


class _Child:
    """One share's process: its stderr read as it comes (progress, then its result or error)."""

    def __init__(self, process: subprocess.Popen, index: int, progress: Progress, failed: threading.Event,
                 token: str) -> None:
        self.process, self.index, self.progress = process, index, progress
        self.reply = Reply(self._progress, token=token)
        self.over = threading.Event()
        self.failed = False  # ended in failure on its own, not stopped because another failed
        threading.Thread(target=self._read, args=(failed,), daemon=True).start()

    def _read(self, failed: threading.Event) -> None:
        try:
            for block in iter(lambda: self.process.stderr.read1(1 << 16), b""):
                self.reply.feed(block)
            self.reply.close()
        finally:
            if self.process.wait() != 0 and not failed.is_set():
                self.failed = True
            if self.process.returncode != 0:
                failed.set()
            self.over.set()

    def _progress(self, done, _total, status=None) -> None:
        if done is not None:
            self.progress.each[self.index] = done
        if status:
            self.progress.status = status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def result(self) -> dict:
        """The share's result; raises the error it reported."""
        self.over.wait()
        return self.reply.outcome(self.process.returncode)

    def close(self) -> None:
        self.process.wait()
        self.over.wait(5)  # its reader is done with stderr
        self.process.stdin.close()
        self.process.stderr.close()
