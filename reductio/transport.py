"""Byte streams to and from a worker command, and reading its reply.

Data never passes through invoke's ``run``: it reads stdin a byte at a
time and keeps all output in memory. A local worker's stream is a pipe to
a child process; its stderr goes to a temporary file, so a chatty child can
never block on a full pipe while we are busy writing to it.
"""

from __future__ import annotations

import subprocess
import tempfile

from reductio.errors import ReductioError
from reductio.protocol import parse_reply

class LocalStream:
    """A local worker command with a pipe to its stdin (``mode="w"``) or from its stdout ("r")."""

    def __init__(self, command: str, mode: str) -> None:
        self._stderr = tempfile.TemporaryFile()
        pipes = {"stdin": subprocess.PIPE} if mode == "w" else {"stdout": subprocess.PIPE}
        self._process = subprocess.Popen(command, shell=True, stderr=self._stderr, **pipes)
        self._pipe = self._process.stdin if mode == "w" else self._process.stdout

    def write(self, data: bytes) -> None:
        self._pipe.write(data)

    def read(self, size: int) -> bytes:
        return self._pipe.read(size)

    def finish(self) -> dict:
        """Close our end, wait for the command, and return its reply."""
        self._pipe.close()
        code = self._process.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", "replace")
        self._stderr.close()
        return parse_reply(stderr, code)

    def kill(self) -> None:
        """Stop the command: the transfer is being abandoned."""
        self._process.kill()
        try:
            self.finish()
        except (ReductioError, OSError):
            pass
