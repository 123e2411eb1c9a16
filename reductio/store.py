"""A worker's home: its datasets, and how a step's output is published (the layout itself is layout.py's).

A step writes into ``tmp/ATTEMPT``; publishing checks every expected file is
there whole, writes the marker, moves the folder into ``store`` and swaps the
symlink with one atomic rename. Readers see the old dataset or the new one,
never a mix, and a dataset without its marker is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from reductio.errors import DatasetError
from reductio.layout import DATA, SHIPPED, STORE, TMP, attempt_folder, check_attempt, check_home, finished, hold_lock

MARKER = "_SUCCESS"
STALE_AFTER = 3600
# A marker's "format": TEXT lines come from files or out.write and may lack a
# tab (the whole line is then the key); RECORDS lines were all written as pairs;
# FILES are whole input files as they were (``load --whole``), read only by a map command.
TEXT, RECORDS, FILES = "text", "records", "files"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_PARTITION_FILE = re.compile(r"p(\d{5})\.")
_SHARD_FILE = "s{:05d}.{}"  # a worker's piece of load's input file number N, or initialize's lines (N = 0)


def check_name(name: str) -> str:
    """Refuse a dataset name that could leave its folder or need quoting."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"bad dataset name {name!r}: use 1-100 ASCII letters, digits, '_', '.' and '-',"
            " not starting with '.' or '-', and no '..'"
        )
    return name


def partition_file(partition: int, origin: str) -> str:
    """The name of a data file holding one partition, written by ``origin``."""
    return f"p{partition:05d}.{origin}"


def partition_of_file(name: str):
    """The partition a data file holds, or None for an unpartitioned shard."""
    match = _PARTITION_FILE.match(name)
    return int(match.group(1)) if match else None


def shard_name(index: int, origin: str) -> str:
    """The file name of a worker's shard of input ``index`` (load: one per input file it got lines of)."""
    return _SHARD_FILE.format(index, origin)


def scan(path: Path):
    """Count LF-terminated lines and take the SHA-256 of a file, in large binary reads."""
    lines, digest = 0, hashlib.sha256()
    with open(path, "rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            lines += block.count(b"\n")
            digest.update(block)
    return lines, digest.hexdigest()


class Home:
    """One worker's reductio home folder."""

    def __init__(self, root) -> None:
        self.root = Path(root).expanduser()
        self.data = self.root / DATA
        self.store = self.root / STORE
        self.tmp = self.root / TMP
        self.shipped = self.root / SHIPPED

    def prepare(self) -> None:
        """Create the home's folders, readable by the owner only."""
        for folder in (self.root, self.data, self.store, self.tmp):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)

    def check_ready(self) -> None:
        check_home(self.root)

    def attempt_dir(self, attempt: str) -> Path:
        """The private folder of one attempt at a step (``layout.attempt_folder``), held by this process."""
        return Path(attempt_folder(self.root, attempt))

    def marker(self, name: str) -> dict:
        """The completion marker of a published dataset; a missing one is a DatasetError."""
        self.check_ready()
        path = self.data / check_name(name) / MARKER
        try:
            with open(path, encoding="utf-8") as marker:
                return json.load(marker)
        except FileNotFoundError:
            if (self.data / name).exists():
                raise DatasetError(f"dataset {name!r} has no {MARKER} marker; re-run the step that makes it")
            raise DatasetError(f"no dataset {name!r}") from None

    def files(self, name: str, marker: dict = None) -> list[Path]:
        """The data files of a published dataset, in name order."""
        marker = marker or self.marker(name)
        folder = self.data / name
        return [folder / file for file in sorted(marker["files"])]

    def datasets(self) -> list[str]:
        """Names of the datasets published in this home."""
        if not self.data.is_dir():
            return []
        return sorted(entry.name for entry in self.data.iterdir() if not entry.name.startswith("."))

    def publish(self, attempt: str, name: str, files: dict[str, dict], facts: dict) -> dict:
        """Check an attempt holds exactly ``files`` at their sizes, then publish it as ``name``.

        ``files`` maps file name to ``{"bytes": ..., "lines": ...}`` as the
        step reported them; ``facts`` (step, parameters) go into the marker.
        """
        staged = self.tmp / check_attempt(attempt)
        check_name(name)
        version = self.store / f"{name}.{attempt}"
        if not staged.exists() and self._version_of(name) == version.resolve():
            return self.marker(name)  # published already: this is a retry after a lost reply
        _check_staged(staged, files)
        hold_lock(staged)
        marker = dict(facts, dataset=name, attempt=attempt, files=files, published=time.time())
        with open(staged / MARKER, "w", encoding="utf-8") as out:
            json.dump(marker, out, indent=1, sort_keys=True)
        os.rename(staged, version)
        link = self.data / f".{name}.{attempt}"
        os.symlink(os.path.join("..", "store", version.name), link)
        previous = self._version_of(name)
        os.replace(link, self.data / name)
        if previous is not None and previous != version:
            _remove_tree(previous)
        return marker

    def clean(self) -> list[str]:
        """Remove what crashed or abandoned steps left: unlinked versions, stale attempt folders.

        An attempt folder is stale when no running step holds it and nothing
        touched it for STALE_AFTER seconds, so another job's finished attempt,
        waiting a moment for its publish, is never taken from under it.
        """
        linked = {self._version_of(name) for name in self.datasets()}
        removed = []
        now = time.time()
        for folder in [*self.tmp.iterdir(), *self.store.iterdir()]:
            if not folder.is_dir() or folder.resolve() in linked or not _unused(folder):
                continue
            if folder.parent == self.tmp and now - folder.stat().st_mtime < STALE_AFTER:
                continue
            _remove_tree(folder)
            removed.append(folder.name)
        return removed

    def finished(self, attempt: str) -> None:
        finished(self.root, attempt)

    def discard(self, attempt: str) -> None:
        """Forget an unpublished attempt."""
        _remove_tree(self.tmp / check_attempt(attempt))

    def delete(self, name: str) -> bool:
        """Remove a published dataset; True if there was one."""
        version = self._version_of(check_name(name))
        link = self.data / name
        if version is None and not link.is_symlink():
            return False
        link.unlink()
        if version is not None:
            _remove_tree(version)
        return True

    def _version_of(self, name: str):
        """The store folder a dataset's link points at, refusing one outside this home."""
        link = self.data / name
        if not link.is_symlink():
            return None
        target = (self.data / os.readlink(link)).resolve()
        if target.parent != self.store.resolve():
            raise DatasetError(f"dataset {name!r} points outside the reductio home ({target}); not touching it")
        return target


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _unused(folder: Path) -> bool:
    """True if no running step holds the folder (we could take its lock exclusively)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)


def _check_staged(staged: Path, files: dict[str, dict]) -> None:
    """Every expected file present at its reported size, nothing else."""
    if not staged.is_dir():
        raise DatasetError(f"attempt folder {staged} is missing; the step did not finish here")
    present = {entry.name: entry.stat().st_size for entry in staged.iterdir() if entry.name != MARKER}
    missing = sorted(set(files) - set(present))
    extra = sorted(set(present) - set(files))
    wrong = sorted(n for n in files if n in present and present[n] != files[n]["bytes"])
    if missing or extra or wrong:
        raise DatasetError(
            f"not publishing {staged.name}: missing {missing or 'none'}, unexpected {extra or 'none'},"
            f" wrong size {wrong or 'none'}"
        )


def file_facts(path: Path, lines: int = None, sha256: str = None, is_sorted: bool = False) -> dict:
    """What a marker records of one data file; what is not given is read from the file."""
    if lines is None or sha256 is None:
        lines, sha256 = scan(path)
    return {"bytes": path.stat().st_size, "lines": lines, "sha256": sha256, "sorted": is_sorted}


def total(files: Iterable[dict], fact: str) -> int:
    return sum(entry[fact] for entry in files)
