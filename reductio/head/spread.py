"""From the head to the workers: local files and generated lines, dealt out evenly.

``load`` and ``initialize`` read on the head and stream blocks of whole
lines round-robin to one ``receive`` command per worker (framing.py); a
worker keeps its blocks of each input file as a shard file of its own,
whose marker facts name that input, so a map command can be told which
file it reads (streaming.py). ``load --whole`` sends each file whole and
unchanged to one worker instead. Memory holds one block; each worker checks
every shard against the size and SHA-256 the head sent before anything is
published.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional

from reductio.errors import InputError, ReductioError, StepFailed, StreamBroken, UserCodeError
from reductio.head import liveness
from reductio.head.feedback import display
from reductio.head.job import discard, new_attempt, publish
from reductio.wire import framing
from reductio.wire.datasets import shard_name
from reductio.wire.records import MAX_RECORD, first_too_long, too_long
from reductio.wire.usercode import Output

MAX_BLOCK = 1 << 20
MIN_BLOCK = 4096


def input_files(path: str) -> List[Path]:
    """The file itself, or the visible regular files of a folder in name order."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if root.is_dir():
        return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    raise InputError(f"no file or folder at {path}")


def block_size(files: List[Path], workers: int) -> int:
    """Blocks small enough that even a small input reaches every worker (a .gz counted as it decompresses)."""
    total = sum(_text_size(p) for p in files)
    return max(MIN_BLOCK, min(MAX_BLOCK, total // (workers * 4) or MIN_BLOCK))


def _text_size(path: Path) -> int:
    """A file's size in bytes of text: a .gz's as its gzip trailer gives it (the size modulo 4 GiB of its last
    member), never less than the compressed size; only an estimate for cutting blocks."""
    size = path.stat().st_size
    if _opener(path) is not gzip.open or size < 18:  # 18: a gzip header and trailer
        return size
    with open(path, "rb") as data:
        data.seek(-4, 2)
        return max(size, int.from_bytes(data.read(4), "little"))


def text_blocks(path: Path, size: int, max_record: int = MAX_RECORD) -> Iterator[bytes]:
    """Blocks of whole lines of a text file (.gz read transparently), checked and normalised.

    Each block is valid UTF-8 (else an InputError with the byte offset), its
    CRLF line ends become LF, and the file's last line gets its LF. A line
    over ``max_record`` bytes is an InputError naming it, found holding no
    more than a block and ``max_record`` bytes.
    """
    opener = _opener(path)
    offset = lines = 0
    try:
        data = opener(path, "rb")
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    with data:
        while True:
            try:
                block = data.read(size)
                if not block:
                    return
                block += data.readline(max_record + 1)
            except (OSError, EOFError, zlib.error) as err:
                raise _unreadable(path, err) from None
            if len(block) > max_record:
                _refuse_long_lines(path, block, lines, max_record)
            lines += block.count(b"\n")
            try:
                block.decode("utf-8")
            except UnicodeDecodeError as err:
                unpacked = " (decompressed)" if opener is gzip.open else ""
                raise InputError(f"{path}: invalid UTF-8 at byte offset {offset + err.start}{unpacked}") from None
            offset += len(block)
            if not block.endswith(b"\n"):
                block += b"\n"
            yield block.replace(b"\r\n", b"\n")


def _refuse_long_lines(path: Path, block: bytes, lines_before: int, max_record: int) -> None:
    """The InputError of the first line of ``block`` over ``max_record`` bytes (its LF not counted), if any."""
    for number, line in enumerate(block.split(b"\n"), lines_before + 1):
        if len(line) > max_record:
            raise InputError(f"{path} line {number}: {too_long(max_record)}")


def _unreadable(path: Path, err: Exception) -> InputError:
    """The one line for an input file that cannot be read to its end: a .gz that is corrupt, cut short or not
    gzip at all says it is that."""
    if _opener(path) is gzip.open and not (isinstance(err, OSError) and err.errno is not None):
        return InputError(f"{path}: not a whole gzip file ({err}); nothing was loaded")
    return InputError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}")


def _opener(path: Path):
    """How load opens an input file: a .gz decompressed as it is read."""
    return gzip.open if path.name.endswith(".gz") else open


def whole_blocks(path: Path) -> Iterator[bytes]:
    """A file's bytes as they are (a .gz decompressed, as mrjob hands mapper_raw its files), in blocks."""
    try:
        with _opener(path)(path, "rb") as data:
            yield from iter(lambda: data.read(MAX_BLOCK), b"")
    except (OSError, EOFError, zlib.error) as err:
        raise _unreadable(path, err) from None


def load_feed(files: List[Path], workers: int, whole: bool, max_record: int = MAX_RECORD):
    """What load sends: blocks of lines of each file dealt out in turn, or each file whole to the worker
    holding the fewest bytes so far (``whole``); shard k is files[k]."""
    size = block_size(files, workers)

    def feed(spreader: "Spreader") -> None:
        held = [0] * workers
        for index, path in enumerate(files):
            if not whole:
                for block in text_blocks(path, size, max_record):
                    spreader.write(block, index)
                continue
            worker = min(range(workers), key=lambda i: (held[i], i))
            spreader.write(b"", index, worker)  # an empty file is a file too
            for block in whole_blocks(path):
                spreader.write(block, index, worker)
                held[worker] += len(block)

    return feed


def spread(cluster, target: str, origin: str, feed, facts: dict, inputs: List[str] = None) -> Dict[str, dict]:
    """Let ``feed(spreader)`` write blocks, then publish the shards as ``target`` everywhere or nowhere.

    ``inputs``: the name of each shard's input file, kept in its marker facts as ``input``.
    The feed runs in a thread of its own while this one watches the receivers: a
    worker lost meanwhile fails the step within dead_after, even while the feed
    (an initialize function) is busy or asleep and writes nothing."""
    attempt = new_attempt()
    try:
        with display(origin, cluster) as progress:
            spreader = Spreader(cluster, attempt, origin, progress, inputs)
            try:
                spreader.run(feed)
                received = spreader.finish()
            except BaseException:  # the receivers not yet finished (after one that failed) are stopped too
                spreader.abandon()
                raise
        publish(cluster, attempt, target, received, facts, origin)
    except BaseException:
        discard(cluster, attempt)
        raise
    return received


def arrivals(received: Dict[str, dict]) -> Dict[str, dict]:
    """Per-worker counters of what a spread delivered."""
    return {name: {"counters": {"lines in": sum(f["lines"] for f in files.values()),
                                "bytes in": sum(f["bytes"] for f in files.values())}}
            for name, files in received.items()}


class Spreader:
    """One ``receive`` stream per worker; whole blocks go to each in turn, or to the worker named."""

    def __init__(self, cluster, attempt: str, origin: str, progress, inputs: List[str] = None) -> None:
        self.origin, self.inputs = origin, inputs
        # One fan-out, though opened from this thread: a lost receiver ends the others' streams too.
        self.group, joined = liveness.Group(), liveness.current_group()
        liveness.joining(self.group)
        try:
            self.streams = [w.open("receive", {"attempt": attempt}, "w", progress.progress_of(w.name))
                            for w in cluster.workers]
        finally:
            liveness.joining(joined)
        self.workers, self.progress = cluster.workers, progress
        self.shards: List[Dict[int, list]] = [{} for _ in self.workers]  # per worker: shard -> [bytes, sha256]
        # per worker and shard, where each block of lines starts: [line in the shard, line in the input file]
        self.starts: List[Dict[int, list]] = [{} for _ in self.workers]
        self.held_lines: List[Dict[int, int]] = [{} for _ in self.workers]  # per worker: shard -> lines sent
        self.dealt: Dict[int, int] = {}  # lines of each input file sent so far
        self.turn = 0
        self._locks = [threading.Lock() for _ in self.workers]
        self._sent = [time.monotonic()] * len(self.workers)
        self._over = threading.Event()
        threading.Thread(target=self._keep_alive, args=(min(w.beat for w in self.workers),), daemon=True).start()

    def run(self, feed) -> None:
        """Call ``feed(self)`` in a thread of its own; return when it is done, raise what it raised, or fail the
        step naming the receiver lost meanwhile without waiting for the feed's next write."""
        outcome: list = []
        done = threading.Event()

        def run_feed():
            try:
                feed(self)
            except BaseException as err:  # noqa: BLE001 - handed to the task's thread
                outcome.append(err)
            finally:
                done.set()

        threading.Thread(target=run_feed, daemon=True, name=f"reductio-{self.origin}-feed").start()
        while not done.wait(0.1):
            if self.group.ended is not None:
                self._lost(None)
        if outcome:
            if isinstance(outcome[0], StepFailed):
                self._lost(None)  # a write that broke because a receiver was lost names that one
            raise outcome[0]

    def _lost(self, fallback: Optional[StepFailed]) -> None:
        """Raise StepFailed naming the receivers lost (the others were stopped), if any were; else ``fallback``."""
        lost = self.group.close()
        if lost:
            raise StepFailed(self.origin, lost, len(self.workers), len(self.workers) - len(lost)) from None
        if fallback is not None:
            raise fallback from None

    def write(self, block: bytes, shard: int = 0, worker: int = None) -> None:
        """Send ``block`` of input ``shard`` to ``worker``, else to the next worker in turn."""
        i = self.turn if worker is None else worker
        try:
            self._send(i, framing.file_header(shard_name(shard, self.origin), len(block)) + block)
        except StreamBroken:
            self._failed(i)
        sent = self.shards[i].setdefault(shard, [0, hashlib.sha256()])
        if self.inputs and worker is None and block:  # lines of an input file: errors name its own line numbers
            count, held = block.count(b"\n"), self.held_lines[i].get(shard, 0)
            self.starts[i].setdefault(shard, []).append([held, self.dealt.get(shard, 0)])
            self.held_lines[i][shard] = held + count
            self.dealt[shard] = self.dealt.get(shard, 0) + count
        sent[0] += len(block)
        sent[1].update(block)
        if worker is None:
            self.turn = (i + 1) % len(self.streams)

    def _send(self, i: int, data: bytes) -> None:
        with self._locks[i]:
            self.streams[i].write(data)
            self._sent[i] = time.monotonic()

    def _keep_alive(self, beat: float) -> None:
        """Ping a worker that had no data for a beat: a slow initialize must not look like a lost head."""
        while not self._over.wait(beat):
            for i, stream in enumerate(self.streams):
                if time.monotonic() - self._sent[i] < beat or not self._locks[i].acquire(blocking=False):
                    continue  # data went there just now, or is going there now
                try:
                    stream.write(framing.PING)
                    self._sent[i] = time.monotonic()
                except ReductioError:  # the next write finds out, and says why
                    pass
                finally:
                    self._locks[i].release()

    def finish(self) -> Dict[str, dict]:
        """Close every stream and check each worker got exactly what was sent."""
        self._over.set()
        received = {}
        for i, (worker, stream) in enumerate(zip(self.workers, self.streams)):
            names = {shard_name(shard, self.origin): shard for shard in self.shards[i]}
            try:  # the worker checks each shard against what we sent
                for name, shard in names.items():
                    size, digest = self.shards[i][shard]
                    self._send(i, framing.end_header(name, {"bytes": size, "sha256": digest.hexdigest()}))
            except StreamBroken:
                self._failed(i)
            try:
                files = stream.finish()["files"]
                if set(files) != set(names):
                    raise ReductioError(f"received {', '.join(sorted(files)) or 'no file'},"
                                        f" not {', '.join(sorted(names)) or 'nothing'}")
            except ReductioError as err:
                self._lost(StepFailed(self.origin, {worker.name: err}, len(self.workers)))
            if self.inputs:
                for name, shard in names.items():
                    files[name]["input"] = self.inputs[shard]
                    if shard in self.starts[i]:
                        files[name]["input_lines"] = self.starts[i][shard]
            self.progress.finished(worker.name)
            received[worker.name] = files
        self.group.close()  # the receivers are done: a loss from now on belongs to publishing
        return received

    def _failed(self, i: int) -> None:
        """A worker stopped reading: report its own error, naming it."""
        worker = self.workers[i]
        try:
            self.streams[i].finish()
            error = ReductioError("stopped reading its input")
        except ReductioError as err:
            error = err
        self._lost(StepFailed(self.origin, {worker.name: error}, len(self.workers)))

    def abandon(self) -> None:
        self._over.set()
        for stream in self.streams:
            stream.kill()


class SpreadingOutput(Output):
    """The ``out`` of an initialize function: lines gathered into blocks for a Spreader."""

    def __init__(self, name: str, spreader: Spreader, max_record: int = MAX_RECORD) -> None:
        super().__init__(name)
        self.spreader, self.pending, self.max_record = spreader, 0, max_record

    def write_pair(self, key: str, value: str) -> None:
        super().write_pair(key, value)
        self._maybe_send()

    def write(self, text: str) -> None:
        super().write(text)
        self._maybe_send()

    def _maybe_send(self) -> None:
        self.pending += len(self.written[-1])
        if self.pending >= MAX_BLOCK // 4:
            self.flush()

    def flush(self) -> None:
        if self.written:
            block = "".join(self.written).encode("utf-8")
            if first_too_long(self.written, self.max_record, len(block)) is not None:
                raise UserCodeError(f"{self.name} wrote {too_long(self.max_record)}")
            self.spreader.write(block)
            self.written.clear()
            self.pending = 0
