"""From the workers to the head: ``merge`` a dataset into one sorted local file.

Each worker streams its part in sorted order into a temporary file beside
the target, checked against the bytes and SHA-256 the worker vouches for
(sending.py); ``sort -m`` merges those into a temporary output that replaces
the target only when complete. Nothing is held in memory. The head then
remembers what it wrote there (``~/.reductio/merged``), so merging the same
version of a dataset into a file nobody touched since is skipped, as any
other step that is up to date.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

from reductio.errors import DISK_FULL, ReductioError, disk_full
from reductio.head.feedback import display
from reductio.head.job import common_source, new_attempt
from reductio.wire.sorting import sort_argv, sort_env

_CHUNK = 1 << 20


def merge_to_file(cluster, source: str, path: str) -> int:
    """Write every worker's part of ``source``, merged in sorted order, to ``path``; return its size."""
    target = _target(path)
    if target.is_symlink():
        raise ReductioError(f"merge target {target} is a symbolic link; give the path of the file itself")
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
        with _on_the_head(target.parent):
            results = _fetch_all(cluster, "merge", source, attempt, work)
        parts = sorted(work.glob("part-*"))
        partial = work / "merged"
        done = subprocess.run(
            sort_argv(parts, work, output=partial, merge_only=True), env=sort_env(), stderr=subprocess.PIPE
        )
        if done.returncode != 0 and any(said in done.stderr.decode("utf-8", "replace") for said in DISK_FULL):
            raise disk_full(target.parent, head=True)
        if done.returncode != 0:
            raise ReductioError(f"sort -m on the head failed: {done.stderr.decode('utf-8', 'replace').strip()}")
        os.chmod(partial, _mode(target))
        os.replace(partial, target)  # a link planted meanwhile is replaced, never followed
        _remember(target, source, common_source(results, source)["attempt"])
        return target.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_parts(cluster, source: str, folder: str) -> list:
    """Write each worker's part of ``source`` (sorted) as ``part-NNNNN`` in ``folder``, as Hadoop's output folders.

    The parts arrive in a hidden folder beside them and replace the folder's
    old ``part-*`` files only once every one is complete. Returns their paths.
    """
    target = _target(folder)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise ReductioError(f"output {target} is not a folder; give a folder path")
    attempt = new_attempt()
    work = target / f".reductio-parts-{attempt}"
    try:
        work.mkdir(mode=0o700, parents=True)
    except OSError as err:
        raise ReductioError(f"cannot write the output into {target}: {err.strerror or err}") from None
    try:
        with _on_the_head(target):
            _fetch_all(cluster, "output", source, attempt, work)
        for old in target.glob("part-*"):
            old.unlink()
        parts = []
        for part in sorted(work.glob("part-*")):
            os.chmod(part, 0o600)
            os.replace(part, target / part.name)
            parts.append(target / part.name)
        return parts
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _on_the_head(folder: Path):
    """The parts arrive in ``folder`` on the head: a full disk there is the head's, said in one line."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise disk_full(folder, quota=err.errno == errno.EDQUOT, head=True) from None


def _target(path: str) -> Path:
    """The path as given, made absolute: a symbolic link in it is not resolved, so never replaced by its target."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def _mode(target: Path) -> int:
    """The merged file's mode: that of the file it replaces, else 0600 (as private as a worker's files)."""
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return 0o600
    return stat.S_IMODE(found.st_mode) if stat.S_ISREG(found.st_mode) else 0o600


def _fetch_all(cluster, what: str, source: str, attempt: str, work: Path) -> dict:
    """Every worker's part of ``source`` into ``work/part-NNNNN``; their results, all of one version."""
    with display(what, cluster) as progress:
        results = cluster.each(what, progress.reporting(
            lambda w, on_progress: _fetch(w, source, attempt, work / f"part-{w.index:05d}", on_progress)))
    common_source(results, source)
    return results


def _fetch(worker, source: str, attempt: str, part: Path, on_progress) -> dict:
    stream = worker.open("cat", {"attempt": attempt, "source": source}, "r", on_progress)
    received, digest = 0, hashlib.sha256()
    try:
        with open(part, "xb") as out:
            for block in iter(lambda: stream.read(_CHUNK), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
    except BaseException:
        stream.kill()
        raise
    result = stream.finish()
    if received != result["bytes"]:
        raise ReductioError(f"received {received:,} bytes of {source!r}, the worker's marker says {result['bytes']:,};"
                            " nothing was written")
    if digest.hexdigest() != result["sha256"]:
        raise ReductioError(f"what was received of {source!r} does not match the SHA-256 the worker sent it with;"
                            " nothing was written")
    return result


def merged(path: str, source: str, version: str) -> bool:
    """True if ``path`` holds what merging ``version`` of ``source`` wrote there, unchanged since."""
    target = _target(path)
    try:
        return json.loads(_record(target).read_text()) == _facts(target, source, version)
    except (OSError, ValueError):  # no record, or no file: merge it
        return False


def _remember(target: Path, source: str, version: str) -> None:
    """Note what was merged into ``target``; if that cannot be written, the next merge just runs again."""
    record = _record(target)
    try:
        record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = record.with_name(f".{record.name}.{new_attempt()}")
        partial.write_text(json.dumps(_facts(target, source, version)))
        os.replace(partial, record)
    except OSError:
        pass


def _record(target: Path) -> Path:
    return Path.home() / ".reductio" / "merged" / (hashlib.sha256(str(target).encode()).hexdigest()[:32] + ".json")


def _facts(target: Path, source: str, version: str) -> dict:
    """What makes a merged file current: the dataset and its version, the file as it was left."""
    found = target.stat()
    return {"path": str(target), "source": source, "version": version, "bytes": found.st_size,
            "mtime_ns": found.st_mtime_ns, "inode": found.st_ino}

