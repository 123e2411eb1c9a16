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

    def write(self, data: bytes) -> None:
        self._pipe.write(data)

    def read(self, size: int) -> bytes:
        return self._pipe.read(size)

    def close(self):
        """Close our end and wait for the command: its exit code and stderr."""
        self._pipe.close()
        code = self._process.wait()
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", "replace")
        self._stderr.close()
        return code, stderr

    def finish(self) -> dict:
        """Close, and return the reply of a reductio.worker command."""
        code, stderr = self.close()
        return parse_reply(stderr, code)

    def kill(self) -> None:
        """Stop the command: the transfer is being abandoned."""
        self._process.kill()
        try:
            self.close()
        except OSError:
            pass


class SshStream:
    """A worker command on an SSH exec channel, with our end of its stdin or stdout.

    Bytes go through ``sendall`` and ``recv`` in large chunks; stderr stays
    in paramiko's buffer and is read once the command has finished.
    """

    def __init__(self, transport, command: str, mode: str) -> None:
        self._channel = transport.open_session()
        self._channel.exec_command(command)
        self._mode = mode

    def write(self, data: bytes) -> None:
        self._channel.sendall(data)

    def read(self, size: int) -> bytes:
        return self._channel.recv(size)

    def close(self):
        """Close our end and wait for the command: its exit code and stderr."""
        if self._mode == "w":
            self._channel.shutdown_write()
        else:
            while self._channel.recv(1 << 16):
                pass
        code = self._channel.recv_exit_status()
        stderr = self._channel.makefile_stderr("rb").read()
        self._channel.close()
        return code, stderr.decode("utf-8", "replace")

    def finish(self) -> dict:
        """Close, and return the reply of a reductio.worker command."""
        code, stderr = self.close()
        return parse_reply(stderr, code)

    def kill(self) -> None:
        """Abandon the command: closing the channel hangs it up."""
        self._channel.close()
