"""The exception hierarchy, and how an error crosses from a worker to the head.

Every error's ``str()`` is one line a user can act on; ``details`` holds
what helps beyond that line (the user's traceback, a worker's stderr tail).
"""

from __future__ import annotations

import errno


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


def environment_error(err: OSError, writing=None) -> Exception:
    """A full disk or a refused path is the machine's state, not a bug: say so in one line.

    Any other OSError is returned as it is (a bug keeps its traceback),
    unless we know we were ``writing`` that path: then it is one line too.
    """
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ReductioError(f"no space left on the device holding {err.filename or writing or 'the reductio home'};"
                             " nothing was published and earlier datasets are intact")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or writing:
        return ReductioError(f"cannot write {err.filename or writing}: {err.strerror}")
    return err


_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7f, 0xa0)]}


def printable(text: str, lines: bool = False) -> str:
    """Text a worker sent, safe to print on the head's terminal: control characters (escape sequences,
    carriage returns) written as ``\\xNN``; newlines and tabs kept when ``lines``."""
    table = {code: escape for code, escape in _CONTROL.items() if not (lines and code in (0x09, 0x0a))}
    return text.translate(table)

