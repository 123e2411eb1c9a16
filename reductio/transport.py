"""Byte streams to and from a worker command, and reading its reply.

Data never passes through invoke's ``run``: it reads stdin a byte at a
time and keeps all output in memory. A local worker's stream is a pipe to
a child process; its stderr goes to a temporary file, so a chatty child can
never block on a full pipe while we are busy writing to it.
"""

from __future__ import annotations

import subprocess
import tempfile

from reductio.protocol import parse_reply

class LocalStream:
    """A local worker command with a pipe to its stdin (``mode="w"``) or from its stdout ("r")."""

    def __init__(self, command: str, mode: str) -> None:
        self._stderr = tempfile.TemporaryFile()
        pipes = {"stdin": subprocess.PIPE} if mode == "w" else {"stdout": subprocess.PIPE}
        self._process = subprocess.Popen(command, shell=True, stderr=self._stderr, **pipes)
        self._pipe = self._process.stdin if mode == "w" else self._process.stdout
        self._closed = None

    def write(self, data: bytes) -> None:
        self._pipe.write(data)

    def read(self, size: int) -> bytes:
        return self._pipe.read(size)

    def close(self):
        """Close our end and wait for the command: its exit code and stderr (once; later calls repeat them)."""
        if self._closed is None:
            try:
                self._pipe.close()
            except BrokenPipeError:  # the command stopped reading: its stderr says why
                pass
            code = self._process.wait()
            self._stderr.seek(0)
            self._closed = code, self._stderr.read().decode("utf-8", "replace")
            self._stderr.close()
        return self._closed

    def finish(self) -> dict:
        """Close, and return the reply of a reductio.worker command."""
        code, stderr = self.close()
        return parse_reply(stderr, code)

    def kill(self) -> None:
        """Stop the command: the transfer is being abandoned."""
        if self._closed is None:
            self._process.kill()
            self.close()


class SshStream:
    """A worker command on an SSH exec channel, with our end of its stdin or stdout.

    Bytes go through ``sendall`` and ``recv`` in large chunks; stderr stays
    in paramiko's buffer and is read once the command has finished.
    """

    def __init__(self, transport, command: str, mode: str) -> None:
        self._channel = transport.open_session()
        self._channel.exec_command(command)
        self._mode = mode
        self._closed = None

    def write(self, data: bytes) -> None:
        self._channel.sendall(data)

    def read(self, size: int) -> bytes:
        return self._channel.recv(size)

    def close(self):
        """Close our end and wait for the command: its exit code and stderr (once; later calls repeat them)."""
        if self._closed is None:
            if self._mode == "w":
                self._channel.shutdown_write()
            else:
                while self._channel.recv(1 << 16):
                    pass
            code = self._channel.recv_exit_status()
            stderr = self._channel.makefile_stderr("rb").read()
            self._channel.close()
            self._closed = code, stderr.decode("utf-8", "replace")
        return self._closed

    def finish(self) -> dict:
        """Close, and return the reply of a reductio.worker command."""
        code, stderr = self.close()
        return parse_reply(stderr, code)

    def kill(self) -> None:
        """Abandon the command: closing the channel hangs it up."""
        if self._closed is None:
            self._channel.close()
            self._closed = -1, "abandoned"
