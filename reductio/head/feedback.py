"""What the head shows during and after a step: live progress, counters, skew, the job log.

Workers report progress as protocol lines on the stderr the head already
reads (no extra ports). On a terminal each worker gets a tqdm bar; anywhere
else (CI, logs) one plain line sums the step up every few seconds.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from typing import Dict, Optional

from reductio.errors import ConfigError, printable
from reductio.head.config import settings
from reductio.wire import user_counters

DEFAULT_INTERVAL = 2.0
SKEW_RATIO = 1.5
SILENT_AFTER = 3  # progress intervals without a report before the progress line names a worker
SKEW_MINIMUM = 10_000  # lines; below this a step is too short for skew to matter


def interval(config) -> float:
    """Seconds between progress reports (``reductio: progress_interval``)."""
    return settings(config).get("progress_interval", DEFAULT_INTERVAL)


def display(step: str, cluster) -> "Display":
    """The live progress of ``step`` on ``cluster``'s workers."""
    return Display(step, cluster.workers, interval(cluster.config))


class Display:
    """Live progress of one step over all workers, and who has gone quiet.

    On a terminal each worker gets a bar; elsewhere one line sums the step
    up every ``every`` seconds, once any worker has reported its lines or
    one has gone quiet (no progress and no heartbeat for SILENT_AFTER
    intervals): it is named, before the watchdog declares it lost.
    """

    def __init__(self, step: str, workers, every: float, stream=None) -> None:
        self.step, self.every = step, every
        self.names = [w.name for w in workers]
        self.limits = {w.name: getattr(w, "limit", None) for w in workers}  # which limit a quiet one runs into
        self.stream = stream or sys.stderr
        self.done: Dict[str, int] = {}
        self.total: Dict[str, int] = {}
        self.status: Dict[str, str] = {}  # what a worker's command last said of itself (reporter:status:)
        self.started = time.time()
        self.heard: Dict[str, float] = dict.fromkeys(self.names, self.started)
        self.over: Dict[str, bool] = {}
        self.lock = threading.Lock()
        self.bars = None
        self.closed = threading.Event()
        if _is_terminal(self.stream):
            from tqdm import tqdm

            self.bars = {name: tqdm(desc=f"{step} {name}", unit=" lines", unit_scale=True, position=i,
                                    leave=False, file=self.stream, dynamic_ncols=True)
                         for i, name in enumerate(self.names)}
        else:
            threading.Thread(target=self._tick, daemon=True).start()

    def progress_of(self, worker_name: str):
        """The callback a worker's reports go to: ``(done, total[, status])``, or ``(None, None)`` for a heartbeat."""
        return functools.partial(self.update, worker_name)

    def update(self, worker: str, done: Optional[int], total: Optional[int], status: Optional[str] = None) -> None:
        with self.lock:
            self.heard[worker] = time.time()
            if done is None:
                return
            self.done[worker], self.total[worker] = done, total
            if status:
                self.status[worker] = status
            if self.bars is not None:
                bar = self.bars[worker]
                bar.total = total
                if status:
                    bar.set_postfix_str(status, refresh=False)
                bar.update(done - bar.n)

    def reporting(self, action):
        """``action(worker, on_progress)`` as Cluster.each wants it: reports come here, and its end."""
        def run(worker):
            try:
                return action(worker, self.progress_of(worker.name))
            finally:
                self.finished(worker.name)
        return run

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def finished(self, worker: str) -> None:
        """The worker's part of the step is over: not quiet, whatever it last said."""
        with self.lock:
            self.over[worker] = True

    def quiet(self) -> Dict[str, float]:
        """Seconds since each unfinished worker last said anything, for those quiet too long."""
        now = time.time()
        return {name: now - self.heard[name] for name in self.names
                if not self.over.get(name) and now - self.heard[name] >= SILENT_AFTER * self.every}

    def describe(self) -> str:
        """One line: share done, per worker, rate and ETA, and who is quiet."""
        done, total = sum(self.done.values()), sum(self.total.values())
        elapsed = max(time.time() - self.started, 1e-6)
        rate = done / elapsed
        quiet = self.quiet()
        silent = f"; {', '.join(f'{w}: no report for {s:.0f} s{self._limit(w)}' for w, s in quiet.items())}" \
            if quiet else ""
        parts = ", ".join((f"{w} {100 * d / self.total[w]:.0f}%" if self.total[w] else f"{w} -")
                          + (f" ({self.status[w]})" if w in self.status else "")
                          for w, d in sorted(self.done.items()))
        if len(self.total) < len(self.names):
            waiting = len(self.names) - len(self.total)
            return f"{parts + '; ' if parts else ''}waiting for the first report of {waiting} more worker(s){silent}"
        share = f"{100 * done / total:.0f}%" if total else "?"
        eta = f", ETA {(total - done) / rate:.0f} s" if rate and total else ""
        return f"{share} of {total} lines ({parts}), {rate:,.0f} lines/s{eta}{silent}"

    def _limit(self, worker: str) -> str:
        limit = self.limits.get(worker)
        return f" ({limit()})" if limit else ""

    def _tick(self) -> None:
        while not self.closed.wait(self.every):
            with self.lock:
                if not (self.total or self.quiet()) or all(self.over.get(name) for name in self.names):
                    continue
                line = self.describe()
            self.stream.write(f"reductio: {self.step}: {line}\n")
            self.stream.flush()

    def close(self) -> None:
        self.closed.set()
        if self.bars is not None:
            for bar in self.bars.values():
                bar.close()


def summary(step: str, results: Dict[str, dict]) -> str:
    """A worker x counter table of a step, with totals and the user's counters."""
    counters = {name: result.get("counters") or {} for name, result in results.items()}
    columns = [key for key in ("lines in", "lines out", "bytes in", "bytes out", "bytes crossed", "connections",
                               "seconds", "cpu seconds")
               if any(key in c for c in counters.values())]
    if not columns:
        return ""
    totals = {key: sum(c.get(key, 0) for c in counters.values()) for key in columns}
    totals["seconds"] = max((c.get("seconds", 0) for c in counters.values()), default=0)
    rows = [["worker"] + columns]
    rows += [[name] + [_number(c.get(key, 0)) for key in columns] for name, c in counters.items()]
    rows.append(["total"] + [_number(totals[key]) for key in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
    lines = ["  " + "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    user = user_totals(results)
    lines += [f"  {printable(name)}: {count:,}" for name, count in sorted(user.items())]  # named by user code
    return "\n".join(lines)


def user_totals(*steps: Dict[str, dict]) -> Dict[str, int]:
    """User counters summed over the workers, of one step's results or of several steps'."""
    return user_counters.totals((result.get("counters") or {}) for results in steps for result in results.values())


def skew(step: str, results: Dict[str, dict]) -> Optional[str]:
    """A warning when one worker's share of a step's lines is far above a fair share."""
    if len(results) < 2:
        return None
    for key in ("lines in", "lines out"):
        counts = {name: (r.get("counters") or {}).get(key, 0) for name, r in results.items()}
        total = sum(counts.values())
        if total < SKEW_MINIMUM:
            continue
        name, most = max(counts.items(), key=lambda item: item[1])
        fair = total / len(counts)
        if most > SKEW_RATIO * fair:
            return (f"warning: skew in {step}: {name} has {100 * most / total:.0f}% of the {key}"
                    f" (a fair share is {100 / len(counts):.0f}%); it sets the pace of the next steps")
    return None


def log_step(config, record: dict) -> None:
    """Append one JSON line about a step to the job log (``reductio: log: PATH``), if configured; a new log is
    readable by its owner only, as the merged files are, whatever the umask."""
    path = settings(config).get("log")
    if path:
        try:
            with open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8") as log:
                log.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as err:
            raise ConfigError(f"cannot write the job log {path}: {err.strerror}; the {record.get('step')} step"
                              " itself finished and is kept") from None


def _number(value) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def report_step(config, headline: str, step: str, results: Dict[str, dict], record: dict) -> None:
    """After a step: its headline, the counter table, a skew warning if any, and a job-log line."""
    print(f"reductio: {headline}", flush=True)
    table = summary(step, results)
    if table:
        print(table, flush=True)
    warning = skew(step, results)
    if warning:
        print(f"reductio: {warning}", file=sys.stderr, flush=True)
    log_step(config, dict(record, step=step, finished=time.time(),
                          workers={name: r.get("counters") or {} for name, r in results.items()},
                          user=user_totals(results)))
