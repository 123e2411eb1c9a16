"""From the workers to the head: ``merge`` a dataset into one sorted local file.

Each worker streams its part in sorted order into a temporary file beside
the target; ``sort -m`` merges those into a temporary output that replaces
the target only when complete. Nothing is held in memory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from reductio.errors import ReductioError
from reductio.feedback import display
from reductio.job import common_source, new_attempt
from reductio.sorting import sort_argv, sort_env

_CHUNK = 1 << 20


def merge_to_file(cluster, source: str, path: str) -> int:
    """Write every worker's part of ``source``, merged in sorted order, to ``path``; return its size."""
    target = Path(path).expanduser().resolve()
    if target.is_dir():
        raise ReductioError(f"merge target {target} is a folder; give a file path")
    attempt = new_attempt()
    work = target.parent / f".reductio-merge-{attempt}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(mode=0o700)
    except OSError as err:
        raise ReductioError(f"cannot write the merge into {target.parent}: {err.strerror or err}") from None
    try:
        with display("merge", cluster) as progress:
            results = cluster.each("merge", progress.reporting(
                lambda w, on_progress: _fetch(w, source, attempt, work / f"part-{w.index:05d}", on_progress)))
        common_source(results, source)
        parts = sorted(work.glob("part-*"))
        partial = work / "merged"
        done = subprocess.run(
            sort_argv(parts, work, output=partial, merge_only=True), env=sort_env(), stderr=subprocess.PIPE
        )
        if done.returncode != 0:
            raise ReductioError(f"sort -m on the head failed: {done.stderr.decode('utf-8', 'replace').strip()}")
        os.replace(partial, target)
        return target.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch(worker, source: str, attempt: str, part: Path, on_progress) -> dict:
    stream = worker.open("cat", {"attempt": attempt, "source": source}, "r", on_progress)
    try:
        with open(part, "wb") as out:
            for block in iter(lambda: stream.read(_CHUNK), b""):
                out.write(block)
    except BaseException:
        stream.kill()
        raise
    return stream.finish()
