"""The exception hierarchy, and how an error crosses from a worker to the head.

Every error's ``str()`` is one line a user can act on; ``details`` holds
what helps beyond that line (the user's traceback, a worker's stderr tail).
"""

from __future__ import annotations

from typing import Dict


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
        return kind(str(data.get("message", "unknown error")), str(data.get("details", "")))


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


class StepFailed(ReductioError):
    """One step failed on some workers: ``errors`` maps worker name to its error."""

    def __init__(self, step: str, errors: Dict[str, ReductioError], total: int) -> None:
        self.step = step
        self.errors = errors
        lines = [f"{step} failed on {len(errors)} of {total} worker(s):"]
        lines += [f"  {name}: {error}" for name, error in errors.items()]
        details = "\n".join(
            f"--- {name}:\n{error.details}" for name, error in errors.items() if error.details
        )
        super().__init__("\n".join(lines), details)


_KINDS = {
    cls.__name__: cls
    for cls in (ReductioError, ConfigError, DatasetError, InputError, UserCodeError, WorkerUnreachable)
}
