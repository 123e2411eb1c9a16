"""The exception hierarchy, and how an error crosses from a worker to the head.

Every error's ``str()`` is one line a user can act on; ``details`` holds
what helps beyond that line (the user's traceback, a worker's stderr tail).
"""

from __future__ import annotations

import errno
import os


class ReductioError(Exception):
    """Base of every error reductio reports without a traceback of its own."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details

    def to_dict(self) -> dict:
        """The JSON-ready form a worker prints on stderr."""
        return {"kind": type(self).__name__, "message": str(self), "details": self.details}

    @staticmethod
    def from_dict(data: dict) -> "ReductioError":
        """Rebuild an error a worker reported, as its own class when known."""
        kind = _KINDS.get(data.get("kind", ""), ReductioError)
        return kind(printable(str(data.get("message", "unknown error"))),
                    printable(str(data.get("details", "")), lines=True))


class ConfigError(ReductioError):
    """Bad workers.cfg, -H or Fabric config; a password found in config."""


class DatasetError(ReductioError):
    """Bad dataset name, missing dataset, missing completion marker."""


class InputError(ReductioError):
    """A malformed record: names the worker, file and line or byte offset."""


class UserCodeError(ReductioError):
    """A function path that does not import, user code that raised, a bad yield."""


class WorkerUnreachable(ReductioError):
    """Connection refused or timed out, authentication failed, host key refused."""


class WorkerSilent(WorkerUnreachable):
    """Nothing heard from a worker for dead_after seconds: lost mid-step, or a connect that timed out.

    Not retried: the silence has already cost dead_after seconds.
    """


class WorkerRefused(WorkerUnreachable):
    """Reaching a worker failed in a way that waiting does not mend: its host key, authentication, no route
    from the head. Not retried: the message says what to do."""


class StepFailed(ReductioError):
    """One step failed on some workers: ``errors`` maps worker name to its error.

    ``stopped``: how many other workers' part of the step was stopped because of them.
    """

    def __init__(self, step: str, errors: dict[str, ReductioError], total: int, stopped: int = 0) -> None:
        self.step = step
        self.errors = errors
        lines = [f"{step} failed on {len(errors)} of {total} worker(s):"]
        lines += [f"  {name}: {error}" for name, error in errors.items()]
        if stopped:
            lines.append(f"  (stopped on the other {stopped} worker(s); nothing was published)")
        details = "\n".join(
            f"--- {name}:\n{error.details}" for name, error in errors.items() if error.details
        )
        super().__init__("\n".join(lines), details)


_KINDS = {
    cls.__name__: cls
    for cls in (ReductioError, ConfigError, DatasetError, InputError, UserCodeError, WorkerUnreachable,
                WorkerSilent, WorkerRefused)
}


def environment_error(err: OSError, writing=None, home=None) -> Exception:
    """A full disk or a refused path is the machine's state, not a bug: say so in one line.

    Any other OSError is returned as it is (a bug keeps its traceback),
    unless we know we were ``writing`` that path: then it is one line too.
    ``home``: the reductio home the step ran in, named for a full disk rather than a file inside it.
    """
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        path = err.filename or writing
        inside = home and (not path or os.path.abspath(str(path)).startswith(os.path.abspath(home) + os.sep))
        return disk_full(home if inside else path, quota=err.errno == errno.EDQUOT)
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or writing:
        return ReductioError(f"cannot write {err.filename or writing}: {err.strerror}")
    return err


DISK_FULL = ("No space left on device", "Disk quota exceeded")  # what C programs (sort, cat, ssh) say of it


def disk_full(path=None, quota: bool = False, local: bool = True, head: bool = False) -> ReductioError:
    """The one line for a disk that filled while ``path`` was being written: the filesystem holding it (its mount
    point, when ``local``: the path is on this machine) and what to do. ``head``: the disk is the head's own (merge's
    output), not a worker's."""
    what = "the disk is used up to its quota" if quota else "the disk is full"
    if path is None:
        where = "on the device holding the reductio home"
    else:
        mount = _mount_point(str(path)) if local else None
        where = (f"on the device holding {path}" if mount is None
                 else f"on the device mounted at {mount}, which holds {path}")
    if head:
        return ReductioError(f"the head's {what[4:]}: no space left {where}; free space there (or write into a"
                             " folder on another disk) and run it again; nothing was written")
    return ReductioError(f"{what}: no space left {where}; free space there (or give the worker a home on a bigger"
                         " disk) and run the step again; nothing was published and earlier datasets are intact")


def sort_failure(code: int, stderr: bytes, folder, needed: int, home=None) -> ReductioError:
    """The one line for a ``sort`` that failed writing in ``folder`` (its temporary files, its output) what
    ``needed`` bytes of input make: a full disk when sort says so, or says only "write error" (GNU sort on its
    output) while the disk holding ``folder`` has less room left than such a sort takes."""
    text = stderr.decode("utf-8", "replace")
    if any(said in text for said in DISK_FULL) or ("write" in text and _room(folder) < 2 * needed + (1 << 20)):
        return disk_full(home or folder)
    lines = text.strip().splitlines()
    return ReductioError(f"sort failed (exit {code}): {lines[-1] if lines else 'no message'}")


def _room(folder) -> int:
    """Bytes an unprivileged writer may still write on the disk holding ``folder``; plenty if it cannot be told."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return 1 << 62
    return stat.f_bavail * stat.f_frsize


def _mount_point(path: str):
    """The mount point of the filesystem holding ``path`` (of its nearest existing folder), or None."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        while not os.path.ismount(path):
            path = os.path.dirname(path)
    except OSError:
        return None
    return path


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7f, 0xa0)]}


def printable(text: str, lines: bool = False) -> str:
    """Text a worker sent, safe to print on the head's terminal: control characters (escape sequences,
    carriage returns) written as ``\\xNN``; newlines and tabs kept when ``lines``."""
    table = {code: escape for code, escape in _CONTROL.items() if not (lines and code in (0x09, 0x0a))}
    return text.translate(table)


class StreamBroken(ReductioError):
    """A worker command's stdin or stdout closed under us; its ``finish()`` says why."""
