"""A worker's home: its datasets, and how a step's output is published (the layout itself is layout.py's).

A step writes into ``tmp/ATTEMPT``; publishing it has three moves, so that
the head can make it all-or-nothing across workers (job.publish):

- prepare: check every expected file is there at the size and SHA-256 the
  step reported, write the marker, move the folder into ``store`` and link it
  as ``data/.NAME.ATTEMPT`` (pending);
- switch: keep a link to the version it replaces (``data/.NAME.ATTEMPT.kept``)
  and make the pending link ``data/NAME`` with one atomic rename;
- drop: once every worker switched, remove that previous version.

A half-switch (a head killed, a host lost between workers) is settled by
the next run (job.settle): forward where every worker holds the new version,
back where every worker can return to the old one. Readers see the old
dataset or the new one, never a mix: a step reads the store folder of the
version it looked at, and holds a shared lock on it until it ends, so no
publish removes it meanwhile (it is left for a later ``clean``). A dataset
without its marker is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from reductio.errors import DatasetError
from reductio.wire.datasets import check_name
from reductio.wire.layout import (
    DATA,
    GATE_OPENING,
    SHIPPED,
    STORE,
    TMP,
    attempt_folder,
    check_attempt,
    check_home,
    finished,
)

MARKER = "_SUCCESS"
STALE_AFTER = 3600
_KEPT = ".kept"  # data/.NAME.ATTEMPT.kept -> the version ATTEMPT replaced, or _NONE: there was none
_NONE = "-"


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
                raise DatasetError(f"dataset {name!r} has no {MARKER} marker; re-run the step that makes it") from None
            raise DatasetError(f"no dataset {name!r}") from None

    def files(self, name: str, marker: dict = None) -> list[Path]:
        """The data files of the version of a dataset that ``marker`` describes, in name order (``version``)."""
        marker = marker or self.marker(name)
        return self.version(name, marker["attempt"])[1]

    def version(self, name: str, attempt: str = None) -> tuple[dict, list[Path]]:
        """The marker and data files of one version of a dataset (``attempt``; else the published one),
        held for reading until this process ends.

        The files are named in the version's own store folder, never through
        the ``data/NAME`` link, so a republish meanwhile is not seen; a
        version already gone is a DatasetError saying to run the step again.
        """
        check_name(name)
        if attempt is None:
            attempt = self.marker(name)["attempt"]
        folder = self.store / f"{name}.{check_attempt(attempt)}"
        try:
            descriptor = os.open(folder, os.O_RDONLY)
        except FileNotFoundError:
            descriptor = None
        if descriptor is not None:
            fcntl.flock(descriptor, fcntl.LOCK_SH)  # waits while a publish removes it: then it is gone
            _READING.append(descriptor)
        try:
            with open(folder / MARKER, encoding="utf-8") as found:
                marker = json.load(found)
        except FileNotFoundError:
            self.marker(name)  # no dataset at all says so
            raise DatasetError(f"dataset {name!r} was replaced after this step looked at it (version {attempt}"
                               " is gone); run the step again") from None
        return marker, [folder / file for file in sorted(marker["files"])]

    def datasets(self) -> list[str]:
        """Names of the datasets published in this home."""
        if not self.data.is_dir():
            return []
        return sorted(entry.name for entry in self.data.iterdir() if not entry.name.startswith("."))

    def publish(self, attempt: str, name: str, files: dict[str, dict], facts: dict) -> dict:
        """Check an attempt holds exactly ``files``, then publish it as ``name``: prepare, switch, drop at once
        (one home alone; the head does the three across workers, job.publish).

        ``files`` maps file name to ``{"bytes": ..., "sha256": ...}`` as the
        step reported them; ``facts`` (step, parameters) go into the marker.
        """
        marker = self.prepare_version(attempt, name, files, facts)
        self.switch(attempt, name)
        self.drop(attempt, name)
        return marker

    def prepare_version(self, attempt: str, name: str, files: dict[str, dict], facts: dict) -> dict:
        """Check the attempt's files (present, size, SHA-256, nothing else), write its marker, move it into the
        store and link it as pending; a retry of a done prepare (or switch) returns the marker."""
        staged = self.tmp / check_attempt(attempt)
        check_name(name)
        version = self.store / f"{name}.{attempt}"
        pending = self.data / f".{name}.{attempt}"
        if not staged.exists() and (os.path.islink(pending) or self._version_of(name) == version.resolve()):
            return _read_marker(version)  # prepared already: this is a retry after a lost reply
        _check_staged(staged, files)
        with _locked(staged):  # no clean removes it between the check and the move
            marker = dict(facts, dataset=name, attempt=attempt, files=files, published=time.time())
            with open(staged / MARKER, "w", encoding="utf-8") as out:
                json.dump(marker, out, indent=1, sort_keys=True)
            os.rename(staged, version)
            _link(pending, version.name)
        return marker

    def switch(self, attempt: str, name: str) -> dict:
        """Make a prepared version the published one, keeping a link to the one it replaces until ``drop``.

        Returns ``{"kept": ATTEMPT or None, "keeping": bool}``: the version kept, and whether a link keeps it
        (or keeps that there was none) until ``drop``. Switching again is a harmless retry.
        """
        check_name(name)
        version = (self.store / f"{name}.{check_attempt(attempt)}").resolve()
        pending = self.data / f".{name}.{attempt}"
        kept = self.data / f".{name}.{attempt}{_KEPT}"
        current = self._version_of(name)
        if current == version:
            state = self.state(name)["kept"]
            return {"kept": state.get(attempt), "keeping": attempt in state}
        if not os.path.islink(pending):
            raise DatasetError(f"version {attempt} of {name!r} was not prepared here, or was discarded;"
                               " run the step again")
        try:
            for older, _ in self._kept_links(name):  # this worker moves on: an earlier switch's previous goes too
                os.unlink(older)
            _link(kept, current.name if current is not None else _NONE)
            os.replace(pending, self.data / name)
        except OSError as err:
            raise DatasetError(f"cannot switch {name!r} to version {attempt} here:"
                               f" {err.strerror or err} ({err.filename}); it stays as it was") from None
        return {"kept": self._attempt_in(name, current), "keeping": True}

    def drop(self, attempt: str, name: str) -> bool:
        """Every worker switched to ``attempt``: remove the version it replaced here, unless a step reads it
        (``clean`` takes it later). True if there was one."""
        kept = self.data / f".{check_name(name)}.{check_attempt(attempt)}{_KEPT}"
        if not os.path.islink(kept):
            return False
        previous = os.readlink(kept)
        os.unlink(kept)
        if previous != _NONE:
            folder = (self.store / os.path.basename(previous)).resolve()
            if folder.parent == self.store.resolve() and folder not in self._linked():
                _remove_unused(folder)
        return True

    def revert(self, attempt: str, name: str) -> bool:
        """Undo a switch to ``attempt``: the version it replaced is published again (or, when there was none,
        the dataset is gone again). True if this home had switched."""
        check_name(name)
        kept = self.data / f".{name}.{check_attempt(attempt)}{_KEPT}"
        version = (self.store / f"{name}.{attempt}").resolve()
        if not os.path.islink(kept) or self._version_of(name) != version:
            return False
        previous = os.readlink(kept)
        if previous == _NONE:
            os.unlink(self.data / name)
        else:
            back = self.data / f".{name}.{attempt}.back"
            _link(back, os.path.basename(previous))
            os.replace(back, self.data / name)
        os.unlink(kept)
        _remove_unused(version)
        return True

    def state(self, name: str) -> dict:
        """Where this home is in publishing ``name``: the published attempt (or None), the prepared ones not
        switched yet, and per switched attempt the one it replaced, kept (None: there was none)."""
        linked = self._attempt_in(name, self._version_of(check_name(name)))
        pending = []
        for entry in self._hidden(name):
            if "." not in entry:
                pending.append(entry)
        kept = {}
        for path, attempt in self._kept_links(name):
            previous = os.readlink(path)
            kept[attempt] = None if previous == _NONE else os.path.basename(previous)[len(name) + 1:]
        return {"linked": linked, "pending": sorted(pending), "kept": kept}

    def _hidden(self, name: str) -> list[str]:
        """What follows ``.NAME.`` in the names of this dataset's hidden links."""
        prefix = f".{name}."
        return [entry[len(prefix):] for entry in os.listdir(self.data) if entry.startswith(prefix)]

    def _kept_links(self, name: str) -> list[tuple[Path, str]]:
        """(link, the attempt that replaced what it keeps) for this dataset's kept links."""
        return [(self.data / f".{name}.{rest}", rest[:-len(_KEPT)]) for rest in self._hidden(name)
                if rest.endswith(_KEPT) and "." not in rest[:-len(_KEPT)]]

    def _attempt_in(self, name: str, folder) -> str | None:
        return folder.name[len(name) + 1:] if folder is not None else None

    def _linked(self) -> set:
        """Every store folder a link in ``data`` points at: published, pending or kept versions."""
        linked = set()
        for entry in os.listdir(self.data):
            path = self.data / entry
            if os.path.islink(path) and os.readlink(path) != _NONE:
                linked.add((self.data / os.readlink(path)).resolve())
        return linked

    def clean(self) -> list[str]:
        """Remove what crashed or abandoned steps left: unlinked versions, stale attempt folders and prepared
        versions never switched to.

        An attempt folder (or a pending link) is stale when no running step
        holds it and nothing touched it for STALE_AFTER seconds, so another
        job's finished attempt, waiting a moment for its publish, is never
        taken from under it. A version a step is reading is left for later.
        """
        removed = []
        now = time.time()
        for entry in os.listdir(self.data):
            path = self.data / entry
            if (entry.startswith(".") and not entry.endswith(_KEPT) and os.path.islink(path)
                    and now - os.lstat(path).st_mtime >= STALE_AFTER):
                os.unlink(path)  # prepared an hour ago and never switched: the head that did it is gone
        linked = self._linked()
        for folder in [*self.tmp.iterdir(), *self.store.iterdir()]:
            if not folder.is_dir() or folder.resolve() in linked:
                continue
            if folder.parent == self.tmp and now - folder.stat().st_mtime < STALE_AFTER:
                continue
            if _remove_unused(folder):
                removed.append(folder.name)
        return removed

    def finished(self, attempt: str) -> None:
        finished(self.root, attempt)

    def discard(self, attempt: str) -> None:
        """Forget an attempt that is not published here: its folder and its opening to scatter's senders (a killed
        step's stays otherwise), or its prepared version and pending link."""
        _remove_tree(self.tmp / check_attempt(attempt))
        _remove_tree(self.tmp / (attempt + GATE_OPENING))
        suffix = f".{attempt}"
        for entry in os.listdir(self.data):
            if entry.startswith(".") and entry.endswith(suffix) and os.path.islink(self.data / entry):
                os.unlink(self.data / entry)
        linked = self._linked()
        for folder in self.store.iterdir():  # prepared, or switched to and undone (``revert``)
            if folder.name.endswith(suffix) and folder.resolve() not in linked:
                _remove_unused(folder)

    def delete(self, name: str) -> bool:
        """Remove a published dataset; True if there was one."""
        version = self._version_of(check_name(name))
        link = self.data / name
        if version is None and not link.is_symlink():
            return False
        link.unlink()
        for path, _ in self._kept_links(name):
            os.unlink(path)
        if version is not None and version not in self._linked():
            _remove_unused(version)  # a step reading it keeps it until it ends; clean takes it then
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


_READING = []  # descriptors of the versions this process reads, each with a shared lock until it ends


def _remove_unused(folder: Path) -> bool:
    """Remove a folder unless a running step holds it (we cannot take its lock exclusively); True if removed.

    The lock is held while removing, so a reader arriving meanwhile waits,
    then finds the folder gone and says so (``Home.version``).
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _remove_tree(folder)
        return True
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _locked(folder: Path):
    """A shared lock on a folder for a moment (``layout.hold_lock`` keeps one for the process's life)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)


def _link(path: Path, version: str) -> None:
    """Point ``path`` in ``data`` at a store folder by name (or at _NONE), replacing what was there."""
    partial = path.with_name(path.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)
    os.symlink(version if version == _NONE else os.path.join("..", STORE, version), partial)
    os.replace(partial, path)


def _read_marker(folder: Path) -> dict:
    with open(folder / MARKER, encoding="utf-8") as found:
        return json.load(found)


def _check_staged(staged: Path, files: dict[str, dict]) -> None:
    """Every expected file present at its reported size and SHA-256, nothing else."""
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
    changed = sorted(n for n in files if scan(staged / n)[1] != files[n].get("sha256"))
    if changed:
        raise DatasetError(f"not publishing {staged.name}: {', '.join(changed)} does not match the SHA-256 the step"
                           " reported; something else wrote into its attempt folder")


def file_facts(path: Path, lines: int = None, sha256: str = None, is_sorted: bool = False) -> dict:
    """What a marker records of one data file; what is not given is read from the file."""
    if lines is None or sha256 is None:
        lines, sha256 = scan(path)
    return {"bytes": path.stat().st_size, "lines": lines, "sha256": sha256, "sorted": is_sorted}
